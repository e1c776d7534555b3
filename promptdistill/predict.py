"""Answering with a trained student, without the prompt."""

from __future__ import annotations

from .evaluation.systems import EVAL_BATCH_SIZE, generate_answers
from .models import LoadedModel
from .rundir import RunDir
from .task import Task


def load_student(run_dir, device: str | None = None) -> tuple[Task, LoadedModel]:
    """The task and the trained student (base + adapter) of a run directory."""
    run = RunDir(run_dir)
    cfg = run.load_config()
    return Task(cfg.task), run.load_student(cfg, device=device)


def predict_texts(task: Task, student: LoadedModel, texts: list[str]) -> list[tuple[str | None, str]]:
    """(label, reply) for each text; label is None when the reply does not parse.

    Texts are answered in batches decoded together (`generate_answers`, the
    evaluation's path), which gives each text the reply it gets alone."""
    out = []
    for i in range(0, len(texts), EVAL_BATCH_SIZE):
        batch = texts[i : i + EVAL_BATCH_SIZE]
        for reply, _ in generate_answers(task, student, [task.student_messages(t) for t in batch]):
            out.append((task.parse_answer(reply)[0], reply))
    return out
