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

The teacher side comes from the run's `Teacher` (any backend): its label
distributions are its choose-mode records, and the per-token KL needs its
full log-distributions (`continuation_logprobs`), which only the
transformers backend has; with another backend the per-token KL is reported
as not available (`FidelityScorer.unavailable`), never silently replaced.

The share of the gap the student closes is 1 - KL_student / KL_base: 0 means
no closer than the untrained base, 1 means the teacher's distribution exactly.
It is the prompt effect recovered on KL (the teacher's own KL being 0), so
effect.kl_effect computes it, with its bootstrap interval (systems.py).
"""

from __future__ import annotations

import math

import torch

from .. import engine
from ..models import LoadedModel
from ..reasoning import strip_reasoning
from ..records import Example
from ..render import render_prompt, reply_ids
from ..task import Task
from ..teachers import Teacher
from ..teachers.local import label_distribution
from ..teachers.records import label_candidates, normalize_scores


def distribution_kl(p: dict[str, float] | None, q: dict[str, float]) -> float | None:
    """KL(p || q) in nats for two distributions over the same labels; None without p (a
    chat API's teacher whose answer token's alternatives named no label gave none)."""
    if p is None:
        return None
    return sum(pk * (math.log(pk) - math.log(max(q[k], 1e-300))) for k, pk in p.items() if pk > 0)


@torch.inference_mode()
def token_kl(teacher_logp: torch.Tensor, model_logp: torch.Tensor) -> float:
    """Mean over positions of KL(teacher || model); rows are log-distributions over one vocabulary."""
    return float((teacher_logp.exp() * (teacher_logp - model_logp)).sum(-1).mean())


def kl_unavailable(task: Task, teacher: Teacher) -> str | None:
    """Why no KL can be computed at all with this teacher, else None."""
    if task.closed or teacher.can("continuation_logprobs"):
        return None
    return (f"KL not available with teacher backend {teacher.backend!r}: the per-token KL needs the "
            "teacher's full distributions (teacher_backend = \"transformers\")")


class FidelityScorer:
    """Scores KL(teacher || model) for one input, given the teacher's prediction.

    `seed` is the labeling seed, passed to the teacher's choose-mode answers
    (which do not sample; it keeps their records' settings the labeling's).
    """

    def __init__(self, task: Task, teacher: Teacher, seed: int = 0):
        self.task, self.teacher, self.seed = task, teacher, seed
        self.kind = "label" if task.closed else "token"
        # Why no KL can be computed at all with this teacher, else None.
        self.unavailable = kl_unavailable(task, teacher)
        self._teacher_probs: dict[str, dict[str, float]] = {}
        self._candidates = None

    def teacher_label_probs(self, example_id: str, text: str | list[dict]) -> dict[str, float] | None:
        """The teacher's distribution over labels for one input (a text or a conversation):
        its choose-mode record (computed once); None where the record has none (the chat
        backend's reply taken as given)."""
        if example_id not in self._teacher_probs:
            example = (Example(id=example_id, text=text) if isinstance(text, str)
                       else Example(id=example_id, text=text[-1]["content"], messages=text))
            (record,) = self.teacher.label([example], self.task, "choose", self.seed)
            self._teacher_probs[example_id] = record.label_probs
        return self._teacher_probs[example_id]

    def remember(self, example_id: str, label_probs: dict[str, float] | None) -> None:
        if label_probs:
            self._teacher_probs[example_id] = label_probs

    def model_label_probs(self, loaded: LoadedModel, text: str) -> dict[str, float]:
        messages = self.task.student_messages(text)
        if self._candidates is None:
            self._candidates = label_candidates(self.task, loaded.tokenizer, messages)
        return label_distribution(self.task, loaded, messages, self._candidates)

    def model_label_probs_batch(self, loaded: LoadedModel, texts: list[str]) -> list[dict[str, float]]:
        """`model_label_probs` for many inputs in batched forwards (what the evaluation calls).

        The prompts without the task's prompt still share their chat template's
        opening (SmolLM2's adds a default system message, 30 tokens); that
        common prefix is cached once and every input's row runs on top of it
        with all candidates packed after it (engine.score_batch_with_prefix),
        instead of one forward per input. The same distributions as one at a
        time, up to float rounding (tested)."""
        if len(texts) < 2:
            return [self.model_label_probs(loaded, t) for t in texts]
        tok = loaded.tokenizer
        messages = [self.task.student_messages(t) for t in texts]
        if self._candidates is None:
            self._candidates = label_candidates(self.task, tok, messages[0])
        contexts = [render_prompt(tok, m) for m in messages]
        if engine.shared_prefix_len(contexts) < 1:
            return [self.model_label_probs(loaded, t) for t in texts]
        prefix, suffixes = engine.common_prefix_cache(loaded.model, contexts)
        scores = engine.score_batch_with_prefix(prefix, suffixes, self._candidates)
        return [normalize_scores(self.task, row.tolist()) for row in scores]

    def kl(self, loaded: LoadedModel, example_id: str, text: str, teacher_reply: str) -> tuple[float | None, dict | None]:
        """(KL(teacher || model), the model's label distribution or None) for one input."""
        if self.kind == "label":
            q = self.model_label_probs(loaded, text)
            return distribution_kl(self.teacher_label_probs(example_id, text), q), q
        if self.unavailable or loaded.tokenizer.get_vocab() != self.teacher.tokenizer.get_vocab():
            return None, None  # per-token KL needs the teacher's distributions over one vocabulary
        student_messages = self.task.student_messages(text)
        # The student is scored on the teacher's answer, not on thinking it never learned to write.
        reply = reply_ids(loaded.tokenizer, student_messages, strip_reasoning(teacher_reply))
        teacher_logp = self.teacher.continuation_logprobs(self.task, [text], [reply], full=True)[0]
        prompt = render_prompt(loaded.tokenizer, student_messages)
        model_logp = engine.continuation_logprobs(engine.PrefixCache(loaded.model, []), [prompt], [reply], full=True)[0]
        return token_kl(teacher_logp, model_logp), None

