"""Answering with a trained student, without the prompt."""

from __future__ import annotations

import json
from pathlib import Path

from .config import config_from_dict
from .errors import PromptDistillError
from .evaluation.systems import generate_answer
from .models import LoadedModel, load_model
from .task import Task


def load_student(run_dir, device: str | None = None) -> tuple[Task, LoadedModel]:
    """The task and the trained student (base + adapter) of a run directory."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    adapter = run_dir / "train" / "adapter"
    if not config_path.exists():
        raise PromptDistillError("not a run directory (no config.json)", path=run_dir)
    if not (adapter / "adapter_config.json").exists():
        raise PromptDistillError("no trained adapter in this run directory", path=adapter)
    cfg = config_from_dict(json.loads(config_path.read_text(encoding="utf-8")), source=config_path)
    student = load_model(cfg.models.student, device or cfg.models.device, cfg.models.dtype, adapter=adapter)
    return Task(cfg.task), student


def predict_texts(task: Task, student: LoadedModel, texts: list[str]) -> list[tuple[str | None, str]]:
    """(label, reply) for each text; label is None when the reply does not parse."""
    out = []
    for text in texts:
        reply, _ = generate_answer(task, student, task.student_messages(text))
        label, _ = task.parse_answer(reply)
        out.append((label, reply))
    return out
