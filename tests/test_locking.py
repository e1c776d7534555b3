"""Two processes writing the same run directory or labels file are refused, not interleaved."""

from __future__ import annotations

import pytest

from promptdistill.config import config_from_dict
from promptdistill.errors import PromptDistillError
from promptdistill.io import DirectoryLock
from promptdistill.pipeline import run_pipeline


def test_lock_is_exclusive_and_released(tmp_path):
    lock = tmp_path / ".lock"
    with DirectoryLock(lock, "this run directory"):
        with pytest.raises(PromptDistillError, match=r"another promptdistill process \(pid \d+\) is writing this run directory"):
            with DirectoryLock(lock, "this run directory"):
                pass
    with DirectoryLock(lock, "this run directory"):  # free again once released
        pass


def test_run_refused_while_another_process_holds_the_run_directory(tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text("a\nb\n", encoding="utf-8")
    cfg = config_from_dict({"task": {"user_template": "{text}"}, "data": {"inputs": str(inputs)}})
    run = tmp_path / "run"
    with DirectoryLock(run / ".lock", "this run directory"):
        with pytest.raises(PromptDistillError, match="another promptdistill process"):
            run_pipeline(cfg, run, progress=False, log=lambda *_: None)
    assert not (run / "config.json").exists()
    assert not (run / "split").exists()
