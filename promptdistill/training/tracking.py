"""Optional experiment tracking: training and evaluation metrics mirrored to a tracker.

Every training step is always written to `train/metrics.jsonl`. With
`train.report_to = "tensorboard"` (or `--report-to tensorboard`) the same
numbers also go to an experiment tracker, through accelerate's tracker
classes (accelerate is already a dependency; the tracker's own package is
installed on its own: `pip install tensorboard`, or `pip install wandb`).
TensorBoard event files go to `RUN/train/tensorboard/`:

    tensorboard --logdir runs/language_id/train/tensorboard

Names: `train/loss`, `train/lr`, `train/tokens_per_s`, ... per step, and
`heldout/loss` at each held-out evaluation.

Trackers: `tensorboard`, `wandb`, `mlflow` (a local file store in
`RUN/train/mlflow/` unless MLFLOW_TRACKING_URI names a server) and `trackio`
(its local dashboard: `trackio show`). The `eval` stage logs its headline
numbers to the same tracker under the same run name (`log_eval_metrics`):
`eval/agreement`, `eval/kl_gap_closed` and `eval/general_ability_change`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import PromptDistillError

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
# Trackers whose accelerate class takes the logging folder although it does not require one (a file store).
_LOCAL_STORE = {"mlflow"}


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

    def log_values(self, values: dict, step: int | None = None) -> None:
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
            f"train.report_to = {report_to!r} needs the {package} package (the extra promptdistill[{report_to}]): "
            f"pip install {package}",
            field="train.report_to",
        )
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[report_to]
    logging_dir = Path(run_dir) / report_to
    tracker = cls(run_name, logging_dir) if cls.requires_logging_directory or report_to in _LOCAL_STORE else cls(run_name)
    tracker.start()
    # Hyperparameters must be scalars or strings for TensorBoard's hparams.
    settings = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in dataclasses.asdict(train_cfg).items()}
    tracker.store_init_configuration(settings)
    return Tracker(tracker)


def eval_metrics(report: dict) -> dict:
    """The evaluation's headline numbers (those the report has) under tracker names."""
    student = (report.get("systems") or {}).get("student") or {}
    general = report.get("general_ability") or {}
    values = {
        "eval/agreement": student.get("agreement"),
        "eval/kl_gap_closed": (report.get("fidelity") or {}).get("gap_closed"),
        "eval/general_ability_change": (None if general.get("student_score") is None or general.get("base_score") is None
                                        else general["student_score"] - general["base_score"]),
    }
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_eval_metrics(report_to: str, run_dir, train_cfg, report: dict, step: int | None = None) -> dict:
    """Log the evaluation's headline numbers to the tracker training used (nothing for "none"); return them."""
    tracker = open_tracker(report_to, run_dir, train_cfg)
    if tracker is None:
        return {}
    values = eval_metrics(report)
    if values:
        tracker.log_values(values, step=step)
    tracker.finish()
    return values
