"""Looking at a run's data from Python: what a notebook inspects between stages.

- `token_counts`: per labeled record, the student's tokens and trained tokens
  (the reply, end-of-turn included), the numbers `promptdistill render` prints;
- `read_metrics`: the training log (`train/metrics.jsonl`) as a list of dicts,
  one per step (`loss`, `lr`, `tokens_per_s`, ...) plus one per held-out
  evaluation (`heldout_loss`);
- `load_report`: the evaluation report (`eval/report.json`) of a run.

Each takes a run directory or the file itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import PromptDistillError


def token_counts(records, tokenizer, max_length: int | None = None) -> list[dict]:
    """{id, tokens, trained_tokens, too_long} for every trained labeled record."""
    from .render import render_example

    rows = []
    for r in records:
        if not r.trainable:
            continue
        ex = render_example(tokenizer, r.messages)
        rows.append({"id": r.id, "tokens": ex.num_tokens, "trained_tokens": ex.num_trained,
                     "too_long": max_length is not None and ex.num_tokens > max_length})
    return rows


def _file(path, in_run) -> Path:
    """`path` itself, or the file `in_run(RunDir)` names when `path` is a run directory."""
    from .rundir import RunDir

    path = Path(path)
    return in_run(RunDir(path)) if path.is_dir() else path


def read_metrics(path) -> list[dict]:
    """The training metrics of a run directory (or of a metrics.jsonl file), in order."""
    path = _file(path, lambda run: run.metrics_path)
    if not path.exists():
        raise PromptDistillError("no training metrics (train the student first)", path=path)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                break  # a last line torn by an interrupted run
            raise PromptDistillError("corrupt metrics line", path=path, line=n) from None
    return rows


def load_report(path) -> dict:
    """The evaluation report of a run directory (or of a report.json file)."""
    path = _file(path, lambda run: run.report_path)
    if not path.exists():
        raise PromptDistillError("no evaluation report (run the eval stage first)", path=path)
    return json.loads(path.read_text(encoding="utf-8"))
