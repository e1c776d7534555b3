"""Teacher labeling: the model that sees the long prompt answers every input.

Two answer modes:

- `generate`: the teacher writes a free reply; the task's regex reads the
  label. Replies that do not parse, or parse to a label outside the label set,
  go to the rejects file with their status; nothing is dropped silently.
- `choose`: for tasks with a closed label set. Every allowed answer, written
  as the teacher's reply (`Final Answer: <label>` plus end-of-turn), is scored
  on top of one forward pass over prompt + input; the most likely label wins
  and the whole distribution is stored as a soft label. Every input gets a
  valid label, which matters for small teachers that rarely follow the format.

Output is appended and flushed record by record as each batch is answered,
so an interrupted run keeps what it wrote (it loses at most the batch in
progress); rerunning labels only the missing inputs. A sidecar
`<output>.meta.json` records what produced the labels (teacher, prompt hash,
decoding settings), and a rerun with different settings is refused unless
`force` is set.

The teacher is a local transformers model (`LoadedModel`) or a backend object
(`vllm_teacher.VllmTeacher`, `remote_teacher.RemoteTeacher`) with a `name`, a
`meta()` dict for the sidecar and `label(examples, task, mode, seed,
batch_size)` yielding one record per input, in input order. Backends build
their records with `generate_record` / `choose_record` below, so voting,
confidence and statuses are the same whoever runs the model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import torch
from .progress import progress_bar

from . import engine
from .errors import PromptDistillError
from .io import DirectoryLock, JsonlAppender, atomic_write_json
from .models import LoadedModel, load_model
from .records import Example, LabeledExample, iter_jsonl
from .render import end_of_turn_ids, render_prompt, reply_ids
from .task import LOW_CONFIDENCE, OK, Task


def label_inputs(
    examples: list[Example],
    task: Task,
    teacher,
    out_path,
    rejects_path=None,
    *,
    mode: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    reuse_prefix: bool = True,
) -> dict:
    """Label `examples` with the teacher into `out_path` (JSONL); return a summary.

    With `reuse_prefix` (the default) the prompt tokens shared by every request
    run once and each input runs only its own suffix on top of their cache;
    `reuse_prefix=False` sends every request whole, as a plain loop would.
    `teacher` is a `LoadedModel` or a backend (see the module docstring);
    `batch_size` is inputs per generate batch locally (default 64), per engine call
    with vLLM; the server backend ignores it.
    """
    mode = mode or task.config.answer_mode
    if mode == "choose" and not task.closed:
        raise PromptDistillError("answer mode 'choose' needs task.labels", field="task.labels")
    out_path = Path(out_path)
    rejects_path = Path(rejects_path) if rejects_path else out_path.with_name(out_path.stem + ".rejects.jsonl")
    meta = {
        "teacher": teacher.name,
        "task_fingerprint": task.fingerprint(),
        "answer_mode": mode,
        "max_new_tokens": task.config.max_new_tokens,
        "temperature": task.config.temperature,
        "seed": seed,
        # Backends add their name and where the model runs; a local teacher adds nothing.
        **({} if isinstance(teacher, LoadedModel) else teacher.meta()),
    }
    with DirectoryLock(out_path.with_name(out_path.name + ".lock"), str(out_path)):
        _check_or_write_meta(out_path, rejects_path, meta, force)
        _label_missing(examples, task, teacher, out_path, rejects_path, mode, batch_size, seed, progress, reuse_prefix)
    return summarize_labels(out_path, rejects_path, [e.id for e in examples])


def _label_missing(examples, task, teacher, out_path, rejects_path, mode, batch_size, seed, progress, reuse_prefix) -> None:
    # Opening the appenders first cuts a torn last line, so it is relabeled.
    with JsonlAppender(out_path) as good, JsonlAppender(rejects_path) as bad:
        done = _done_ids(out_path) | _done_ids(rejects_path)
        todo = [e for e in examples if e.id not in done]
        bar = progress_bar(total=len(examples), initial=len(examples) - len(todo), unit="input", desc=f"label ({mode})", disable=not progress)
        if isinstance(teacher, LoadedModel):
            records = _label_locally(todo, task, teacher, mode, batch_size or LOCAL_BATCH_SIZE, seed, reuse_prefix)
        else:
            records = teacher.label(todo, task, mode, seed, batch_size)
        for record in records:
            (good if record.status == OK else bad).append(record.to_json())
            bar.update(1)
    bar.close()


def load_teacher(models):
    """The teacher `models.teacher_backend` names (a `ModelsConfig`): a local
    transformers model, the vLLM engine, or a client of an OpenAI-compatible server."""
    if models.teacher_backend == "vllm":
        from .teachers.vllm_engine import VllmTeacher

        return VllmTeacher(models.teacher, dtype=models.dtype, options=models.vllm_options)
    if models.teacher_backend == "openai":
        from .teachers.server import RemoteTeacher

        return RemoteTeacher(models.teacher_url, models.teacher, concurrency=models.teacher_concurrency)
    return load_model(models.teacher, models.device, models.dtype)


# Inputs per batch for a local teacher. With shared-prefix attention a row
# costs only its own tokens' cache, so a large batch is cheap in memory and
# keeps the decode steps' matrix products busy; records are written a batch at a time.
LOCAL_BATCH_SIZE = 64


def _label_locally(todo, task, teacher, mode, batch_size, seed, reuse_prefix):
    prefix = make_prefix_cache(task, teacher) if reuse_prefix and todo else None
    if mode == "choose":  # one input at a time on top of the prefix, each record written when scored
        answer = _choose_answers(task, teacher, prefix)
        for e in todo:
            yield from answer([e])
        return
    # a generate batch decodes together (sorted by length inside, records in input order)
    answer = _generate_answers(task, teacher, seed, prefix)
    for i in range(0, len(todo), batch_size):
        yield from answer(todo[i : i + batch_size])


def generate_record(task: Task, e: Example, replies: list[str], logprobs: list[dict | None] | None = None) -> LabeledExample:
    """Generate mode: the record for an input's sampled replies (majority vote),
    carrying the top-k log-probabilities of the reply that was kept."""
    record = _vote(task, e, replies)
    if logprobs is not None:
        record.teacher_logprobs = logprobs[replies.index(record.teacher_reply)]
    return record


def choose_record(task: Task, e: Example, probs: dict[str, float]) -> LabeledExample:
    """Choose mode: the record for a distribution over the label set; the most likely label wins."""
    best = max(probs, key=probs.get)
    return _make_record(task, e, task.label_reply(best), label_probs=probs)


def normalize_scores(task: Task, logps: list[float]) -> dict[str, float]:
    """Softmax of the candidate replies' total log-probabilities (one per label, in task order)."""
    probs = torch.softmax(torch.tensor(logps, dtype=torch.float64), dim=0).tolist()
    return dict(zip(task.labels, probs))


def _make_record(task: Task, e: Example, reply: str, label_probs=None, votes: dict | None = None, samples: int = 1,
                 decoded: engine.Decoded | None = None) -> LabeledExample:
    label, status = task.parse_answer(reply)
    confidence = entropy = None
    if label_probs is not None:
        confidence = max(label_probs.values())
        entropy = _entropy(label_probs)
    elif votes is not None and label is not None:
        confidence = votes[label] / samples
    if status == OK and confidence is not None and confidence < task.config.min_confidence:
        status = LOW_CONFIDENCE
    messages = task.student_messages(e.text)
    if status == OK:
        messages = messages + [{"role": "assistant", "content": task.target_reply(reply, label)}]
    return LabeledExample(
        id=e.id, text=e.text, gold_label=e.gold_label, teacher_reply=reply, label=label,
        status=status, messages=messages, label_probs=label_probs, meta=e.meta,
        confidence=confidence, entropy=entropy, votes=votes,
        teacher_logprobs={"token_ids": decoded.token_ids, "top": decoded.top} if decoded is not None and decoded.top else None,
    )


def _vote(task: Task, e: Example, replies: list[str], decoded: list | None = None) -> LabeledExample:
    """Majority label over sampled replies (ties go to the label seen first)."""
    decoded = decoded or [None] * len(replies)
    if len(replies) == 1:
        return _make_record(task, e, replies[0], decoded=decoded[0])
    parsed = [task.parse_answer(r)[0] for r in replies]
    votes = Counter(label for label in parsed if label is not None)
    if not votes:
        return _make_record(task, e, replies[0], decoded=decoded[0])
    winner = votes.most_common(1)[0][0]
    chosen = parsed.index(winner)
    return _make_record(task, e, replies[chosen], votes=dict(votes), samples=len(replies), decoded=decoded[chosen])


def shared_prefix(task: Task, tokenizer) -> list[int]:
    """The token ids every teacher request starts with, found from the rendered
    template: the longest common prefix of the prompts for a few unlike probe
    inputs. Inputs whose ids do not start with it (a tokenizer merging across
    the boundary) are answered without the shared prefix."""
    probes = ["A", "z 1", "\u4f60\u597d", "\n-", "{text}"]
    rendered = [render_prompt(tokenizer, task.teacher_messages(p)) for p in probes]
    n = 0
    for column in zip(*rendered):
        if any(c != column[0] for c in column):
            break
        n += 1
    return rendered[0][:n]


def make_prefix_cache(task: Task, teacher: LoadedModel) -> engine.PrefixCache | None:
    """Run the shared prefix once; None (and a note) where the model cannot reuse a cache."""
    prefix = shared_prefix(task, teacher.tokenizer)
    if not prefix:
        return None
    try:
        return engine.PrefixCache(teacher.model, prefix)
    except Exception as e:  # a model without a standard key/value cache
        print(f"[promptdistill] note: shared-prefix reuse is not available for this model ({type(e).__name__}: {e}); "
              "labeling without it", flush=True)
        return None


def _split_prefix(prefix: engine.PrefixCache | None, ids: list[int]) -> list[int] | None:
    """The part of `ids` after the shared prefix, or None when it does not start with it."""
    if prefix is None or ids[: len(prefix)] != prefix.prefix or len(ids) == len(prefix):
        return None
    return ids[len(prefix):]


def _sample_seed(seed: int, example_id: str, k: int) -> int:
    """A seed per (input, sample), so sampled answers do not depend on batching or resumption."""
    return int(hashlib.sha256(f"{seed}:{example_id}:{k}".encode()).hexdigest()[:15], 16)


def _generate_answers(task: Task, teacher: LoadedModel, seed: int, prefix: engine.PrefixCache | None):
    tok = teacher.tokenizer
    n = task.config.samples
    k = task.config.top_logprobs
    sampling = task.config.temperature > 0
    settings = dict(max_new_tokens=task.config.max_new_tokens, eos_ids=end_of_turn_ids(tok), pad_id=tok.pad_token_id,
                    temperature=task.config.temperature)
    # Without a shared prefix, sampling (for its per-input seeds) and top-k
    # capture still go through our decoder, with an empty prefix; plain greedy
    # uses transformers' generate.
    own_decoder = sampling or k > 0
    whole = engine.PrefixCache(teacher.model, []) if own_decoder else None

    def answer(batch: list[Example]) -> list[LabeledExample]:
        prompts = [render_prompt(tok, task.teacher_messages(e.text), task.config.reply_prefix) for e in batch]
        rows = [(i, j) for i in range(len(batch)) for j in range(n)]
        suffixes = [_split_prefix(prefix, p) for p in prompts]
        seeds = {(i, j): _sample_seed(seed, batch[i].id, j) for i, j in rows}
        outs: dict = {}
        fast = [r for r in rows if suffixes[r[0]] is not None]
        slow = [r for r in rows if suffixes[r[0]] is None]
        if fast:
            got = engine.decode_with_prefix(prefix, [suffixes[i] for i, _ in fast], seeds=[seeds[r] for r in fast],
                                            top_logprobs=k, **settings)
            outs.update(zip(fast, got))
        if slow and own_decoder:
            got = engine.decode_with_prefix(whole, [prompts[i] for i, _ in slow], seeds=[seeds[r] for r in slow],
                                            top_logprobs=k, **settings)
            outs.update(zip(slow, got))
        elif slow:
            got = engine.generate(teacher.model, [prompts[i] for i, _ in slow], **settings)
            outs.update(zip(slow, (engine.Decoded(ids, False) for ids in got)))
        prefill = task.config.reply_prefix
        records = []
        for i, e in enumerate(batch):
            decoded = [outs[(i, j)] for j in range(n)]
            replies = [prefill + tok.decode(d.text_ids, skip_special_tokens=True) for d in decoded]
            records.append(_vote(task, e, replies, decoded))
        return records

    return answer


def label_distribution(task: Task, loaded: LoadedModel, messages: list[dict], candidates: list[list[int]],
                       prefix: engine.PrefixCache | None = None) -> dict[str, float]:
    """Probability of each allowed label as the reply to `messages` (normalised over the label set)."""
    tok = loaded.tokenizer
    context = render_prompt(tok, messages)
    suffix = _split_prefix(prefix, context)
    if suffix is not None:
        logps = engine.score_with_prefix(prefix, suffix, candidates)
    else:
        logps = engine.score_continuations(loaded.model, context, candidates, pad_id=tok.pad_token_id)
    return normalize_scores(task, logps.tolist())


def label_candidates(task: Task, tokenizer, messages: list[dict]) -> list[list[int]]:
    """Token ids of every allowed answer as an assistant reply, end-of-turn included."""
    return [reply_ids(tokenizer, messages, task.label_reply(label)) for label in task.labels]


def _choose_answers(task: Task, teacher: LoadedModel, prefix: engine.PrefixCache | None):
    candidates = None

    def answer(batch: list[Example]) -> list[LabeledExample]:
        nonlocal candidates
        records = []
        for e in batch:
            messages = task.teacher_messages(e.text)
            if candidates is None:
                # The reply's tokens after the generation header do not depend on the input.
                candidates = label_candidates(task, teacher.tokenizer, messages)
            records.append(choose_record(task, e, label_distribution(task, teacher, messages, candidates, prefix)))
        return records

    return answer


def _check_or_write_meta(out_path: Path, rejects_path: Path, meta: dict, force: bool) -> None:
    meta_path = out_path.with_name(out_path.name + ".meta.json")
    if meta_path.exists():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        # Both ways: a key only the old labels have (say a server URL) is a change too.
        changed = sorted(k for k in meta.keys() | old.keys() if old.get(k) != meta.get(k))
        if changed and not force:
            raise PromptDistillError(
                f"existing labels were made with different settings ({', '.join(changed)}); "
                "use --force to discard them and relabel, or write to another file",
                path=out_path,
            )
        if changed:
            for p in (out_path, rejects_path):
                p.unlink(missing_ok=True)
    elif force:
        for p in (out_path, rejects_path):
            p.unlink(missing_ok=True)
    atomic_write_json(meta_path, meta)


def _done_ids(path: Path) -> set[str]:
    """Ids of the complete records in a labeled file."""
    if not path.exists():
        return set()
    ids = set()
    for n, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            ids.add(json.loads(line.decode("utf-8"))["id"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise PromptDistillError("corrupt labeled record; fix or delete this line", path=path, line=n) from None
    return ids


def summarize_labels(out_path, rejects_path, ids: list[str] | None = None) -> dict:
    """Counts by status and the teacher's accuracy against gold labels."""
    records = [obj for _, obj in iter_jsonl(out_path)] if Path(out_path).exists() else []
    rejects = [obj for _, obj in iter_jsonl(rejects_path)] if Path(rejects_path).exists() else []
    if ids is not None:
        wanted = set(ids)
        records = [r for r in records if r["id"] in wanted]
        rejects = [r for r in rejects if r["id"] in wanted]
    everything = records + rejects
    by_status: dict[str, int] = {}
    for r in everything:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    gold = [r for r in everything if r.get("gold_label") is not None]
    correct = sum(1 for r in gold if r.get("label") == r["gold_label"])
    entropies = [r["entropy"] for r in records if r.get("entropy") is not None]
    return {
        "total": len(everything),
        "labeled": len(records),
        "rejected": len(rejects),
        "by_status": by_status,
        "teacher_accuracy": correct / len(gold) if gold else None,
        "gold_count": len(gold),
        "mean_label_entropy": sum(entropies) / len(entropies) if entropies else None,
        "output": str(out_path),
        "rejects": str(rejects_path),
    }


def _entropy(probs: dict[str, float]) -> float:
    return -sum(p * math.log(p) for p in probs.values() if p > 0)
