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

The teacher is a `Teacher` (teachers/) that can score given continuations
(`continuation_logprobs`, the transformers backend; validate_config refuses
on-policy with another backend). `training_teacher` builds it: when teacher
and student share the base model, the teacher is the student's own weights
with the LoRA adapter disabled, so no second copy is held in memory; the
prompt's shared-prefix cache is computed once (the teacher keeps it), since
the base never changes while the adapter trains.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import torch

from .. import engine
from ..config import ModelsConfig
from ..errors import PromptDistillError
from ..models import AdapterDisabled, LoadedModel
from ..render import end_of_turn_ids, render_prompt
from ..teachers import Teacher
from .losses import logits_at


def sample_seed(seed: int, step: int, example_id: str) -> int:
    """One seed per (step, input): samples do not depend on batching or on resuming."""
    return int(hashlib.sha256(f"on-policy:{seed}:{step}:{example_id}".encode()).hexdigest()[:15], 16)


def training_teacher(models: ModelsConfig, peft_model, tokenizer, device: str) -> Teacher:
    """The teacher that grades the student's samples, on the student's device.

    `peft_model` is the student being trained: a teacher that is the same
    model reuses its weights with the adapter switched off."""
    from ..teachers import load_teacher

    base = LoadedModel(AdapterDisabled(peft_model), tokenizer, models.student, device)
    teacher = load_teacher(replace(models, device=device), base=base)
    if not teacher.can("continuation_logprobs"):  # validate_config refuses this first; a direct caller gets the same line
        raise PromptDistillError(f"on-policy training cannot use teacher backend {teacher.backend!r}: it needs the teacher's "
                                 "per-token distributions (teacher_backend = \"transformers\")", field="train.loss")
    if teacher.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise PromptDistillError("on-policy training compares teacher and student token by token: they must share one "
                                 "vocabulary", field="models.teacher")
    return teacher


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


def on_policy_loss(model, tokenizer, task, teacher: Teacher, records, *, step: int, seed: int, temperature: float,
                   kl: str = "full"):
    """Sum over `records` of each sample's mean per-token loss (see the module
    docstring for `kl`); the sum of each sample's mean reverse KL; sampled tokens."""
    device = next(model.parameters()).device
    prompts = [render_prompt(tokenizer, task.student_messages(r.conversation())) for r in records]
    seeds = [sample_seed(seed, step, r.id) for r in records]
    samples = sample_replies(model, tokenizer, prompts, seeds, max_new_tokens=task.config.max_new_tokens, temperature=temperature)
    teacher_lp = teacher.continuation_logprobs(task, [r.conversation() for r in records], samples, full=kl == "full")

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
