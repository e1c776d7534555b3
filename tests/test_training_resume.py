"""Resuming training (recipe._resume, checkpoint.py): `promptdistill train` killed
mid-run (SIGKILL) or stopped (SIGINT) resumes to the adapter and the metrics an
uninterrupted run gives; checkpoints made with other settings are not resumed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import read_jsonl, script_records, write_jsonl, write_task_file

STEPS = 40


def _adapter(train_dir: Path) -> dict:
    return load_file(str(train_dir / "adapter" / "adapter_model.safetensors"))


def _metrics(train_dir: Path) -> list[dict]:
    rows = read_jsonl(train_dir / "metrics.jsonl")
    for r in rows:
        r.pop("tokens_per_s", None)  # wall-clock
    return rows


def _cmd(task, labeled, heldout, run):
    return [sys.executable, "-m", "promptdistill", "train", str(task), "--labeled", str(labeled), "--heldout", str(heldout),
            "--run-dir", str(run), "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_train_resumes_to_uninterrupted_adapter(tmp_path, tiny_model_dir, sig):
    # dropout > 0 so that restoring the random-number state matters; warmup and a
    # cosine schedule so that restoring the scheduler does
    task = write_task_file(tmp_path, tiny_model_dir, task=dict(user_template="{text}", labels=["la", "cy"]),
                           train=dict(lora_rank=4, lora_dropout=0.1, learning_rate=1e-2, lr_schedule="cosine", warmup_steps=2,
                                      max_steps=STEPS, batch_size=2, grad_accum=2, save_every=3, eval_every=5, seed=3))
    labeled = write_jsonl(tmp_path / "labeled.jsonl", [r.to_json() for r in script_records(48)])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [r.to_json() for r in script_records(6, offset=100)])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_cmd(task, labeled, heldout, reference), check=True, capture_output=True, env=env)

    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(task, labeled, heldout, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    marker = run / "train" / "checkpoints" / "step-000006" / "trainer_state.json"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "training finished before it could be interrupted; raise STEPS"
    proc.send_signal(sig)
    stdout, _ = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        # a clean stop: the step in progress finishes and is checkpointed
        assert proc.returncode == 130
        match = re.search(rb"stopped after step (\d+)", stdout)
        assert match, stdout
        assert (run / "train" / "checkpoints" / f"step-{int(match.group(1)):06d}" / "trainer_state.json").exists()
    assert not (run / "train" / "adapter").exists()

    resumed = subprocess.run(_cmd(task, labeled, heldout, run), check=True, capture_output=True, text=True, env=env)
    assert "resuming training from" in resumed.stdout
    want, got = _adapter(reference / "train"), _adapter(run / "train")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert _metrics(run / "train") == _metrics(reference / "train")  # steps after the checkpoint were redone, once


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path, tiny_model_dir, capsys):
    from promptdistill.config import Config, ModelsConfig, TrainConfig
    from promptdistill.training.recipe import train_student

    records = script_records(12)
    cfg = Config(train=TrainConfig(lora_rank=4, lora_alpha=8, learning_rate=1e-2, max_steps=2, batch_size=4, seed=7),
                 models=ModelsConfig(student=tiny_model_dir, teacher=tiny_model_dir, device="cpu", dtype="float32"))
    run = tmp_path / "run"
    train_student(cfg, records, run, progress=False)
    other = replace(cfg, train=replace(cfg.train, learning_rate=5e-3))
    train_student(other, records, run, progress=False)
    out = capsys.readouterr().out
    assert "starting over" in out and "(train.learning_rate)" in out  # the one setting that changed, named
    train_student(other, records, tmp_path / "fresh", progress=False)
    a, b = _adapter(run), _adapter(tmp_path / "fresh")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(run) == _metrics(tmp_path / "fresh")  # the old run's metric lines went with its checkpoints
