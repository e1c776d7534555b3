"""Tracking: `--report-to tensorboard` writes an event file with the per-step training
loss, and turning tracking on does not invalidate a run; every accelerate tracker named in
train.report_to is opened the same way, a missing package is named with its install line,
and the evaluation's headline numbers reach the tracker.

The other trackers are checked through a tiny accelerate GeneralTracker standing in for
MLflow (mlflow itself is a large install and is not a test dependency): what is checked is
promptdistill's side of the interface."""

from __future__ import annotations

import pytest

from conftest import read_jsonl, script_records, write_jsonl, write_task_file


def test_train_report_to_tensorboard_writes_loss_events(tmp_path, tiny_model_dir, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from promptdistill.cli import main

    labeled = write_jsonl(tmp_path / "labeled.jsonl", [r.to_json() for r in script_records(4)])
    task = write_task_file(tmp_path, tiny_model_dir, task=dict(system_prompt="p"),
                           train=dict(lora_rank=2, max_steps=3, batch_size=2, eval_every=2, save_every=3))
    run = tmp_path / "run"
    argv = ["train", str(task), "--labeled", str(labeled), "--heldout", str(labeled), "--run-dir", str(run), "--no-progress"]
    assert main(argv + ["--report-to", "tensorboard"]) == 0

    events = list((run / "train" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent)).Reload()
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    logged = [(m["step"], m["loss"]) for m in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in m]
    assert [s for s, _ in losses] == [1, 2, 3]
    assert [v for _, v in losses] == pytest.approx([v for _, v in logged], rel=1e-5)
    assert [e.step for e in acc.Scalars("heldout/loss")] == [2, 3]

    # the same training without the tracker reuses the finished checkpoint (same fingerprint)
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming training from" in out and "step 3 of 3" in out and "starting over" not in out


def test_report_to_is_validated(tmp_path):
    from promptdistill.config import load_config
    from promptdistill.errors import PromptDistillError

    p = tmp_path / "task.toml"
    p.write_text('[task]\nsystem_prompt = "p"\n[train]\nreport_to = "tensorbord"\n')
    with pytest.raises(PromptDistillError) as info:
        load_config(p)
    assert info.value.field == "train.report_to" and "tensorboard" in info.value.message


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "mlflow", "trackio"])
def test_missing_tracker_package_names_the_pip_command(tracker, tmp_path, monkeypatch):
    """The hint is a command that installs the package, and names the extra that holds it."""
    import importlib.util

    from promptdistill.config import TrainConfig
    from promptdistill.errors import PromptDistillError
    from promptdistill.training.tracking import open_tracker

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else find_spec(name, *a))
    with pytest.raises(PromptDistillError) as info:
        open_tracker(tracker, tmp_path, TrainConfig())
    assert info.value.field == "train.report_to"
    assert info.value.message.endswith(f"pip install {tracker}")
    assert f"promptdistill[{tracker}]" in info.value.message
    assert not any(tmp_path.iterdir())


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
