"""Answering with a trained student, without the prompt."""

from __future__ import annotations

from .evaluation.systems import generate_answer
from .models import LoadedModel
from .rundir import RunDir
from .task import Task


def load_student(run_dir, device: str | None = None) -> tuple[Task, LoadedModel]:
    """The task and the trained student (base + adapter) of a run directory."""
    run = RunDir(run_dir)
    cfg = run.load_config()
    return Task(cfg.task), run.load_student(cfg, device=device)


def predict_texts(task: Task, student: LoadedModel, texts: list[str]) -> list[tuple[str | None, str]]:
    """(label, reply) for each text; label is None when the reply does not parse."""
    out = []
    for text in texts:
        reply, _ = generate_answer(task, student, task.student_messages(text))
        label, _ = task.parse_answer(reply)
        out.append((label, reply))
    return out
