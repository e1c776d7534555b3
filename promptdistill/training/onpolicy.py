"""On-policy distillation: the student samples, the teacher grades every token.

At each step the student, without the prompt, samples a reply for each input
of the batch, and the teacher, with the prompt, reads those same tokens. The
student then minimises the reverse KL(student || teacher) at every position
of its own sample. Unlike `kd`, it learns in the states it actually reaches
(its own mistakes included), and the teacher needs no labels in advance.

Two ways to measure the per-token reverse KL (`train.onpolicy_kl`):

- "sampled": the one-sample estimate. At token t, log p_T(y_t) - log p_S(y_t)
  is the (detached) advantage of a policy-gradient step,

      loss = - mean_t [ (log p_T(y_t) - log p_S(y_t)) * log p_S(y_t) ]

  It needs only the teacher's log-probability of the sampled token (what a
  remote server returns), but a student that never samples the teacher's
  preferred token gets no signal towards it.
- "full" (default): both models are local, so the KL at each visited
  position is computed exactly over the vocabulary,

      loss = mean_t sum_v p_S(v | y_<t) (log p_S(v | y_<t) - log p_T(v | y_<t))

  the expectation of the estimate above: no sampling variance, and a signal
  towards every token the teacher prefers. A weak student (SmolLM2-135M
  without the prompt puts almost no mass on the answer format) learns with
  this; on the toy of tests/test_loss_modes_learn.py the sampled estimate
  did not lower the held-out KL in 20 steps, the full one did.

When teacher and student share the base model, the teacher is the student's
own weights with the LoRA adapter disabled, so no second copy is held in
memory; the prompt's shared-prefix cache is computed once, since the base
never changes while the adapter trains.
"""

from __future__ import annotations

import hashlib

import torch

from .. import engine
from .losses import logits_at
from ..render import end_of_turn_ids, render_prompt


def sample_seed(seed: int, step: int, example_id: str) -> int:
    """One seed per (step, input): samples do not depend on batching or on resuming."""
    return int(hashlib.sha256(f"on-policy:{seed}:{step}:{example_id}".encode()).hexdigest()[:15], 16)


class TeacherScorer:
    """The teacher with the prompt, scoring continuations on top of its cached shared prefix."""

    def __init__(self, task, teacher_model, tokenizer):
        from ..labeling import shared_prefix

        self.task, self.tokenizer = task, tokenizer
        prefix = shared_prefix(task, tokenizer)
        self.prefix = engine.PrefixCache(teacher_model, prefix)
        self.whole = engine.PrefixCache(teacher_model, [])

    def logprobs(self, texts: list[str], continuations: list[list[int]], full: bool = False) -> list[torch.Tensor]:
        """Per continuation, the teacher's log-probability of each of its tokens
        (with `full`, the whole log-distribution at each of its positions)."""
        from ..labeling import _split_prefix

        prompts = [render_prompt(self.tokenizer, self.task.teacher_messages(t)) for t in texts]
        suffixes = [_split_prefix(self.prefix, p) for p in prompts]
        fast = [i for i, s in enumerate(suffixes) if s is not None]
        slow = [i for i, s in enumerate(suffixes) if s is None]
        out: dict[int, torch.Tensor] = {}
        if fast:
            got = engine.continuation_logprobs(self.prefix, [suffixes[i] for i in fast], [continuations[i] for i in fast], full)
            out.update(zip(fast, got))
        if slow:
            got = engine.continuation_logprobs(self.whole, [prompts[i] for i in slow], [continuations[i] for i in slow], full)
            out.update(zip(slow, got))
        return [out[i] for i in range(len(prompts))]


def sample_replies(model, tokenizer, prompts: list[list[int]], seeds: list[int], *, max_new_tokens: int,
                   temperature: float) -> list[list[int]]:
    """The student's sampled replies (end-of-turn token kept when it stopped)."""
    was_training = model.training
    model.eval()
    try:
        got = engine.decode_with_prefix(
            engine.PrefixCache(model, []), prompts, max_new_tokens=max_new_tokens, eos_ids=end_of_turn_ids(tokenizer),
            pad_id=tokenizer.pad_token_id, temperature=temperature, seeds=seeds,
        )
    finally:
        model.train(was_training)
    return [d.token_ids for d in got]


def on_policy_loss(model, tokenizer, task, scorer: TeacherScorer, records, *, step: int, seed: int, temperature: float,
                   kl: str = "full"):
    """Sum over `records` of each sample's mean per-token loss (see the module
    docstring for `kl`); the sum of each sample's mean reverse KL; sampled tokens."""
    device = next(model.parameters()).device
    prompts = [render_prompt(tokenizer, task.student_messages(r.text)) for r in records]
    seeds = [sample_seed(seed, step, r.id) for r in records]
    samples = sample_replies(model, tokenizer, prompts, seeds, max_new_tokens=task.config.max_new_tokens, temperature=temperature)
    teacher_lp = scorer.logprobs([r.text for r in records], samples, full=kl == "full")

    rows = [p + s[:-1] for p, s in zip(prompts, samples)]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    select = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, (row, prompt, sample) in enumerate(zip(rows, prompts, samples)):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
        select[b, len(prompt) - 1 : len(prompt) - 1 + len(sample)] = True
    logp = torch.log_softmax(logits_at(model, ids.to(device), mask.to(device), select.to(device)), dim=-1)
    total = torch.zeros((), device=device)
    reverse_kl, start = 0.0, 0
    for sample, t_lp in zip(samples, teacher_lp):
        n = len(sample)
        rows_lp = logp[start : start + n]
        start += n
        if kl == "full":
            per_token = (rows_lp.exp() * (rows_lp - t_lp.to(device))).sum(-1)
            total = total + per_token.mean()
            reverse_kl += float(per_token.detach().mean())
            continue
        s_lp = rows_lp.gather(1, torch.tensor(sample, device=device).unsqueeze(1)).squeeze(1)
        advantage = t_lp.to(device) - s_lp.detach()
        total = total - (advantage * s_lp).mean()
        reverse_kl += float(-advantage.mean())
    return total, reverse_kl, sum(len(s) for s in samples)
