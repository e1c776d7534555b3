"""The free-form JSON example through the whole pipeline, on tiny random models.

A random tiny model cannot write JSON, so the teacher is given a reply prefix
that is already a complete object (the prefill mechanism real tasks use to
start the teacher's reply): every teacher reply is then valid and becomes the
student's target. The student trains a few steps (far too few to learn a
50-token object; learning is tested in test_training_learns.py), and the report
must carry validity, exact agreement and per-field agreement for each system,
consistent with the predictions it was computed from.
"""

from __future__ import annotations

import pytest

import json
from pathlib import Path

from promptdistill.config import config_from_dict, load_config
from promptdistill.evaluation.report import results_table

EXAMPLE = Path(__file__).parent.parent / "examples" / "support_ticket"
OBJECT = {"category": "billing", "priority": "high", "product": "drive", "sentiment": "negative", "language": "en",
          "summary": "Refund the duplicate charge"}


@pytest.mark.slow  # a whole pipeline run
def test_support_tickets_report_json_agreement(tmp_path, tiny_model_dir):
    from promptdistill.pipeline import run_pipeline

    raw = load_config(EXAMPLE / "task.toml").to_dict()
    assert raw["task"]["json_fields"] == list(OBJECT)
    lines = (EXAMPLE / "data.jsonl").read_text(encoding="utf-8").splitlines()[:16]
    (tmp_path / "tickets.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw["task"].update(reply_prefix=json.dumps(OBJECT), max_new_tokens=6)
    raw["data"].update(inputs="tickets.jsonl", heldout_fraction=0.25)
    raw["models"].update(teacher=tiny_model_dir, student=tiny_model_dir, device="cpu", dtype="float32")
    raw["train"].update(lora_rank=4, lora_alpha=8, learning_rate=1e-3, lr_schedule="constant", warmup_steps=0, max_steps=3,
                        batch_size=4, eval_every=3, save_every=3, max_length=256)
    raw["eval"].update(max_examples=0)
    cfg = config_from_dict(raw)
    cfg.base_dir = tmp_path
    report = run_pipeline(cfg, tmp_path / "run", progress=False, log=lambda m: None)

    labeled = [json.loads(x) for x in (tmp_path / "run" / "labels" / "train.jsonl").read_text().splitlines()]
    assert len(labeled) == 12 and all(r["status"] == "ok" for r in labeled)
    assert json.loads(labeled[0]["messages"][-1]["content"]) == OBJECT

    systems = report["systems"]
    assert set(systems) == {"teacher", "base", "student"}
    for m in systems.values():
        assert set(m["json"]) == {"validity", "exact_agreement", "field_agreement", "mean_field_agreement"}
        assert set(m["json"]["field_agreement"]) == set(OBJECT)
    assert systems["teacher"]["json"]["validity"] == 1.0 and systems["teacher"]["json"]["exact_agreement"] == 1.0
    assert systems["teacher"]["json"]["field_agreement"] == {f: 1.0 for f in OBJECT}
    # the metrics are those of the predictions: random weights without the prompt never write the object
    preds = [json.loads(x) for x in (tmp_path / "run" / "eval" / "predictions.jsonl").read_text().splitlines()]
    for name in ("base", "student"):
        mine = [p for p in preds if p["system"] == name]
        assert len(mine) == 4
        assert systems[name]["json"]["validity"] == sum(p["status"] == "ok" for p in mine) / 4 == 0.0
        assert systems[name]["json"]["exact_agreement"] == 0.0
        assert systems[name]["json"]["field_agreement"] == {f: 0.0 for f in OBJECT}
        assert {p["status"] for p in mine} <= {"invalid_json", "missing_fields"}

    md = (tmp_path / "run" / "eval" / "report.md").read_text()
    assert "## JSON replies" in md and "| teacher | 100.0% | 100.0% | 100.0% | 100.0% |" in md
    assert "| student | 0.0% | 0.0% | 0.0% |" in md
    assert "exact agreement" in results_table(report)
