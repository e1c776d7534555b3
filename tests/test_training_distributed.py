"""`torchrun --nproc_per_node 2 -m promptdistill train` on CPU (gloo): two processes
train the adapter one process trains, only the main process writes, and a
two-process run resumes from its checkpoint.

Tolerance: the two processes each sum half of a step's per-token losses and
their gradients are then added, so the float32 sums are rounded in another
order than in one process; that is all that differs. Adapters agree to
atol=1e-5 (rtol=1e-4) after 4 AdamW steps at lr 1e-2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import read_jsonl, script_records, write_jsonl, write_task_file

REPO = Path(__file__).resolve().parents[1]


def _task_file(folder: Path, model_dir: str) -> Path:
    # dropout 0: with dropout the processes draw their masks from other random streams
    return write_task_file(
        folder, model_dir,
        task=dict(name="script_id", user_template="Which script? {text}", labels=["la", "cy"], answer_mode="choose"),
        train=dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2, lr_schedule="cosine", warmup_steps=1,
                   max_steps=4, batch_size=2, grad_accum=3, eval_every=2, save_every=2, seed=3),
    )


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "promptdistill", "train", *args, "--no-progress"]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _adapter(run: Path) -> dict:
    return load_file(str(run / "train" / "adapter" / "adapter_model.safetensors"))


def _metrics(run: Path) -> list[dict]:
    return read_jsonl(run / "train" / "metrics.jsonl")


def _assert_same_adapter(want: dict, got: dict) -> None:
    assert want.keys() == got.keys()
    for key in want:
        assert torch.allclose(want[key], got[key], atol=1e-5, rtol=1e-4), (key, (want[key] - got[key]).abs().max())


@pytest.mark.slow
def test_two_processes_train_the_one_process_adapter_and_resume(tmp_path, tiny_model_dir):
    from promptdistill.cli import main

    task = _task_file(tmp_path, tiny_model_dir)
    # 21 examples, 6 per step: the last group of the epoch (3) splits unevenly over 2 processes
    labeled = write_jsonl(tmp_path / "train.jsonl", [r.to_json() for r in script_records(21)])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [r.to_json() for r in script_records(5, offset=100)])
    args = [str(task), "--labeled", str(labeled), "--heldout", str(heldout)]

    one = tmp_path / "one"
    assert main(["train", *args, "--run-dir", str(one), "--no-progress"]) == 0
    two = tmp_path / "two"
    done = _torchrun([*args, "--run-dir", str(two)], tmp_path)

    # The summary is printed once (by the main process) and says two processes trained.
    assert done.stdout.count('"final_loss"') == 1
    summary = json.loads((two / "train" / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
    _assert_same_adapter(_adapter(one), _adapter(two))
    # One metrics line per step and evaluation (no process wrote twice), same values.
    m1, m2 = _metrics(one), _metrics(two)
    assert [sorted(r) for r in m1] == [sorted(r) for r in m2]
    for a, b in zip(m1, m2):
        for key in ("loss", "heldout_loss", "trained_tokens", "examples"):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a, b)
    assert sorted(p.name for p in (two / "train" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]

    # Resume in two-process mode: a run that stopped after its step-2 checkpoint.
    resumed = tmp_path / "resumed"
    (resumed / "train" / "checkpoints").mkdir(parents=True)
    shutil.copy(two / "config.json", resumed / "config.json")  # `train` writes it before it trains
    shutil.copytree(two / "train" / "checkpoints" / "step-000002", resumed / "train" / "checkpoints" / "step-000002")
    write_jsonl(resumed / "train" / "metrics.jsonl", [m for m in m2 if m["step"] <= 2])
    done = _torchrun([*args, "--run-dir", str(resumed)], tmp_path)
    assert done.stdout.count("resuming training from") == 1  # printed by the main process only
    _assert_same_adapter(_adapter(two), _adapter(resumed))
    assert len(_metrics(resumed)) == len(m2)


# A launcher whose processes see different files: rank 1 gets its own --labeled
# (or --run-dir), as two machines with unshared disks would. Only the command line
# differs; nothing in promptdistill knows it is being tested.
_PER_RANK = """
import os, sys
from promptdistill.cli import main
rank = os.environ["RANK"]
args = [a.replace("RANK", rank) for a in sys.argv[1:]]
sys.exit(main(args))
"""


def _torchrun_per_rank(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    wrapper = cwd / "per_rank.py"
    wrapper.write_text(_PER_RANK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(wrapper),
           "train", *args, "--no-progress"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_processes_that_read_different_labels_stop_with_one_line(tmp_path, tiny_model_dir):
    task = _task_file(tmp_path, tiny_model_dir)
    write_jsonl(tmp_path / "train-0.jsonl", [r.to_json() for r in script_records(12)])
    write_jsonl(tmp_path / "train-1.jsonl", [r.to_json() for r in script_records(12, offset=1)])
    run = tmp_path / "run"
    done = _torchrun_per_rank([str(task), "--labeled", str(tmp_path / "train-RANK.jsonl"), "--run-dir", str(run)], tmp_path)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("disagree on their data or settings with process 0 (process 1: labeled records)" in e for e in errors), \
        done.stderr[-3000:]
    assert "Traceback" not in done.stderr.split("error:")[0]  # the processes stopped on the check, not in a collective
    assert not (run / "train" / "adapter").exists() and not (run / "train" / "checkpoints").exists()


@pytest.mark.slow
def test_processes_that_do_not_share_the_run_folder_stop_with_one_line(tmp_path, tiny_model_dir):
    task = _task_file(tmp_path, tiny_model_dir)
    labeled = write_jsonl(tmp_path / "train.jsonl", [r.to_json() for r in script_records(12)])
    done = _torchrun_per_rank([str(task), "--labeled", str(labeled), "--run-dir", str(tmp_path / "run-RANK")], tmp_path)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors and all("process 1 of 2 cannot see what process 0 wrote into the run folder" in e
                          and "shared file system" in e for e in errors), done.stderr[-3000:]
    for run in ("run-0", "run-1"):
        assert not (tmp_path / run / "train" / "adapter").exists()
        assert not [p for p in (tmp_path / run / "train").glob(".*") if "shared-check" in p.name]  # the token is removed


def _tree(root: Path) -> dict:
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def _one_error_line(done: subprocess.CompletedProcess, words: str) -> None:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and errors and all(words in e for e in errors), done.stderr[-3000:]
    assert "Traceback" not in done.stderr.split("error:")[0], done.stderr[-3000:]


@pytest.mark.slow
def test_train_force_under_two_processes_agrees_before_anything_is_discarded(tmp_path, tiny_model_dir):
    """`train --force` over a trained run under torchrun: processes that read different
    labels stop with one line before --force discards anything (the run hashes the same);
    without --force other data is refused by every process alike; with the same labels
    on both, --force retrains once and the run records the new training."""
    from promptdistill.cli import main
    from promptdistill.io import fingerprint

    task = _task_file(tmp_path, tiny_model_dir)
    write_jsonl(tmp_path / "train-0.jsonl", [r.to_json() for r in script_records(12)])
    write_jsonl(tmp_path / "train-1.jsonl", [r.to_json() for r in script_records(12, offset=1)])
    run = tmp_path / "run"
    assert main(["train", str(task), "--labeled", str(tmp_path / "train-0.jsonl"), "--run-dir", str(run), "--no-progress"]) == 0
    trained = _tree(run)

    differ = _torchrun_per_rank([str(task), "--labeled", str(tmp_path / "train-RANK.jsonl"), "--run-dir", str(run), "--force"], tmp_path)
    _one_error_line(differ, "disagree on their data or settings with process 0 (process 1: labeled records)")
    assert _tree(run) == trained  # nothing discarded, nothing written

    other = [str(task), "--labeled", str(tmp_path / "train-1.jsonl"), "--run-dir", str(run)]
    refused = _torchrun_per_rank(other, tmp_path)
    _one_error_line(refused, "this run was already trained with different settings (records)")
    assert _tree(run) == trained

    forced = _torchrun_per_rank([*other, "--force"], tmp_path)
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    assert forced.stdout.count('"final_loss"') == 1
    marker = json.loads((run / "stages" / "train.json").read_text())
    from promptdistill.records import read_labeled

    assert marker["settings"]["records"] == fingerprint([[r.id, r.status, r.messages] for r in read_labeled(tmp_path / "train-1.jsonl")])
    assert json.loads((run / "train" / "train_summary.json").read_text())["processes"] == 2
