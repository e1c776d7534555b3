"""TensorBoard tracking: `--report-to tensorboard` writes an event file with
the per-step training loss, and turning tracking on does not invalidate a run."""

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


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb"])
def test_missing_tracker_package_names_the_pip_command(tracker, tmp_path, monkeypatch):
    """The hint is a command that installs the package (there is no `wandb` extra to point to)."""
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
    assert not any(tmp_path.iterdir())
