"""`promptdistill run` end to end on the packaged SmolLM2-135M-Instruct (CPU, a few minutes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

TASK = Path(__file__).resolve().parent.parent / "examples" / "language_id" / "task.toml"


@pytest.mark.slow
def test_run_language_id_on_smollm2(tmp_path, capsys):
    from promptdistill.cli import main

    run_dir = tmp_path / "run"
    code = main([
        "run", str(TASK),
        "--set", "data.limit=26",
        "--set", "train.max_steps=3",
        "--set", "train.batch_size=8",
        "--set", "eval.max_examples=4",
        "--run-dir", str(run_dir),
        "--no-progress",
    ])
    out = capsys.readouterr().out
    assert code == 0, out

    # the three-way table printed at the end
    for name in ("teacher", "base", "student"):
        assert re.search(rf"^{name}\s+(yes|no)\s", out, re.M), out
    assert re.search(r"^teacher\s+yes\s", out, re.M)
    assert re.search(r"^student\s+no\s", out, re.M)

    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["limit"] == 26 and config["train"]["max_steps"] == 3

    train = (run_dir / "split" / "train.jsonl").read_text().splitlines()
    heldout = (run_dir / "split" / "heldout.jsonl").read_text().splitlines()
    assert len(train) + len(heldout) == 26

    steps = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps if "loss" in m] == [1, 2, 3]
    assert (run_dir / "train" / "adapter" / "adapter_model.safetensors").exists()

    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["n_examples"] == 4
    systems = report["systems"]
    assert list(systems) == ["teacher", "base", "student"]
    teacher, student = systems["teacher"], systems["student"]
    assert teacher["parse_rate"] == 1.0  # choose mode always yields a label
    assert teacher["agreement"] == 1.0
    assert teacher["mean_prompt_tokens"] > 400  # the long prompt
    assert student["mean_prompt_tokens"] < 150  # the bare input
    assert systems["base"]["mean_prompt_tokens"] == student["mean_prompt_tokens"]
    preds = (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 3 * 4
