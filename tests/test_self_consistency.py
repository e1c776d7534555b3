"""Self-consistency voting, confidence thresholds and per-input sampling seeds."""

from __future__ import annotations

import json
import math

import pytest

from promptdistill.config import TaskConfig, config_from_dict
from promptdistill.errors import PromptDistillError
from promptdistill.records import Example
from promptdistill.task import Task
from promptdistill.labeling import label_inputs

from test_prefix_reuse import LABELS, TEXTS, make_task


def open_task(**overrides) -> Task:
    # The random model never writes "Final Answer:", so read its first word as the label.
    return Task(TaskConfig(user_template="Say one word about:\n{text}", answer_pattern=r"^\s*(\S+)", answer_template="{label}",
                           max_new_tokens=3, **overrides))


def _all_records(out):
    rows = []
    for path in (out, out.with_name(out.stem + ".rejects.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda r: int(r["id"]))


def _examples():
    return [Example(id=str(i), text=t) for i, t in enumerate(TEXTS)]


def test_majority_vote_and_share(varied_model, tmp_path):
    task = open_task(samples=5, temperature=1.5)
    label_inputs(_examples(), task, varied_model, tmp_path / "a.jsonl", progress=False)
    records = _all_records(tmp_path / "a.jsonl")
    assert len(records) == len(TEXTS)
    saw_disagreement = False
    for r in records:
        votes = r["votes"]
        assert sum(votes.values()) == 5  # every sample parses to a first word
        top = max(votes.values())
        assert votes[r["label"]] == top
        assert r["confidence"] == pytest.approx(top / 5)
        assert r["teacher_reply"].split()[0] == r["label"]
        saw_disagreement |= len(votes) > 1
    assert saw_disagreement, "temperature 1.5 on a random model should make samples disagree somewhere"


def test_sampled_labels_do_not_depend_on_batching_or_prefix_reuse(varied_model, tmp_path):
    task = open_task(samples=3, temperature=1.0)
    runs = []
    for name, kwargs in {"b1": dict(batch_size=1), "b4": dict(batch_size=4), "whole": dict(batch_size=4, reuse_prefix=False)}.items():
        label_inputs(_examples(), task, varied_model, tmp_path / f"{name}.jsonl", progress=False, **kwargs)
        runs.append([(r["id"], r["teacher_reply"], r["votes"]) for r in _all_records(tmp_path / f"{name}.jsonl")])
    assert runs[0] == runs[1] == runs[2]


def test_low_vote_share_goes_to_rejects(varied_model, tmp_path):
    task = open_task(samples=5, temperature=1.5, min_confidence=0.99)
    out = tmp_path / "c.jsonl"
    summary = label_inputs(_examples(), task, varied_model, out, progress=False)
    records = _all_records(out)
    assert len(records) == len(TEXTS)  # nothing dropped
    for r in records:
        if r["confidence"] < 0.99:
            assert r["status"] == "low_confidence"
            assert len(r["messages"]) == 1  # no assistant target for a rejected input
        else:
            assert r["status"] == "ok"
    assert summary["by_status"].get("low_confidence", 0) == sum(r["status"] == "low_confidence" for r in records) > 0


def test_choose_mode_confidence_and_entropy(varied_model, tmp_path):
    task = make_task(answer_mode="choose", min_confidence=0.5)
    out = tmp_path / "d.jsonl"
    label_inputs(_examples(), task, varied_model, out, progress=False)
    records = _all_records(out)
    assert len(records) == len(TEXTS)
    for r in records:
        probs = r["label_probs"]
        assert r["confidence"] == pytest.approx(max(probs.values()))
        assert r["entropy"] == pytest.approx(-sum(p * math.log(p) for p in probs.values() if p > 0))
        assert r["label"] == max(probs, key=probs.get)
        assert r["status"] == ("ok" if r["confidence"] >= 0.5 else "low_confidence")


@pytest.mark.parametrize(
    "task, field",
    [
        ({"samples": 3}, "task.samples"),  # greedy samples are all the same
        ({"samples": 0, "temperature": 1.0}, "task.samples"),
        ({"samples": 3, "temperature": 1.0, "answer_mode": "choose", "labels": LABELS}, "task.samples"),
        ({"min_confidence": 1.5}, "task.min_confidence"),
    ],
)
def test_bad_self_consistency_settings_refused(task, field):
    with pytest.raises(PromptDistillError) as err:
        config_from_dict({"task": {"user_template": "{text}", **task}})
    assert err.value.field == field
