"""`promptdistill label` killed mid-run (SIGKILL or Ctrl-C) resumes to exactly the uninterrupted output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import default_sigint

N_INPUTS = 300


def _write_task(tmp_path: Path, model_dir: str) -> Path:
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("\n".join(f"input number {i} with some words {i * 7}" for i in range(N_INPUTS)) + "\n", encoding="utf-8")
    task = tmp_path / "task.toml"
    task.write_text(
        f"""
[task]
user_template = "Classify by script. Rules: latin is la, cyrillic is cy.\\nText: {{text}}"
labels = ["la", "cy"]
answer_mode = "choose"

[data]
inputs = "inputs.txt"

[models]
teacher = "{model_dir}"
device = "cpu"
dtype = "float32"
""",
        encoding="utf-8",
    )
    return task


def _label_cmd(task: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "promptdistill", "label", str(task), "--out", str(out), "--batch-size", "1", "--no-progress"]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _run_and_interrupt(cmd, out: Path, sig: int, after_lines: int) -> int:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)
    deadline = time.time() + 120
    while _lines(out) < after_lines and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "labeling finished before it could be interrupted; raise N_INPUTS"
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    return proc.returncode


@pytest.mark.slow  # two CLI processes per signal, 300 inputs each
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_interrupted_label_resumes_to_uninterrupted_output(tmp_path, tiny_model_dir, sig):
    task = _write_task(tmp_path, tiny_model_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference.jsonl"
    subprocess.run(_label_cmd(task, reference), check=True, capture_output=True, env=env)

    out = tmp_path / "interrupted.jsonl"
    code = _run_and_interrupt(_label_cmd(task, out), out, sig, after_lines=20)
    done_before = len(_records(out))
    assert 0 < done_before < N_INPUTS
    if sig != signal.SIGKILL:
        assert code == 130  # Ctrl-C and SIGTERM stop cleanly with a message, not a traceback
    subprocess.run(_label_cmd(task, out), check=True, capture_output=True, env=env)

    got, want = _records(out), _records(reference)
    assert [r["id"] for r in got] == [r["id"] for r in want]  # nothing lost, nothing duplicated, same order
    for g, w in zip(got, want):
        assert g["label"] == w["label"]
        assert g["label_probs"] == pytest.approx(w["label_probs"], abs=1e-6)
