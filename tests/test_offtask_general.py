"""Does the student stay itself: off-task inputs and the general-ability check.

The rules and the summaries against hand-computed values; then a whole run on
a tiny model with eval.offtask_inputs, whose report is recomputed from the
predictions it wrote; and the base scored against itself, where every
difference must be zero."""

from __future__ import annotations

import json
import math
import re

import pytest

from conftest import read_jsonl
from test_pipeline import LABELS, config_dict, make_config, write_inputs

from promptdistill.general import GeneralCheck, general_checks, general_prompts, passes


def check(match: str, answer: str) -> GeneralCheck:
    return GeneralCheck("t", "test", "prompt", match, answer)


@pytest.mark.parametrize("match, answer, reply, expected", [
    ("number", "12", "12", True),
    ("number", "12", "The answer is 12.", True),
    ("number", "12", "7 + 5 = 12", True),  # the result is the last number
    ("number", "12", "12 or 13", False),
    ("number", "12", "15 - 6 = 5", False),
    ("number", "12", "112", False),
    ("number", "12", "no number here", False),
    ("number", "4821", "4,821", True),
    ("word", "Paris", "The capital of France is paris.", True),
    ("word", "Paris", "Parisian food", False),
    ("word", "7|seven", "There are seven days.", True),
    ("exact", "YES", '"YES."', True),
    ("exact", "YES", "yes", False),  # case counts
    ("exact", "green apple", "green apple, of course", False),
    ("pattern", r"\W*blue\W*", "Blue!", True),
    ("pattern", r"\W*blue\W*", "The sky is blue", False),
])
def test_passes(match, answer, reply, expected):
    assert passes(check(match, answer), reply) is expected


def test_builtin_sets():
    checks, pool = general_checks(), general_prompts()
    assert len(checks) == 50 and len({c.id for c in checks}) == 50
    assert {c.kind for c in checks} == {"arithmetic", "fact", "format", "copy"}
    # the mix pool never holds a checked prompt: training on it would score the training data
    assert not {c.prompt for c in checks} & {text for _, text in pool}
    assert len(pool) >= 100 and len({i for i, _ in pool}) == len(pool)
    for c in checks:
        # every rule is satisfiable: the answer itself (a plain answer, not a regex) passes
        if c.match in ("number", "exact") or (c.match == "word" and c.answer.isalpha()):
            assert passes(c, c.answer), c


def test_general_summary_by_hand():
    from promptdistill.evaluation.general_ability import summarize

    rows = [
        {"id": "a", "kind": "x", "base_pass": True, "student_pass": True, "kl_base_student": 0.5},
        {"id": "b", "kind": "x", "base_pass": True, "student_pass": False, "kl_base_student": 1.5},
        {"id": "c", "kind": "y", "base_pass": False, "student_pass": True, "kl_base_student": None},
        {"id": "d", "kind": "y", "base_pass": True, "student_pass": False, "kl_base_student": 1.0},
    ]
    s = summarize(rows, max_drop=0.2)
    assert s["base_score"] == 0.75 and s["student_score"] == 0.5
    assert s["drop"] == 0.25 and s["flagged"] is True
    assert s["lost"] == ["b", "d"] and s["gained"] == ["c"]
    assert s["kl_base_student"] == pytest.approx(1.0)
    assert s["by_kind"] == {"x": {"n": 2, "base": 1.0, "student": 0.5}, "y": {"n": 2, "base": 0.5, "student": 0.5}}
    assert s["base_interval"][0] < 0.75 < s["base_interval"][1]
    assert summarize(rows, max_drop=0.25)["flagged"] is False  # at the threshold is not beyond it


def test_same_answer():
    from promptdistill.evaluation.offtask import same_answer
    from promptdistill.evaluation.systems import Prediction

    def p(label, reply, status):
        return Prediction("i", "s", label, reply, status, 1, None)

    assert same_answer(p("en", "Final Answer: en", "ok"), p("en", "Final Answer:en", "ok"))
    assert not same_answer(p("en", "Final Answer: en", "ok"), p("fr", "Final Answer: fr", "ok"))
    assert same_answer(p(None, "Hello  there!", "unparsed"), p(None, "Hello there!", "unparsed"))
    assert not same_answer(p(None, "Hello there!", "unparsed"), p(None, "Hi!", "unparsed"))
    assert not same_answer(p("en", "Final Answer: en", "ok"), p(None, "en", "unparsed"))


OFFTASK = ["hello there", "what time is it?", "def f(x): return x", "...", "12345", "Je pense que this is fine"]


@pytest.fixture(scope="module")
def offtask_run(tmp_path_factory, tiny_model_dir):
    from promptdistill.pipeline import run_pipeline

    base = tmp_path_factory.mktemp("offtask")
    write_inputs(base / "inputs.jsonl")
    (base / "offtask.jsonl").write_text("".join(json.dumps({"id": f"o{i}", "text": t}) + "\n" for i, t in enumerate(OFFTASK)))
    raw = config_dict(tiny_model_dir)
    raw["eval"].update(offtask_inputs="offtask.jsonl", general_max_drop=0.05)
    logs: list[str] = []
    report = run_pipeline(make_config(raw, base), base / "run", progress=False, log=logs.append)
    return {"run": base / "run", "report": report, "logs": logs, "base": base, "raw": raw}


def test_offtask_report_matches_its_predictions(offtask_run):
    run, report = offtask_run["run"], offtask_run["report"]
    off = report["offtask"]
    preds = read_jsonl(run / "eval" / "offtask_predictions.jsonl")
    by = {name: {p["id"]: p for p in preds if p["system"] == f"offtask_{name}"} for name in ("teacher", "base", "student")}
    ids = [f"o{i}" for i in range(len(OFFTASK))]
    assert off["n"] == len(OFFTASK) and all(set(by[n]) == set(ids) for n in by)
    # the held-out predictions are not mixed with the off-task ones
    assert not any(p["system"].startswith("offtask_") for p in read_jsonl(run / "eval" / "predictions.jsonl"))
    t, b, s = by["teacher"], by["base"], by["student"]
    assert off["in_format"]["teacher"] == 1.0  # choose mode always answers in format
    assert off["in_format"]["student"] == pytest.approx(sum(s[i]["status"] == "ok" for i in ids) / len(ids))
    assert off["student"]["agreement_teacher"] == pytest.approx(sum(s[i]["label"] == t[i]["label"] for i in ids) / len(ids))
    assert off["base"]["agreement_teacher"] == pytest.approx(sum(b[i]["label"] == t[i]["label"] for i in ids) / len(ids))

    def kl(p, q):
        return sum(p[k] * math.log(p[k] / q[k]) for k in LABELS if p[k] > 0)

    assert off["student"]["kl_teacher"] == pytest.approx(sum(kl(t[i]["label_probs"], s[i]["label_probs"]) for i in ids) / len(ids))
    assert off["student"]["kl_base"] == pytest.approx(sum(kl(b[i]["label_probs"], s[i]["label_probs"]) for i in ids) / len(ids))
    assert off["student"]["kl_base"] > 0  # the trained adapter moved the student
    md = (run / "eval" / "report.md").read_text()
    assert "## Off-task inputs" in md and "## General ability" in md
    assert re.search(r"^off-task \(6 inputs\): student agrees", "\n".join(offtask_run["logs"]), re.M)


def test_general_ability_in_the_run(offtask_run):
    run, report = offtask_run["run"], offtask_run["report"]
    g = report["general_ability"]
    rows = read_jsonl(run / "eval" / "general_ability.jsonl")
    assert g["n"] == len(rows) == 50
    assert g["base_score"] == pytest.approx(sum(r["base_pass"] for r in rows) / 50)
    assert g["student_score"] == pytest.approx(sum(r["student_pass"] for r in rows) / 50)
    checks = {c.id: c for c in general_checks()}
    for r in rows:  # each verdict is the rule applied to the stored reply
        assert r["base_pass"] == passes(checks[r["id"]], r["base_reply"])
        assert r["student_pass"] == passes(checks[r["id"]], r["student_reply"])
    kls = [r["kl_base_student"] for r in rows if r["kl_base_student"] is not None]
    assert kls and g["kl_base_student"] == pytest.approx(sum(kls) / len(kls)) and g["kl_base_student"] > 0
    assert g["max_drop"] == 0.05 and g["flagged"] == (g["drop"] > 0.05)


def test_general_ability_of_the_base_against_itself(tiny):
    from promptdistill.evaluation.general_ability import general_ability

    summary, rows = general_ability(tiny, tiny, max_drop=0.0, progress=False)
    assert summary["drop"] == 0 and not summary["flagged"] and summary["lost"] == summary["gained"] == []
    assert all(r["base_reply"] == r["student_reply"] for r in rows)
    assert summary["kl_base_student"] == pytest.approx(0.0, abs=1e-6)


def test_bad_offtask_file_refused_before_anything_is_written(tmp_path, tiny_model_dir):
    from promptdistill.errors import PromptDistillError
    from promptdistill.pipeline import run_pipeline

    write_inputs(tmp_path / "inputs.jsonl")
    (tmp_path / "offtask.jsonl").write_text('{"id": "a", "text": "hi"}\n{"id": "b", "text": \n')
    raw = config_dict(tiny_model_dir)
    raw["eval"]["offtask_inputs"] = "offtask.jsonl"
    with pytest.raises(PromptDistillError) as e:
        run_pipeline(make_config(raw, tmp_path), tmp_path / "run", progress=False, log=lambda m: None)
    assert "offtask.jsonl" in str(e.value) and ":2" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_general_ability_off(tmp_path, tiny_model_dir):
    """eval.general_ability = false: no section, no file."""
    from promptdistill.pipeline import run_pipeline

    write_inputs(tmp_path / "inputs.jsonl")
    raw = config_dict(tiny_model_dir)
    raw["eval"]["general_ability"] = False
    report = run_pipeline(make_config(raw, tmp_path), tmp_path / "run", progress=False, log=lambda m: None)
    assert "general_ability" not in report and "offtask" not in report
    assert not (tmp_path / "run" / "eval" / "general_ability.jsonl").exists()
    assert "## General ability" not in (tmp_path / "run" / "eval" / "report.md").read_text()
