"""The teacher as a transformers model in this process (`teacher_backend = "transformers"`).

Every teacher request starts with the same long prompt. `LocalTeacher` finds
the tokens all requests share from the rendered template (`shared_prefix`),
runs them once into a key/value cache (`engine.PrefixCache`) and answers each
input by running only its own suffix on top of it; the cache is built once
per task and kept across calls, so labeling, the evaluation's teacher row,
fidelity scoring and on-policy training each pay for the prompt once. A
model whose cache cannot be reused is answered whole, with a note.

- generate mode: inputs decode together in batches (`engine.decode_with_prefix`,
  per-sample seeds), records in input order; `prefix_attention`
  (models.prefix_attention) says whether the rows share one copy of the
  prompt's cache (cascade attention, the CPU's default) or each get a copy
  under the model's own attention (expand, the default on a GPU);
- choose mode: the inputs of a batch and every allowed reply are scored
  together on top of the prefix (`engine.score_batch_with_prefix`, packed
  candidate blocks); `label_distribution` scores one input (the student
  and base models in evaluation, inputs without the shared prefix);
- `continuation_logprobs`: the only backend with full per-token
  log-distributions, which on-policy training and per-token fidelity need.

When the teacher is the student's own base model, it is built on the
student's weights with the adapter switched off (`models.AdapterDisabled`,
see teachers.load_teacher), so one copy of the weights serves both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .. import engine
from ..config import GENERATE_BATCH_SIZE
from ..models import LoadedModel, load_model
from ..records import Example, LabeledExample
from ..render import end_of_turn_ids, render_prompt
from ..task import Task
from .base import Completion, CompletionRequest, Teacher
from .records import choose_record, decode_reply, normalize_scores, sample_seed, top_logprobs_record, vote

def shared_prefix(task: Task, tokenizer, messages: Callable[[str], list[dict]] | None = None) -> list[int]:
    """The token ids every teacher request starts with, found from the rendered
    template: the longest common prefix of the prompts for a few unlike probe
    inputs. Inputs whose ids do not start with it (a tokenizer merging across
    the boundary) are answered without the shared prefix. `messages` (text ->
    conversation, default the teacher's) finds another side's: the student's
    requests share only their chat template's opening."""
    probes = ["A", "z 1", "\u4f60\u597d", "\n-", "{text}"]
    rendered = [render_prompt(tokenizer, (messages or task.teacher_messages)(p)) for p in probes]
    n = 0
    for column in zip(*rendered):
        if any(c != column[0] for c in column):
            break
        n += 1
    return rendered[0][:n]


def split_prefix(prefix: engine.PrefixCache | None, ids: list[int]) -> list[int] | None:
    """The part of `ids` after the shared prefix, or None when it does not start with it."""
    if prefix is None or ids[: len(prefix)] != prefix.prefix or len(ids) == len(prefix):
        return None
    return ids[len(prefix):]


def label_distribution(task: Task, loaded: LoadedModel, messages: list[dict], candidates: list[list[int]],
                       prefix: engine.PrefixCache | None = None) -> dict[str, float]:
    """Probability of each allowed label as `loaded`'s reply to `messages` (normalised over the label set)."""
    tok = loaded.tokenizer
    context = render_prompt(tok, messages)
    suffix = split_prefix(prefix, context)
    if suffix is not None:
        logps = engine.score_with_prefix(prefix, suffix, candidates)
    else:
        logps = engine.score_continuations(loaded.model, context, candidates, pad_id=tok.pad_token_id)
    return normalize_scores(task, logps.tolist())


class LocalTeacher(Teacher):
    """A transformers causal LM in this process, with its shared-prefix cache."""

    backend = "transformers"

    def __init__(self, loaded: LoadedModel, prefix_attention: str = "auto"):
        self.loaded = loaded
        # models.prefix_attention: how batches attend to the cached prompt (prefix_cache.strategy_for)
        self.prefix_attention = prefix_attention
        self.name = loaded.name
        self._prefix_key: tuple | None = None
        self._prefix: engine.PrefixCache | None = None
        self._whole: engine.PrefixCache | None = None

    @classmethod
    def load(cls, name: str, device: str = "auto", dtype: str = "auto", prefix_attention: str = "auto") -> LocalTeacher:
        return cls(load_model(name, device, dtype), prefix_attention)

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    def prefix_cache(self, task: Task) -> engine.PrefixCache | None:
        """The cache of `task`'s shared prompt prefix, built on first use and kept;
        None (and a note) where the model cannot reuse a cache."""
        # The prefix depends only on the prompt's wording (teacher_messages), so
        # the evaluation's per-request calls do not render the probes again.
        key = (task.config.system_prompt, task.config.user_template)
        if key != self._prefix_key:
            self._prefix_key, self._prefix = key, None
            ids = shared_prefix(task, self.tokenizer)
            if ids:
                try:
                    self._prefix = engine.PrefixCache(self.loaded.model, ids, self.prefix_attention)
                except Exception as e:  # a model without a standard key/value cache
                    print(f"[promptdistill] note: shared-prefix reuse is not available for this model ({type(e).__name__}: {e}); "
                          "answering without it", flush=True)
                # A cache that falls back to copies per batch says why (prefix_cache's
                # PrefixCache.note); said once here, as the cache is built once per task.
                if getattr(self._prefix, "note", None):
                    print(f"[promptdistill] note: {self._prefix.note}", flush=True)
        return self._prefix

    def _whole_prompts(self) -> engine.PrefixCache:
        """An empty prefix: our decoder and scorer over whole prompts."""
        if self._whole is None:
            self._whole = engine.PrefixCache(self.loaded.model, [])
        return self._whole

    def label(self, examples: list[Example], task: Task, mode: str, seed: int, batch_size: int | None = None, *,
              reuse_prefix: bool = True) -> Iterator[LabeledExample]:
        prefix = self.prefix_cache(task) if reuse_prefix and examples else None
        step = batch_size or GENERATE_BATCH_SIZE
        for i in range(0, len(examples), step):
            if mode == "choose":
                yield from self._choose(examples[i : i + step], task, prefix)
            else:
                yield from self._generate(examples[i : i + step], task, seed, prefix)

    def _choose(self, batch: list[Example], task: Task, prefix: engine.PrefixCache | None) -> list[LabeledExample]:
        """One batch scored together on top of the prefix (`engine.score_batch_with_prefix`:
        the inputs' candidate blocks share forwards); inputs without the shared
        prefix, or without a prefix at all, are scored one at a time."""
        candidates = self.candidates(task)
        contexts = [render_prompt(self.tokenizer, task.teacher_messages(e.conversation())) for e in batch]
        suffixes = [split_prefix(prefix, c) for c in contexts]
        fast = [i for i, s in enumerate(suffixes) if s is not None]
        scores: dict[int, list[float]] = {}
        if fast:
            got = engine.score_batch_with_prefix(prefix, [suffixes[i] for i in fast], candidates)
            scores.update(zip(fast, got.tolist()))
        records = []
        for i, e in enumerate(batch):
            if i in scores:
                distribution = normalize_scores(task, scores[i])
            else:
                distribution = label_distribution(task, self.loaded, task.teacher_messages(e.conversation()), candidates, prefix)
            records.append(choose_record(task, e, distribution))
        return records

    def _generate(self, batch: list[Example], task: Task, seed: int, prefix: engine.PrefixCache | None) -> list[LabeledExample]:
        """One batch decoded together (sorted by length inside), records in input order."""
        tok = self.tokenizer
        c = task.config
        n, k = c.samples, c.top_logprobs
        eot = end_of_turn_ids(tok)
        settings = dict(max_new_tokens=task.teacher_max_new_tokens, eos_ids=eot, pad_id=tok.pad_token_id, temperature=c.temperature)
        # Without a shared prefix, sampling (for its per-input seeds) and top-k
        # capture still go through our decoder, with an empty prefix; plain
        # greedy uses transformers' generate.
        own_decoder = c.temperature > 0 or k > 0
        prompts = [render_prompt(tok, task.teacher_messages(e.conversation()), c.reply_prefix) for e in batch]
        rows = [(i, j) for i in range(len(batch)) for j in range(n)]
        suffixes = [split_prefix(prefix, p) for p in prompts]
        seeds = {(i, j): sample_seed(seed, batch[i].id, j) for i, j in rows}
        outs: dict = {}
        fast = [r for r in rows if suffixes[r[0]] is not None]
        slow = [r for r in rows if suffixes[r[0]] is None]
        if fast:
            got = engine.decode_with_prefix(prefix, [suffixes[i] for i, _ in fast], seeds=[seeds[r] for r in fast],
                                            top_logprobs=k, **settings)
            outs.update(zip(fast, got))
        if slow and own_decoder:
            got = engine.decode_with_prefix(self._whole_prompts(), [prompts[i] for i, _ in slow], seeds=[seeds[r] for r in slow],
                                            top_logprobs=k, **settings)
            outs.update(zip(slow, got))
        elif slow:
            got = engine.generate(self.loaded.model, [prompts[i] for i, _ in slow], **settings)
            # generate() cuts at end-of-turn: a reply as long as the limit did not stop on its own.
            outs.update(zip(slow, (engine.Decoded(ids, False) if len(ids) >= settings["max_new_tokens"] else
                                   engine.Decoded(ids + [min(eot)], True) for ids in got)))
        records = []
        for i, e in enumerate(batch):
            decoded = [outs[(i, j)] for j in range(n)]
            replies = [decode_reply(tok, task, d.token_ids, eot) for d in decoded]
            records.append(vote(task, e, replies, [top_logprobs_record(d.token_ids, d.top, k) for d in decoded],
                                [not d.stopped for d in decoded]))
        return records

    def complete(self, requests: list[CompletionRequest], batch_size: int | None = None) -> Iterator[Completion]:
        """Batches of `batch_size` requests; inside one, rows with the same temperature and
        length decode together (our decoder takes one of each per call), each with its seed."""
        tok = self.tokenizer
        eot = end_of_turn_ids(tok)
        step = batch_size or GENERATE_BATCH_SIZE
        for start in range(0, len(requests), step):
            batch = requests[start: start + step]
            out: dict[int, Completion] = {}
            groups: dict[tuple, list[int]] = {}
            for i, r in enumerate(batch):
                groups.setdefault((r.temperature, r.max_new_tokens), []).append(i)
            for (temperature, max_new), rows in groups.items():
                got = engine.decode_with_prefix(self._whole_prompts(), [batch[i].prompt for i in rows], max_new_tokens=max_new,
                                                eos_ids=eot, pad_id=tok.pad_token_id, temperature=temperature,
                                                seeds=[batch[i].seed for i in rows])
                out.update((i, Completion(d.text_ids, d.stopped)) for i, d in zip(rows, got))
            yield from (out[i] for i in range(len(batch)))

    def continuation_logprobs(self, task: Task, texts: list, continuations: list[list[int]], full: bool = False) -> list:
        """Per input (a text or a conversation), the log-probability of each continuation token after the
        teacher's prompt for that input (with `full`, the whole log-distribution
        at each position): one batched forward on top of the shared prefix."""
        prefix = self.prefix_cache(task)
        prompts = [render_prompt(self.tokenizer, task.teacher_messages(t)) for t in texts]
        suffixes = [split_prefix(prefix, p) for p in prompts]
        fast = [i for i, s in enumerate(suffixes) if s is not None]
        slow = [i for i, s in enumerate(suffixes) if s is None]
        out: dict = {}
        if fast:
            got = engine.continuation_logprobs(prefix, [suffixes[i] for i in fast], [continuations[i] for i in fast], full)
            out.update(zip(fast, got))
        if slow:
            got = engine.continuation_logprobs(self._whole_prompts(), [prompts[i] for i in slow],
                                               [continuations[i] for i in slow], full)
            out.update(zip(slow, got))
        return [out[i] for i in range(len(prompts))]
