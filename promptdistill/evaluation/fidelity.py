"""Fidelity: how close a model without the prompt is to the teacher with it.

Agreement on the top answer says whether the student picks what the teacher
picks; the KL from the teacher's distribution says how closely it reproduces
the teacher's uncertainty too, which is what distillation is after.

- Label-constrained tasks: KL(teacher || model) between the two
  distributions over the allowed replies, each scored like `choose` mode
  (the probability of every complete reply, normalised over the label set).
- Free-form tasks: the mean over the teacher's reply tokens of the
  per-token KL(teacher || model) over the whole vocabulary, both models
  reading the same reply (the teacher after the prompt and the input, the
  model after the input only). Needs a shared vocabulary.

The share of the gap the student closes is 1 - KL_student / KL_base: 0 means
no closer than the untrained base, 1 means the teacher's distribution exactly.
"""

from __future__ import annotations

import math

import torch

from .. import engine
from ..models import LoadedModel
from ..render import render_prompt, reply_ids
from ..task import Task


def distribution_kl(p: dict[str, float], q: dict[str, float]) -> float:
    """KL(p || q) in nats for two distributions over the same labels."""
    return sum(pk * (math.log(pk) - math.log(max(q[k], 1e-300))) for k, pk in p.items() if pk > 0)


@torch.inference_mode()
def token_kl(teacher_logp: torch.Tensor, model_logp: torch.Tensor) -> float:
    """Mean over positions of KL(teacher || model); rows are log-distributions over one vocabulary."""
    return float((teacher_logp.exp() * (teacher_logp - model_logp)).sum(-1).mean())


class FidelityScorer:
    """Scores KL(teacher || model) for one input, given the teacher's prediction."""

    def __init__(self, task: Task, teacher: LoadedModel):
        from ..labeling import label_candidates, make_prefix_cache

        self.task, self.teacher = task, teacher
        self.kind = "label" if task.closed else "token"
        self._prefix = make_prefix_cache(task, teacher)
        self._teacher_probs: dict[str, dict[str, float]] = {}
        self._candidates = None
        self._label_candidates = label_candidates

    def teacher_label_probs(self, example_id: str, text: str) -> dict[str, float]:
        """The teacher's distribution over labels for one input (computed once)."""
        from ..labeling import label_distribution

        if example_id not in self._teacher_probs:
            messages = self.task.teacher_messages(text)
            candidates = self._label_candidates(self.task, self.teacher.tokenizer, messages)
            self._teacher_probs[example_id] = label_distribution(self.task, self.teacher, messages, candidates, self._prefix)
        return self._teacher_probs[example_id]

    def remember(self, example_id: str, label_probs: dict[str, float] | None) -> None:
        if label_probs:
            self._teacher_probs[example_id] = label_probs

    def model_label_probs(self, loaded: LoadedModel, text: str) -> dict[str, float]:
        from ..labeling import label_distribution

        messages = self.task.student_messages(text)
        if self._candidates is None:
            self._candidates = self._label_candidates(self.task, loaded.tokenizer, messages)
        return label_distribution(self.task, loaded, messages, self._candidates)

    def kl(self, loaded: LoadedModel, example_id: str, text: str, teacher_reply: str) -> tuple[float | None, dict | None]:
        """(KL(teacher || model), the model's label distribution or None) for one input."""
        if self.kind == "label":
            q = self.model_label_probs(loaded, text)
            return distribution_kl(self.teacher_label_probs(example_id, text), q), q
        if loaded.tokenizer.get_vocab() != self.teacher.tokenizer.get_vocab():
            return None, None  # per-token KL needs one vocabulary
        student_messages = self.task.student_messages(text)
        reply = reply_ids(loaded.tokenizer, student_messages, teacher_reply)
        teacher_prompt = render_prompt(self.teacher.tokenizer, self.task.teacher_messages(text))
        teacher_logp = _reply_logprobs(self._prefix, self.teacher.model, teacher_prompt, reply)
        model_logp = _reply_logprobs(None, loaded.model, render_prompt(loaded.tokenizer, student_messages), reply)
        return token_kl(teacher_logp, model_logp), None


def _reply_logprobs(prefix: engine.PrefixCache | None, model, prompt: list[int], reply: list[int]) -> torch.Tensor:
    """Log-distributions (len(reply) x vocabulary) predicting each reply token after `prompt`."""
    from ..labeling import _split_prefix

    suffix = _split_prefix(prefix, prompt)
    if suffix is None:
        prefix, suffix = engine.PrefixCache(model, []), prompt
    return engine.continuation_logprobs(prefix, [suffix], [reply], full=True)[0]
