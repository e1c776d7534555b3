"""TensorBoard tracking: `--report-to tensorboard` writes an event file with
the per-step training loss, and turning tracking on does not invalidate a run."""

from __future__ import annotations

import json

import pytest


def test_train_report_to_tensorboard_writes_loss_events(tmp_path, tiny_model_dir, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from promptdistill.cli import main
    from promptdistill.records import LabeledExample

    records = [LabeledExample(id=str(i), text=t, gold_label=None, teacher_reply="Final Answer: x", label="x", status="ok",
                              messages=[{"role": "user", "content": t}, {"role": "assistant", "content": "Final Answer: x"}])
               for i, t in enumerate(["one", "two", "three", "four"])]
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    task = tmp_path / "task.toml"
    task.write_text(f'[task]\nsystem_prompt = "p"\n[models]\nteacher = "{tiny_model_dir}"\nstudent = "{tiny_model_dir}"\n'
                    'device = "cpu"\n[train]\nlora_rank = 2\nmax_steps = 3\nbatch_size = 2\neval_every = 2\nsave_every = 3\n')
    run = tmp_path / "run"
    argv = ["train", str(task), "--labeled", str(labeled), "--heldout", str(labeled), "--run-dir", str(run), "--no-progress"]
    assert main(argv + ["--report-to", "tensorboard"]) == 0

    events = list((run / "train" / "tensorboard").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent)).Reload()
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    logged = [(m["step"], m["loss"]) for m in map(json.loads, (run / "train" / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
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
