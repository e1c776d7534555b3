"""Trackers: every accelerate tracker named in train.report_to is opened the same way, the missing
package is named with its install line, and the evaluation's headline numbers reach the tracker.

The tracker is a tiny accelerate GeneralTracker standing in for MLflow (mlflow itself is a large
install and is not a test dependency): what is checked is promptdistill's side of the interface."""

from __future__ import annotations

import pytest


class FakeTracker:
    """Records what promptdistill sends, through accelerate's GeneralTracker interface."""

    runs: list = []

    def __init__(self, run_name, logging_dir=None):
        from accelerate.tracking import GeneralTracker

        assert issubclass(type(self), GeneralTracker)
        self.run_name, self.logging_dir, self.logged, self.config, self.finished = run_name, logging_dir, [], None, False
        FakeTracker.runs.append(self)

    def start(self):
        pass

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.logged.append((values, step))

    def finish(self):
        self.finished = True


@pytest.fixture()
def fake_mlflow(monkeypatch):
    import importlib.util

    from accelerate import tracking
    from accelerate.tracking import GeneralTracker

    cls = type("FakeMLflow", (FakeTracker, GeneralTracker), {"name": "mlflow", "requires_logging_directory": False,
                                                              "tracker": property(lambda self: self)})
    monkeypatch.setitem(tracking.LOGGER_TYPE_TO_CLASS, "mlflow", cls)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "mlflow" else real(name, *a))
    FakeTracker.runs = []
    return FakeTracker.runs


def test_config_accepts_mlflow_and_trackio():
    from promptdistill.config import REPORT_TO

    assert {"mlflow", "trackio"} <= set(REPORT_TO)


def test_missing_tracker_package_names_the_install(monkeypatch, tmp_path):
    import importlib.util

    from promptdistill.config import TrainConfig
    from promptdistill.errors import PromptDistillError
    from promptdistill.training.tracking import open_tracker

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    with pytest.raises(PromptDistillError, match=r"pip install trackio .*promptdistill\[trackio\]"):
        open_tracker("trackio", tmp_path, TrainConfig(report_to="trackio"))


def test_training_and_eval_metrics_reach_the_tracker(fake_mlflow, tmp_path):
    from promptdistill.config import TrainConfig
    from promptdistill.training.tracking import log_eval_metrics, open_tracker

    cfg = TrainConfig(report_to="mlflow")
    tracker = open_tracker("mlflow", tmp_path, cfg)
    tracker.log({"step": 3, "loss": 0.5, "heldout_loss": 0.7, "note": "x"})
    tracker.finish()
    (train,) = fake_mlflow
    assert train.logging_dir == tmp_path / "mlflow"  # MLflow's local file store inside the run
    assert train.logged == [({"train/loss": 0.5, "heldout/loss": 0.7}, 3)] and train.finished
    assert train.config["report_to"] == "mlflow"

    report = {"systems": {"student": {"agreement": 0.875}}, "fidelity": {"gap_closed": 0.734},
              "general_ability": {"base_score": 0.6, "student_score": 0.55}}
    values = log_eval_metrics("mlflow", tmp_path, cfg, report)
    _, evaluation = fake_mlflow
    assert evaluation.run_name == train.run_name  # the same run name as training's
    ((logged, _),) = evaluation.logged
    assert logged == values
    assert logged["eval/agreement"] == 0.875 and logged["eval/kl_gap_closed"] == 0.734
    assert logged["eval/general_ability_change"] == pytest.approx(-0.05)
    assert log_eval_metrics("none", tmp_path, cfg, report) == {}
