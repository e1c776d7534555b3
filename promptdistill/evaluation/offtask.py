"""Off-task inputs: what the student does where the prompt has nothing to say.

The held-out set measures the student on the inputs the prompt is about. A
user also sends greetings, unrelated questions, code, text in two languages,
near-empty messages; what should a student that answers "as if the prompt
were there" do with them? Two readings, and the numbers tell them apart:

- it generalises the prompt: it answers like the teacher with the prompt
  would (high agreement with the teacher, small KL to it);
- it keeps its base behaviour off the task: it answers like the untrained
  base (high agreement with the base, small KL to it);
- or it learned a shortcut from the training distribution and does neither
  (e.g. always the most common training label, in the task's format).

On `eval.offtask_inputs` the teacher (with the prompt), the base and the
student (without) answer; report.json's `offtask` gives, per system, the
share of replies in the task's format, and for the student its agreement
and KL with the teacher and with the base.

Agreement with the teacher compares parsed answers, as on the held-out set.
Agreement with the base counts the same parsed answer, or, when neither
reply is in the task's format, the same reply text (whitespace aside): a
base that chats and a student that chats the same way agree. KL is the
fidelity metric (fidelity.py) with the reference swapped: over the label
distributions for label tasks (KL(teacher || student), KL(base || student)),
per token over the reference's own reply otherwise.
"""

from __future__ import annotations

import statistics

from ..models import LoadedModel
from ..records import Example
from ..render import render_prompt, reply_ids
from ..task import OK, Task
from .api_student import UNAVAILABLE as KL_NEEDS_LOCAL_STUDENT, ApiStudent
from .fidelity import distribution_kl
from .general_ability import reply_kls

# Stored system names of off-task predictions: PREFIX + "teacher" and so on (systems.predict_systems;
# predictions.partial.jsonl, offtask_predictions.jsonl).
PREFIX = "offtask_"


def same_answer(a, b) -> bool:
    """Two predictions agree: the same parsed answer, or both unparsed with the same reply text."""
    if a.status == OK and b.status == OK:
        return a.label == b.label
    if a.status != OK and b.status != OK:
        return " ".join(a.reply.split()) == " ".join(b.reply.split())
    return False


def offtask_summary(task: Task, examples: list[Example], preds: dict[str, list], base: LoadedModel, student: LoadedModel | ApiStudent,
                    source: str) -> dict:
    """report.json's `offtask` section (see the module docstring)."""
    teacher, base_p, student_p = preds["teacher"], preds["base"], preds["student"]
    n = len(examples)
    with_teacher = [(s, t) for s, t in zip(student_p, teacher) if t.label is not None]
    base_with_teacher = [(b, t) for b, t in zip(base_p, teacher) if t.label is not None]
    # a student behind an API gives no distributions (api_student.py): no KL, and the reason why
    over_api = isinstance(student, ApiStudent)
    kl_base = [None] * n if over_api else kl_from_base(task, examples, base_p, student_p, base, student)
    mean = lambda xs: statistics.fmean(xs) if xs else None  # noqa: E731
    labels = [p.label for p in student_p if p.label is not None]
    top = max(set(labels), key=labels.count) if labels else None
    return {
        "n": n,
        "inputs": source,
        "kind": "label distribution" if task.closed else "per reply token",
        "in_format": {name: sum(p.status == OK for p in ps) / n for name, ps in preds.items()},
        "student": {
            "agreement_teacher": sum(s.label == t.label for s, t in with_teacher) / len(with_teacher) if with_teacher else None,
            "agreement_base": sum(same_answer(s, b) for s, b in zip(student_p, base_p)) / n,
            "kl_teacher": mean([p.kl for p in student_p if p.kl is not None]),
            "kl_base": mean([k for k in kl_base if k is not None]),
            # the student's most common answer there, and how often: a shortcut shows as one answer for everything
            "top_answer": top,
            "top_answer_share": labels.count(top) / n if top is not None else None,
            **({"kl_unavailable": KL_NEEDS_LOCAL_STUDENT} if over_api else {}),
        },
        "base": {
            "agreement_teacher": sum(b.label == t.label for b, t in base_with_teacher) / len(base_with_teacher) if base_with_teacher else None,
            "kl_teacher": mean([p.kl for p in base_p if p.kl is not None]),
        },
    }


def kl_from_base(task: Task, examples: list[Example], base_preds: list, student_preds: list, base: LoadedModel,
                 student: LoadedModel) -> list[float | None]:
    """KL(base || student) per input: over the label distributions the predictions carry
    (label tasks), else per token over the base's own reply."""
    if task.closed:
        return [distribution_kl(b.label_probs, s.label_probs) if b.label_probs and s.label_probs else None
                for b, s in zip(base_preds, student_preds)]
    tok = base.tokenizer
    messages = [task.student_messages(e.conversation()) for e in examples]
    prompts = [render_prompt(tok, m) for m in messages]
    replies = [reply_ids(tok, m, p.reply) for m, p in zip(messages, base_preds)]
    return reply_kls(base, student, prompts, replies)
