"""`promptdistill train` killed mid-run (SIGKILL, SIGINT) resumes to the adapter an uninterrupted run gives."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

STEPS = 40


def _setup(tmp_path: Path, model_dir: str) -> tuple[Path, Path]:
    labeled = tmp_path / "labeled.jsonl"
    rows = []
    for i in range(48):
        label = ["la", "cy"][i % 2]
        text = f"item {i} " + ("some latin words" if label == "la" else "кириллица тут")
        reply = f"Final Answer: {label}"
        rows.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": reply}],
                     "id": str(i), "text": text, "gold_label": label, "teacher_reply": reply, "label": label, "status": "ok"})
    labeled.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task = tmp_path / "task.toml"
    task.write_text(
        f"""
[task]
user_template = "{{text}}"
labels = ["la", "cy"]
[models]
student = "{model_dir}"
teacher = "{model_dir}"
device = "cpu"
dtype = "float32"
[train]
lora_rank = 4
lora_dropout = 0.1
learning_rate = 1e-2
max_steps = {STEPS}
batch_size = 4
save_every = 3
eval_every = 1000
seed = 3
""",
        encoding="utf-8",
    )
    return task, labeled


def _cmd(task, labeled, run):
    return [sys.executable, "-m", "promptdistill", "train", str(task), "--labeled", str(labeled), "--run-dir", str(run), "--no-progress"]


def _adapter(run: Path) -> dict:
    return load_file(str(run / "train" / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_train_resumes_to_uninterrupted_adapter(tmp_path, tiny_model_dir, sig):
    task, labeled = _setup(tmp_path, tiny_model_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_cmd(task, labeled, reference), check=True, capture_output=True, env=env)

    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(task, labeled, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
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

    resumed = subprocess.run(_cmd(task, labeled, run), check=True, capture_output=True, text=True, env=env)
    assert "resuming training from" in resumed.stdout
    want, got = _adapter(reference), _adapter(run)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
