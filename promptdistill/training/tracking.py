"""Optional experiment tracking: training metrics mirrored to TensorBoard or Weights & Biases.

Every training step is always written to `train/metrics.jsonl`. With
`train.report_to = "tensorboard"` (or `--report-to tensorboard`) the same
numbers also go to an experiment tracker, through accelerate's tracker
classes (accelerate is already a dependency; the tracker's own package is
installed on its own: `pip install tensorboard`, or `pip install wandb`).
TensorBoard event files go to `RUN/train/tensorboard/`:

    tensorboard --logdir runs/language_id/train/tensorboard

Names: `train/loss`, `train/lr`, `train/tokens_per_s`, ... per step, and
`heldout/loss` at each held-out evaluation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import PromptDistillError

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class Tracker:
    """Forwards metrics records (the dicts written to metrics.jsonl) to an accelerate tracker."""

    def __init__(self, tracker):
        self._tracker = tracker

    def log(self, record: dict) -> None:
        step = record.get("step")
        values = {}
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            values["heldout/loss" if key == "heldout_loss" else f"train/{key}"] = value
        if values:
            self._tracker.log(values, step=step)

    def finish(self) -> None:
        self._tracker.finish()


def open_tracker(report_to: str, run_dir, train_cfg, run_name: str = "student") -> Tracker | None:
    """A started tracker for `report_to` (None for "none"), with the training settings stored as hyperparameters."""
    if report_to == "none":
        return None
    import importlib.util

    package = _PACKAGES.get(report_to, report_to)
    if importlib.util.find_spec(package) is None:
        raise PromptDistillError(
            f"train.report_to = {report_to!r} needs the {package} package: pip install {package}",
            field="train.report_to",
        )
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[report_to]
    logging_dir = Path(run_dir) / report_to
    tracker = cls(run_name, logging_dir) if cls.requires_logging_directory else cls(run_name)
    tracker.start()
    # Hyperparameters must be scalars or strings for TensorBoard's hparams.
    settings = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in dataclasses.asdict(train_cfg).items()}
    tracker.store_init_configuration(settings)
    return Tracker(tracker)
