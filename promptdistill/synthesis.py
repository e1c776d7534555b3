"""Synthesis: inputs written by a generator model when there are few or none.

Context distillation needs inputs the prompt is about, not labels: the
teacher labels whatever it is given (Snell et al. 2022, "Learning by
Distilling Context", generate the inputs with the model itself). Most users
have the prompt and a handful of examples, so this stage writes the inputs,
through the same teacher backends as labeling (`Teacher.complete`), and the
teacher then labels them as usual. Three strategies, combinable; the kept
inputs are shared evenly between the ones listed in `synthesize.strategies`:

- `prompt` (prompt2model, Viswanathan et al. 2023): the generator reads the
  task's prompt and writes one input it is about, steered by a persona and a
  difficulty drawn per request (Persona Hub, Ge et al. 2024: who writes
  steers what is written, which buys diversity a temperature alone does
  not), with earlier accepted inputs shown as examples not to repeat and a
  temperature that ramps up as the pool fills. For a closed label set the
  requests ask for inputs that should get each label in equal numbers
  (quotas), and `edge_share` of them ask for edge cases and out-of-scope inputs;
- `magpie` (Xu et al. 2024, "Magpie"): the task's own conversation template
  cut open inside the user turn (the prompt as system message and an empty
  user turn, or a user template's text before `{text}`); an aligned model
  continues it with the kind of message it expects there. Every backend
  sends token ids, the server one through `/completions`, so all three can;
- `seeds`: paraphrases and minimal edits of a few real inputs.

Durable and resumable as labeling is: every generation (kept or not) is
appended and flushed to `<out>.raw.jsonl` in request order, and requests are
planned in rounds of `round_size` from what earlier rounds kept only, each
with its own seed (records.sample_seed), so a rerun after `kill -9` sends
the interrupted round again (the same rows make the same batch, hence the
same samples), appends only what is missing, and the file ends as an
uninterrupted run's. The kept
inputs (`<out>`), the quality gates' numbers and the report
(`<out>.synthesis.json` / `.md`) are recomputed from the raw file at the end.

With `synthesize.turns` > 1 the kept inputs become conversations: the
teacher (with its prompt) answers the last user turn, and the generator
writes the next one, Magpie-style (the conversation so far with a new user
turn cut open), until each has `turns` user turns. A follow-up that fails
the format gates, repeats an earlier turn of its conversation, or follows
a reply that was cut off or empty ends the conversation at its last good
user turn. Every step is appended to `<out>.turns.jsonl` as it is made, so a
rerun asks only for what is missing.

Quality gates, each counted by reason: truncated generations, length limits,
replies that state an answer ("Final Answer:") or copy the prompt, exact and near
duplicates (character n-gram Jaccard against every kept input and every seed
input: a paraphrase too close to a real input teaches nothing new, and would
leak a held-out input when seeds come from it), and full quotas.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

from .config import Config
from .errors import PromptDistillError
from .io import (DirectoryLock, JsonlAppender, atomic_write_json, atomic_write_jsonl, atomic_write_text, check_file,
                 check_no_symlinks, check_output_file, check_paths, claim_side_file, fingerprint, is_lock_file, read_settings,
                 resume_or_refuse)
from .markdown import md_code, md_text
from .progress import progress_bar
from .records import Example, iter_jsonl, read_inputs, read_labeled
from .rundir import SYNTH, check_outside_runs
from .reasoning import strip_reasoning
from .render import render_prompt
from .task import Task
from .teachers import CompletionRequest, Teacher, load_teacher
from .teachers.records import sample_seed

__all__ = ["synthesize", "plan_quotas", "near_duplicate", "quota_report", "shingles", "jaccard"]

EDGE = "edge"
ANY = "any"
# Private-use character marking where the user's message starts in a rendered template (Magpie).
_MARK = "\ue002"
_PREFIXES = re.compile(r"^\s*(?:input|user|message|text|query|example)\s*\d*\s*[:\-]\s*", re.IGNORECASE)


# -- plan ----------------------------------------------------------------


def plan_quotas(n: int, strategies: list[str], labels: list[str], edge_share: float, label_quotas: bool) -> dict[str, int]:
    """How many kept inputs each category needs: "strategy" or "strategy/target" -> count.
    The strategies share `n` evenly (the first ones get the remainder); the prompt
    strategy splits its share into edge cases and, for closed label sets, one quota per label."""
    quotas: dict[str, int] = {}
    shares = _even(n, len(strategies))
    for strategy, share in zip(strategies, shares):
        if strategy != "prompt":
            quotas[f"{strategy}/{ANY}"] = share
            continue
        edge = round(share * edge_share)
        targets = labels if labels and label_quotas else [ANY]
        for target, count in zip(targets, _even(share - edge, len(targets))):
            quotas[f"prompt/{target}"] = count
        if edge:
            quotas[f"prompt/{EDGE}"] = edge
    return {k: v for k, v in quotas.items() if v > 0}


def _even(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def _round_slots(deficits: dict[str, int]) -> list[str]:
    """Categories interleaved in proportion to what each still needs."""
    slots = [(j / d, c) for c, d in deficits.items() if d > 0 for j in range(d)]
    return [c for _, c in sorted(slots, key=lambda s: s[0])]


# -- quality gates -------------------------------------------------------


def normalize(text: str) -> str:
    return " ".join(text.casefold().split())


def shingles(text: str, n: int) -> frozenset[str]:
    """Character n-grams of the normalized text (works for every script, and for short inputs)."""
    t = normalize(text)
    return frozenset(t[i: i + n] for i in range(max(1, len(t) - n + 1)))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicate(text: str, pool: list[frozenset], n: int, threshold: float) -> bool:
    s = shingles(text, n)
    return any(jaccard(s, other) >= threshold for other in pool)


def clean(text: str) -> str:
    """The generated input without the wrappers generators add ("Input: ...", quotes)."""
    t = _PREFIXES.sub("", text.strip(), count=1).strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`":
        t = t[1:-1].strip()
    return t


def distinct_n(texts: list[str], n: int) -> float | None:
    """Distinct n-grams over all n-grams of the texts' words (Li et al. 2016)."""
    grams = [tuple(w[i: i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


# -- generator requests --------------------------------------------------


def _prompt_text(task: Task) -> str:
    c = task.config
    return c.system_prompt if c.system_prompt is not None else c.user_template.replace("{text}", "<the user's input>")


def _prompt_messages(task: Task, target: str, persona: str, difficulty: str, examples: list[str]) -> list[dict]:
    lines = [
        "An AI assistant works under these instructions:", "<instructions>", _prompt_text(task).strip(), "</instructions>", "",
        "Write one new, realistic input that a user could send to this assistant.",
        f"The user is {persona}. Difficulty: {difficulty}.",
    ]
    if target == EDGE:
        lines.append("Make it an edge case: at the boundary between the cases the instructions cover, or out of their scope.")
    elif target != ANY:
        lines.append(f"Write it so that, following the instructions, the right answer is: {task.label_reply(target)}")
    if examples:
        lines += ["", "Inputs already written (write something different):"] + [f"- {e}" for e in examples]
    lines += ["", "Reply with the input text only: no quotes, no answer, no explanation."]
    return [{"role": "system", "content": "You write realistic test inputs for AI assistants. You never answer them."},
            {"role": "user", "content": "\n".join(lines)}]


def _seed_messages(seed_text: str, operation: str, persona: str) -> list[dict]:
    how = ("Paraphrase it: the same meaning and intent in different words, as written by " + persona + "."
           if operation == "paraphrase" else
           "Edit it minimally (change a few words) so it is a different but still realistic input; its answer may change.")
    return [{"role": "user", "content": f"Here is an input a user sent to an AI assistant:\n<input>\n{seed_text}\n</input>\n\n{how}\n"
                                        "Reply with the new input text only: no quotes, no explanation."}]


def magpie_prefix(task: Task, tokenizer, conversation: list[dict] | None = None) -> list[int]:
    """Token ids of the task's conversation up to where the user's message starts:
    the prompt as system message and an empty user turn, or for a user template its
    text before `{text}` (Magpie). The model continues with a user's message. With
    `conversation` (earlier user and assistant turns), the new user turn follows them."""
    c = task.config
    turns = list(conversation or [])
    if c.system_prompt is not None:
        messages = [{"role": "system", "content": c.system_prompt}] + turns + [{"role": "user", "content": _MARK}]
    else:
        messages = turns + [{"role": "user", "content": c.user_template.partition("{text}")[0] + _MARK}]
    if tokenizer.chat_template is None:
        raise PromptDistillError(f"tokenizer {tokenizer.name_or_path!r} has no chat template; the magpie strategy needs one",
                                 field="synthesize.strategies")
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return tokenizer(rendered.split(_MARK)[0], add_special_tokens=False)["input_ids"]


# -- the stage -----------------------------------------------------------


class _State:
    """What the gates kept so far, replayed from the raw generations in request order."""

    def __init__(self, task: Task, cfg: Config, quotas: dict[str, int], seeds: list[Example]):
        self.task, self.sy, self.quotas = task, cfg.synthesize, quotas
        self.kept: dict[str, list[dict]] = {c: [] for c in quotas}
        self.dropped: dict[str, int] = {}
        self.exact = {normalize(e.text) for e in seeds}
        self.pool = [shingles(e.text, self.sy.ngram) for e in seeds]
        self.prompt = normalize(_prompt_text(task))
        # The fixed words of an answer ("Final Answer:"): an input holding them answers itself.
        # (Not answer_pattern: a permissive pattern like `^(\S+)` matches any text.)
        marker = task.config.answer_template.partition("{label}")[0].strip().casefold()
        self.answer_marker = marker if len(marker) >= 3 and not task.json_reply else ""
        self.generated = 0

    def format_gate(self, raw: dict) -> str:
        """Why a generation is not an input by itself ("" if it is one): cut off, too
        short or long, stating an answer, copying the prompt."""
        sy, text = self.sy, raw["text"]
        if not raw["stopped"] and sy.drop_truncated:
            return "truncated"
        if len(text) < sy.min_chars:
            return "too_short"
        if len(text) > sy.max_chars:
            return "too_long"
        if self.answer_marker and self.answer_marker in text.casefold():
            return "states_an_answer"
        norm = normalize(text)
        if len(norm) >= 20 and (norm in self.prompt or self.prompt[:80] in norm):
            return "copies_prompt"
        return ""

    def gate(self, raw: dict) -> str:
        """"kept" or why the generation is dropped."""
        sy, text = self.sy, raw["text"]
        self.generated += 1
        if why := self.format_gate(raw):
            return why
        norm = normalize(text)
        if norm in self.exact:
            return "exact_duplicate"
        s = shingles(text, sy.ngram)
        if any(jaccard(s, other) >= sy.near_duplicate_threshold for other in self.pool):
            return "near_duplicate"
        if len(self.kept[raw["category"]]) >= self.quotas[raw["category"]]:
            return "over_quota"
        return "kept"

    def add(self, raw: dict) -> str:
        why = self.gate(raw)
        if why == "kept":
            self.kept[raw["category"]].append(raw)
            self.exact.add(normalize(raw["text"]))
            self.pool.append(shingles(raw["text"], self.sy.ngram))
        else:
            self.dropped[why] = self.dropped.get(why, 0) + 1
        raw["gate"] = why
        return why

    def deficits(self) -> dict[str, int]:
        return {c: q - len(self.kept[c]) for c, q in self.quotas.items()}

    def done(self) -> bool:
        return all(d <= 0 for d in self.deficits().values())


def claim_synthesis_output(out_path) -> tuple[Path, Path]:
    """(inputs file, raw generations file) for `out_path`, refused when the inputs
    file exists but was not written by `synthesize` (its raw generations' sidecar
    is missing): it is replaced at the end, and may be someone's real inputs."""
    out_path = check_output_file(out_path, "--out")
    check_no_symlinks(out_path, "--out")
    raw_path = out_path.with_name(out_path.stem + ".raw.jsonl")
    ours = raw_path.with_name(raw_path.name + ".meta.json").is_file()
    if out_path.exists() and out_path.stat().st_size and not ours:
        raise PromptDistillError("exists and was not written by `synthesize` (it would be replaced); choose another file", path=out_path)
    return out_path, raw_path


def check_synthesis_outputs(out_path, *, reads: dict | None = None, own_entries: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """(inputs file, raw generations file) of `out_path`, checked before anything is
    written: the inputs file the tool's own (`claim_synthesis_output`), and it, the
    raw generations, their sidecar and the report apart from what is read
    (`reads`) and outside any run directory (but for a run's `own_entries`)."""
    out, raw = claim_synthesis_output(out_path)
    writes = {"--out": out, "its raw generations": raw, "their sidecar": raw.with_name(raw.name + ".meta.json"),
              "the synthesis report": out.with_name(out.stem + ".synthesis.json"), "its conversation turns": turns_file(out)}
    check_paths(reads or {}, writes)
    for name, path in writes.items():
        check_outside_runs(path, name, own_entries=own_entries)
    # The raw generations' sidecar is the marker that the side files are ours, never their shape.
    ours = raw.with_name(raw.name + ".meta.json").is_file()
    marker = f"no {raw.name}.meta.json beside it"
    for name, path in (("its raw generations", raw), ("the synthesis report", out.with_name(out.stem + ".synthesis.json")),
                       ("the synthesis report", out.with_name(out.stem + ".synthesis.md")),
                       ("its conversation turns", turns_file(out))):
        claim_side_file(path, name, ours=ours, marker=marker)
    lock = raw.with_name(raw.name + ".lock")
    claim_side_file(lock, "the raw generations' lock file", ours=ours or is_lock_file(lock), marker="not a lock file it left")
    check_no_symlinks(raw.with_name(raw.name + ".meta.json"), "the raw generations' sidecar")
    return out, raw


def synthesize_file(cfg: Config, n: int, out_path, *, labeled=None, task_file=None, **options) -> dict:
    """The `synthesize` command: `synthesize` into a file outside any run; with `labeled`
    (the labels `label` made of these inputs, checked first) the report is the
    teacher's label distribution against the quotas."""
    labeled = check_file(labeled, "--labeled") if labeled else None
    summary = synthesize(cfg, n, out_path, reads={"the task file": task_file, "--labeled": labeled}, own_entries=(), **options)
    if labeled is None:
        return summary
    rejects = labeled.with_name(labeled.stem + ".rejects.jsonl")
    return quota_report(out_path, [r.to_json() for r in read_labeled(labeled)], len(read_labeled(rejects)) if rejects.exists() else 0)


def synthesize(cfg: Config, n: int, out_path, *, seeds: list[Example] | None = None, avoid: list[Example] | None = None,
               teacher: Teacher | None = None, force: bool = False, progress: bool = True, log=print, reads: dict | None = None,
               own_entries: tuple[str, ...] = (SYNTH,)) -> dict:
    """Write `n` synthetic inputs to `out_path` (JSONL, readable by read_inputs) with the
    generator of `cfg.synthesize` (default: the teacher, on `models.teacher_backend`);
    write the report beside it and return it. `seeds` are real inputs for the seeds
    strategy (default: synthesize.seed_inputs, else data.inputs); `avoid` are inputs no kept
    input may copy or nearly copy without being seeds (`run` passes the real held-out inputs,
    so none leaks into training as a near copy). Before anything is written, the seed
    files are checked and the outputs claimed (`check_synthesis_outputs`: apart
    from them and `reads`; in a run only into its `own_entries`, synth/ as `run` does)."""
    if n < 1:
        raise PromptDistillError(f"the number of inputs to synthesize must be at least 1, got {n}", field="data.synthesize")
    task, sy = Task(cfg.task), cfg.synthesize
    reads = dict(reads or {})
    if seeds is None:
        for name, path in (("synthesize.seed_inputs", sy.seed_inputs), ("data.inputs", cfg.data.inputs)):
            if path:
                reads[name] = check_file(cfg.resolve_path(path), name)
    out_path, raw_path = check_synthesis_outputs(out_path, reads=reads, own_entries=own_entries)
    if seeds is None:
        source = sy.seed_inputs or cfg.data.inputs
        seeds = read_inputs(cfg.resolve_path(source)) if source and "seeds" in sy.strategies else []
    if "seeds" in sy.strategies and not seeds:
        raise PromptDistillError("the seeds strategy needs real inputs: set synthesize.seed_inputs", field="synthesize.seed_inputs")
    generator = teacher or load_teacher(replace(cfg.models, teacher=sy.generator or cfg.models.teacher))
    if not generator.can("complete"):
        raise PromptDistillError(f"synthesis needs a backend that completes raw prompts, which {generator.backend!r} cannot",
                                 field="models.teacher_backend")
    quotas = plan_quotas(n, sy.strategies, task.labels if not task.json_reply else [], sy.edge_share, sy.label_quotas)
    seed = cfg.data.seed
    meta = {"generator": generator.name, **generator.meta(), "task_fingerprint": task.fingerprint(), "n": n, "seed": seed,
            "synthesize": {k: v for k, v in cfg.to_dict()["synthesize"].items() if k != "generator"},
            "seeds": fingerprint([[e.text for e in seeds], [e.text for e in avoid or []]])}
    max_requests = max(n, int(n * sy.max_requests_per_input))
    with DirectoryLock(raw_path.with_name(raw_path.name + ".lock"), str(out_path)):
        _check_or_write_meta(raw_path, meta, force)
        with JsonlAppender(raw_path) as appender:
            raws = _read_raw(raw_path)
            bar = progress_bar(total=n, unit="input", desc="synthesize", disable=not progress)
            shown = 0
            while True:
                # Plan the round from the complete rounds before it only, so a rerun plans the same
                # requests: an interrupted round (its records say where it started and how long it is) is redone.
                first = len(raws)
                if raws and raws[-1]["round"][0] + raws[-1]["round"][1] > len(raws):
                    first = raws[-1]["round"][0]
                state = _State(task, cfg, quotas, seeds + list(avoid or []))
                for r in raws[:first]:
                    state.add(r)
                kept_now = sum(len(v) for v in state.kept.values())
                bar.update(kept_now - shown)
                shown = kept_now
                if state.done() or first >= max_requests:
                    break
                # No bigger than what is still missing: requests past the quotas are wasted.
                size = min(sy.round_size, max_requests - first, sum(max(0, d) for d in state.deficits().values()))
                plans = _plan_round(task, cfg, state, seeds, generator, first, size, seed)
                # The whole round is sent again even when part of it is on disk: a local batch
                # decodes rows together, so the same rows make the same batch and the same
                # samples; only what is missing is appended.
                written = len(raws) - first
                requests = [p.pop("_request") for p in plans]
                for k, (plan, completion) in enumerate(zip(plans, generator.complete(requests))):
                    if k < written:
                        continue
                    plan["text"] = clean(generator.tokenizer.decode(completion.token_ids, skip_special_tokens=True))
                    plan["stopped"] = completion.stopped
                    appender.append(plan)
                    raws.append(plan)
            bar.close()
    state = _State(task, cfg, quotas, seeds + list(avoid or []))
    for r in raws:
        state.add(r)
    kept = sorted((r for rs in state.kept.values() for r in rs), key=lambda r: r["request"])
    conversations, turn_report = {}, None
    if sy.turns > 1:
        replier = teacher or (load_teacher(cfg.models) if sy.generator else generator)
        with DirectoryLock(raw_path.with_name(raw_path.name + ".lock"), str(out_path)):
            conversations, turn_report = _extend_conversations(task, cfg, kept, generator, replier, turns_file(out_path), seed,
                                                               progress)
    atomic_write_jsonl(out_path, [_input_record(r, generator.name, conversations.get(r["id"])) for r in kept])
    report = _report(state, quotas, raws, kept, n, out_path, generator.name, max_requests)
    if turn_report is not None:
        report["turns"] = turn_report
    _write_report(out_path, report)
    if report["kept"] < n:
        log(f"[promptdistill] synthesize: kept {report['kept']} of {n} after {len(raws)} requests "
            f"(synthesize.max_requests_per_input = {sy.max_requests_per_input}); dropped {report['dropped_by_reason']}")
    return report


def _plan_round(task: Task, cfg: Config, state: _State, seeds: list[Example], generator: Teacher, first: int, size: int,
                seed: int) -> list[dict]:
    sy = cfg.synthesize
    slots = _round_slots(state.deficits())
    tok = generator.tokenizer
    magpie = magpie_prefix(task, tok) if "magpie" in sy.strategies else None
    horizon = max(1, int(sum(state.quotas.values())) - 1)
    plans = []
    for k in range(size):
        i = first + k
        category = slots[k % len(slots)]
        strategy, target = category.split("/", 1)
        rid = f"syn-{i}"
        request_seed = sample_seed(seed, rid, 0)
        rng = random.Random(request_seed)
        persona, difficulty = rng.choice(sy.personas), rng.choice(sy.difficulties)
        # In steps of 0.05, so a local batch decodes many rows per temperature together.
        temperature = round(round((sy.temperature_min + (sy.temperature_max - sy.temperature_min) * min(1.0, i / horizon)) * 20) / 20, 4)
        plan = {"request": i, "round": [first, size], "id": rid, "category": category, "strategy": strategy, "target": target, "seed": request_seed,
                "temperature": temperature}
        if strategy == "prompt":
            shown = [r["text"] for r in state.kept[category][-sy.feedback_examples:]] if sy.feedback_examples else []
            prompt = render_prompt(tok, _prompt_messages(task, target, persona, difficulty, shown))
            plan.update(persona=persona, difficulty=difficulty)
        elif strategy == "seeds":
            source = rng.choice(seeds)
            operation = rng.choice(["paraphrase", "minimal_edit"])
            prompt = render_prompt(tok, _seed_messages(source.text, operation, persona))
            plan.update(persona=persona if operation == "paraphrase" else None, seed_input=source.id, operation=operation)
        else:
            prompt = magpie
        plan["_request"] = CompletionRequest(prompt=prompt, seed=request_seed, temperature=temperature,
                                             max_new_tokens=sy.max_new_tokens)
        plans.append(plan)
    return plans


def turns_file(out_path: Path) -> Path:
    """Where the conversation steps of `out_path`'s inputs are appended (synthesize.turns > 1)."""
    return out_path.with_name(out_path.stem + ".turns.jsonl")


def _extend_conversations(task: Task, cfg: Config, kept: list[dict], generator: Teacher, replier: Teacher, path: Path, seed: int,
                          progress: bool) -> tuple[dict[str, list[dict]], dict]:
    """Each kept input as the first user turn of a conversation, continued turn by turn:
    `replier` (the teacher) answers with the task's prompt, `generator` writes the next
    user turn Magpie-style. Steps are appended to `path` as they are made ((id, turn,
    step) each, with its own seed) and reused on a rerun. Returns the conversations by
    input id (those that reached a second user turn) and the report's `turns` section."""
    sy, c = cfg.synthesize, task.config
    conversations = {r["id"]: [{"role": "user", "content": r["text"]}] for r in kept}
    open_ids = [r["id"] for r in kept]
    stopped_by: dict[str, int] = {}
    format_gate = _State(task, cfg, {}, [])
    bar = progress_bar(total=(sy.turns - 1) * len(kept), unit="turn", desc="synthesize turns", disable=not progress)
    with JsonlAppender(path) as appender:  # opened first: it cuts a torn last line, which is then asked again
        done = {(r["id"], r["turn"], r["step"]): r for _, r in iter_jsonl(path)}
        for turn in range(2, sy.turns + 1):
            replies = _steps(replier, open_ids, turn, "reply", done, appender, seed, lambda i: CompletionRequest(
                prompt=render_prompt(replier.tokenizer, task.teacher_messages(conversations[i])), seed=0,
                temperature=c.temperature, max_new_tokens=task.teacher_max_new_tokens), replier.tokenizer)
            answered = []
            for i in open_ids:
                text = strip_reasoning(replies[i]["text"]).strip()
                why = "reply_truncated" if not replies[i]["stopped"] else "reply_empty" if not text else ""
                if why:
                    stopped_by[why] = stopped_by.get(why, 0) + 1
                    continue
                conversations[i].append({"role": "assistant", "content": text})
                answered.append(i)
            users = _steps(generator, answered, turn, "user", done, appender, seed, lambda i: CompletionRequest(
                prompt=magpie_prefix(task, generator.tokenizer, conversations[i]), seed=0,
                temperature=sy.temperature_max, max_new_tokens=sy.max_new_tokens), generator.tokenizer)
            open_ids = []
            for i in answered:
                raw = {"text": clean(users[i]["text"]), "stopped": users[i]["stopped"], "category": None}
                earlier = [m["content"] for m in conversations[i] if m["role"] == "user"]
                why = format_gate.format_gate(raw)
                if not why and near_duplicate(raw["text"], [shingles(t, sy.ngram) for t in earlier], sy.ngram,
                                              sy.near_duplicate_threshold):
                    why = "repeats_an_earlier_turn"
                if why:
                    conversations[i].pop()  # the reply to a turn that will not be asked
                    stopped_by[why] = stopped_by.get(why, 0) + 1
                    continue
                conversations[i].append({"role": "user", "content": raw["text"]})
                open_ids.append(i)
            bar.update(len(kept))
    bar.close()
    counts = [sum(m["role"] == "user" for m in conv) for conv in conversations.values()]
    report = {"asked": sy.turns, "mean_user_turns": sum(counts) / len(counts) if counts else None,
              "reached_all_turns": sum(n == sy.turns for n in counts), "stopped_by_reason": dict(sorted(stopped_by.items()))}
    return {i: conv for i, conv in conversations.items() if len(conv) > 1}, report


def _steps(model: Teacher, ids: list[str], turn: int, step: str, done: dict, appender, seed: int, request, tokenizer) -> dict:
    """One conversation step for each of `ids`: reused from `done`, else asked of `model`
    (one request each, seeded per (id, turn, step)) and appended as it comes."""
    todo = [i for i in ids if (i, turn, step) not in done]
    requests = [replace(request(i), seed=sample_seed(seed, f"{i}:{turn}:{step}", 0)) for i in todo]
    for i, completion in zip(todo, model.complete(requests) if requests else ()):
        record = {"id": i, "turn": turn, "step": step, "text": tokenizer.decode(completion.token_ids, skip_special_tokens=True),
                  "stopped": completion.stopped}
        appender.append(record)
        done[i, turn, step] = record
    return {i: done[i, turn, step] for i in ids}


def _input_record(raw: dict, generator: str, conversation: list[dict] | None = None) -> dict:
    source = {"strategy": raw["strategy"], "generator": generator, "seed": raw["seed"], "request": raw["request"],
              "temperature": raw["temperature"]}
    for key in ("persona", "difficulty", "seed_input", "operation"):
        if raw.get(key) is not None:
            source[key] = raw[key]
    if raw["target"] != ANY:
        source["asked_for"] = raw["target"]
    if conversation is not None:
        return {"id": raw["id"], "messages": conversation, "label": None, "meta": {"source": source, "synthetic": True}}
    return {"id": raw["id"], "text": raw["text"], "label": None, "meta": {"source": source, "synthetic": True}}


def _read_raw(path: Path) -> list[dict]:
    if not path.exists():
        return []
    raws = [obj for _, obj in iter_jsonl(path)]
    for i, r in enumerate(raws):
        if r.get("request") != i:  # appended in request order: anything else is not this stage's file
            raise PromptDistillError(f"raw generations out of order at record {i + 1}; delete the file to start over", path=path)
    return raws


def _check_or_write_meta(raw_path: Path, meta: dict, force: bool) -> None:
    """Generations made with other settings are refused, or with `force` discarded;
    then the sidecar records the current settings."""
    meta_path = raw_path.with_name(raw_path.name + ".meta.json")
    stored = read_settings(meta_path, corrupt="corrupt synthesis sidecar; delete it and rerun with --force")
    if stored is None and force:
        raw_path.unlink(missing_ok=True)
    turns = raw_path.with_name(raw_path.name.removesuffix(".raw.jsonl") + ".turns.jsonl")

    def discard():
        raw_path.unlink(missing_ok=True)
        turns.unlink(missing_ok=True)

    if stored is None and force:
        turns.unlink(missing_ok=True)
    resume_or_refuse(stored, meta, force=force, what="existing generations were made", path=raw_path,
                     discards="them, or write to another file", discard=discard)
    atomic_write_json(meta_path, meta)


# -- report --------------------------------------------------------------


def _report(state: _State, quotas: dict[str, int], raws: list[dict], kept: list[dict], n: int, out_path: Path, generator: str,
            max_requests: int) -> dict:
    texts = [r["text"] for r in kept]
    passed_format = state.generated - sum(state.dropped.get(k, 0) for k in
                                          ("truncated", "too_short", "too_long", "states_an_answer", "copies_prompt"))
    by_strategy: dict[str, int] = {}
    for r in kept:
        by_strategy[r["strategy"]] = by_strategy.get(r["strategy"], 0) + 1
    return {
        "output": str(out_path), "generator": generator, "asked": n, "requests": len(raws), "max_requests": max_requests,
        "kept": len(kept), "dropped": sum(state.dropped.values()), "dropped_by_reason": dict(sorted(state.dropped.items())),
        "kept_by_strategy": by_strategy,
        "quotas": {c: {"quota": q, "kept": len(state.kept[c])} for c, q in quotas.items()},
        "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
        # Among generations that passed the length and format filters: how many were (near) copies.
        "exact_duplicate_rate": state.dropped.get("exact_duplicate", 0) / passed_format if passed_format else None,
        "near_duplicate_rate": state.dropped.get("near_duplicate", 0) / passed_format if passed_format else None,
        "near_duplicate_threshold": state.sy.near_duplicate_threshold, "ngram": state.sy.ngram,
        "mean_chars": sum(map(len, texts)) / len(texts) if texts else None,
    }


def _write_report(out_path: Path, report: dict) -> None:
    atomic_write_json(out_path.with_name(out_path.stem + ".synthesis.json"), report)
    atomic_write_text(out_path.with_name(out_path.stem + ".synthesis.md"), report_markdown(report))


def _f(x, pct=False) -> str:
    return "-" if x is None else (f"{100 * x:.1f}%" if pct else f"{x:.3f}")


def report_markdown(report: dict) -> str:
    lines = [
        "# Synthesis report", "",
        f"Generator {md_code(report['generator'])}: {report['kept']} inputs kept of {report['asked']} asked, "
        f"from {report['requests']} requests ({report['dropped']} dropped).", "",
        f"- distinct-1 {_f(report['distinct_1'])}, distinct-2 {_f(report['distinct_2'])}",
        f"- exact-duplicate rate {_f(report['exact_duplicate_rate'], True)}, near-duplicate rate "
        f"{_f(report['near_duplicate_rate'], True)} (character {report['ngram']}-gram Jaccard >= {report['near_duplicate_threshold']})",
        "", "| dropped because | count |", "|---|---:|",
    ] + ([f"| {md_text(k)} | {v} |" for k, v in report["dropped_by_reason"].items()] or ["| (nothing dropped) | 0 |"]) + [
        "", "| category (strategy/asked for) | quota | kept |", "|---|---:|---:|",
    ] + [f"| {md_text(c)} | {q['quota']} | {q['kept']} |" for c, q in report["quotas"].items()]
    if report.get("labels_vs_quotas"):
        lv = report["labels_vs_quotas"]
        lines += ["", f"After labeling ({lv['labeled']} labeled, {lv['rejected']} rejected): the teacher's labels against what was asked for; "
                      f"{_f(lv['agreement'], True)} of the inputs asked for a label got it.", "",
                  "| label | quota | teacher labeled | asked for and got |", "|---|---:|---:|---:|"]
        lines += [f"| {md_text(k)} | {v['quota']} | {v['labeled']} | {v['asked_and_got']} |" for k, v in lv["labels"].items()]
    return "\n".join(lines) + "\n"


def quota_report(out_path, labeled: list[dict], rejected: int = 0) -> dict:
    """After labeling: the teacher's label distribution against the quotas, added to the
    synthesis report beside `out_path` (both files rewritten); return the report."""
    out_path = Path(out_path)
    report_path = out_path.with_name(out_path.stem + ".synthesis.json")
    report = json.loads(report_path.read_text(encoding="utf-8"))
    labels: dict[str, dict] = {}
    for c, q in report["quotas"].items():
        strategy, target = c.split("/", 1)
        if strategy == "prompt" and target not in (ANY, EDGE):
            labels[target] = {"quota": q["quota"], "labeled": 0, "asked_and_got": 0}
    asked = got = 0
    for r in labeled:
        label = r.get("label")
        if label is not None:
            labels.setdefault(label, {"quota": 0, "labeled": 0, "asked_and_got": 0})["labeled"] += 1
        want = ((r.get("meta") or {}).get("source") or {}).get("asked_for")
        if want not in (None, EDGE):
            asked += 1
            if want == label:
                got += 1
                labels[label]["asked_and_got"] += 1
    report["labels_vs_quotas"] = {"labeled": len(labeled), "rejected": rejected, "labels": labels,
                                  "agreement": got / asked if asked else None}
    _write_report(out_path, report)
    return report
