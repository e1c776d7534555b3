"""Prompt effect recovered (evaluation/effect.py): (student - base) / (teacher - base),
checked by hand; undefined, never a division by almost nothing, when the prompt
has no effect; a paired, seeded bootstrap interval; the agreement and KL forms;
and the text sections built from replies (evaluation/text_replies.py)."""

from __future__ import annotations

import pytest

from promptdistill.config import EvalConfig, TaskConfig
from promptdistill.evaluation.effect import MIN_GAP, agreement_effect, kl_effect, prompt_effect, recovered
from promptdistill.evaluation.text_replies import text_sections
from promptdistill.task import Task


def test_the_fraction_by_hand():
    teacher, base, student = [1, 1, 1, 1, 0], [0, 0, 1, 0, 0], [1, 0, 1, 1, 0]
    e = prompt_effect(teacher, base, student)
    # teacher 4/5, base 1/5, student 3/5: (0.6 - 0.2) / (0.8 - 0.2) = 2/3
    assert (e["teacher"], e["base"], e["student"]) == pytest.approx((0.8, 0.2, 0.6))
    assert e["recovered"] == pytest.approx(2 / 3)
    assert e["low"] <= e["recovered"] <= e["high"] and e["undefined"] is None
    assert recovered(0.9, 0.4, 0.3) == pytest.approx(-0.2)  # worse than the base: below 0, as it is
    assert recovered(0.5, 0.9, 0.6) == pytest.approx(0.75)  # a prompt that lowers the score works the same way


def test_no_effect_is_undefined_not_a_division_by_almost_nothing():
    same = [1, 0, 1, 0] * 5
    e = prompt_effect(same, same, [1] * 20)
    assert e["recovered"] is None and e["low"] is None and "no measurable effect" in e["undefined"]
    # 2 points apart, under MIN_GAP (5 points)
    teacher, base = [1] * 2 + [0] * 98, [0] * 100
    assert 0.02 < MIN_GAP and prompt_effect(teacher, base, base)["recovered"] is None
    assert prompt_effect([], [], [])["undefined"] == "no inputs"


def test_an_effect_that_resamples_often_lose_has_no_interval():
    # teacher 4/50 = 8 points over a base of 0: the point is defined, but many
    # resamples hold fewer than 3 of the 4 inputs and fall under the 5-point gap
    teacher, base, student = [1] * 4 + [0] * 46, [0] * 50, [1] * 2 + [0] * 48
    e = prompt_effect(teacher, base, student)
    assert e["recovered"] == pytest.approx(0.5)
    assert e["low"] is None and e["high"] is None and e["undefined"].startswith("interval undefined")


def test_the_bootstrap_is_paired_and_seeded():
    teacher = [1, 1, 0, 1, 1, 0, 1, 1, 1, 0] * 4
    base = [0, 1, 0, 0, 0, 0, 1, 0, 0, 0] * 4
    # a student equal to the teacher on every input recovers exactly 1 in every paired resample
    copy = prompt_effect(teacher, base, teacher)
    assert copy["low"] == copy["high"] == 1.0
    stays = prompt_effect(teacher, base, base)
    assert stays["low"] == stays["high"] == 0.0
    half = [1, 0, 0, 1, 0, 0, 1, 1, 0, 0] * 4
    a, b = prompt_effect(teacher, base, half), prompt_effect(teacher, base, half)
    assert (a["low"], a["high"]) == (b["low"], b["high"]) and a["low"] < a["recovered"] < a["high"]
    other = prompt_effect(teacher, base, half, seed=1)
    assert (other["low"], other["high"]) != (a["low"], a["high"])
    assert a["resamples"] == 2000


def test_agreement_form_by_hand():
    # the teacher's unparsed answer (None) is left out; the teacher agrees with itself
    e = agreement_effect(["a", "b", "a", None], ["a", "a", "b", "a"], ["a", "b", "b", "b"], min_gap=0.05)
    # base agrees 1/3, student 2/3: (2/3 - 1/3) / (1 - 1/3) = 0.5
    assert e["n"] == 3 and e["recovered"] == pytest.approx(0.5)


def test_kl_form_is_the_gap_closed():
    e = kl_effect([0.4, 0.6, None], [0.1, 0.2, 0.3])
    # over the two inputs with both KLs: base 0.5, student 0.15; 1 - 0.15 / 0.5 = 0.7
    assert e["n"] == 2 and e["recovered"] == pytest.approx(0.7) and e["teacher"] == 0.0


def test_text_sections_from_replies(tmp_path):
    task = Task(TaskConfig(system_prompt="Reply in at most three words and end with a question.", reply_format="text"))
    settings = EvalConfig(checks=[{"name": "short", "kind": "max_words", "max": 3}, {"name": "asks", "kind": "ends_with_question"}],
                          judge="off")
    replies = {
        "teacher": ["Why?", "Really?", "Which one?", "Need help?", "Okay then?", "Sure thing?"],
        "base": ["Here is a long answer.", "Yes.", "Which one?", "I can help with that.", "Okay.", "Sure thing, here it is."],
        "student": ["Why?", "Yes.", "Which one?", "Need help?", "Okay.", "Sure thing?"],
    }
    out = text_sections(task, settings, [], replies, None, tmp_path)
    assert set(out) == {"checks", "prompt_effect"}
    effect = out["prompt_effect"]
    # all checks: teacher 6/6, base 1/6, student 4/6 -> (4/6 - 1/6) / (6/6 - 1/6) = 3/5
    assert effect["overall"]["recovered"] == pytest.approx(3 / 5)
    # short: teacher 6/6, base 3/6 (Yes., Which one?, Okay.), student 6/6 -> 1
    assert effect["checks"]["short"]["recovered"] == pytest.approx(1.0)
    # asks: teacher 6/6, base 1/6, student 4/6 -> 3/5
    assert effect["checks"]["asks"]["recovered"] == pytest.approx(3 / 5)
    no_base = text_sections(task, settings, [], {k: replies[k] for k in ("teacher", "student")}, None, tmp_path)
    assert "base row" in no_base["prompt_effect"]["unavailable"]


def test_evaluate_systems_reports_checks_effect_and_judge(tmp_path, tiny, monkeypatch):
    """A text task through evaluate_systems: report.json gets the checks, the prompt effect
    and the judge (a scripted one, both orders asked), and report.md and the terminal table show them."""
    import json

    from promptdistill.evaluation.report import report_markdown, results_table
    from promptdistill.evaluation.systems import Systems, evaluate_systems
    from promptdistill.records import Example
    from promptdistill.teachers.local import LocalTeacher
    from dataclasses import replace

    import promptdistill.evaluation.systems as systems_mod
    from test_judge import ScriptedJudge, shorter

    # a random tiny model writes the same blank reply with or without the prompt; the
    # student here says something else, so its replies differ from the teacher's and get judged
    student = replace(tiny, name="student")
    real = systems_mod.generate_answers
    monkeypatch.setattr(systems_mod, "generate_answers", lambda task, loaded, messages: (
        [("Short reply 1.", 3)] * len(messages) if loaded is student else real(task, loaded, messages)))

    task = Task(TaskConfig(system_prompt="Be brief.", reply_format="text", max_new_tokens=5))
    examples = [Example(id=str(i), text=f"tell me about thing {i}") for i in range(3)]
    judge = ScriptedJudge(shorter)
    settings = EvalConfig(general_ability=False, latency_requests=1, judge="teacher",
                          checks=[{"name": "short", "kind": "max_words", "max": 3}, {"name": "no_digits", "kind": "not_regex", "pattern": r"\d"}])
    report = evaluate_systems(task, examples, tmp_path / "eval", Systems(LocalTeacher(tiny), student, tiny, judge), settings, progress=False)
    names = [row["name"] for row in report["checks"]["checks"]]
    assert names == ["short", "no_digits", "all checks"]
    assert set(report["prompt_effect"]["checks"]) == {"short", "no_digits"} and "overall" in report["prompt_effect"]
    assert set(report["judge"]["systems"]) == {"base", "student"}
    stored = [json.loads(line) for line in (tmp_path / "eval" / "judge.jsonl").read_text().splitlines()]
    assert judge.asked and len(stored) - 1 == len(judge.asked) and {r["order"] for r in stored[1:]} <= {"ab", "ba"}
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["judge"] == report["judge"]
    markdown, table = report_markdown(report), results_table(report)
    assert "## Prompt effect and reply checks" in markdown and "| no_digits | not_regex |" in markdown
    assert "## Judge" in markdown and "judge reliability" in markdown
    assert "prompt effect recovered (all checks)" in table and "judge, student vs teacher" in table


def test_the_kl_line_keeps_a_reason_ending_in_a_bracket():
    """A reason that ends in ")" (the chat teacher's) is printed whole, in report.md and the table."""
    from promptdistill.evaluation.report import _gap_line, report_markdown, results_table

    reason = 'needs the teacher\'s full distributions (teacher_backend = "transformers")'
    report = {"task": "t", "n_examples": 0, "systems": {}, "models": {"teacher": "a", "student": "b"}, "teacher_mode": "generate",
              "fidelity": {"unavailable": reason}}
    assert _gap_line(report) == reason
    assert f"{reason[:1].upper()}{reason[1:]}." in report_markdown(report)
    assert f"({reason})" in results_table(report)
