"""Agreement in context: per-answer fidelity, intervals, floors, ceiling, report lines.

Every expected number here is computed by hand (shown in the comments), not
by the code under test.
"""

from __future__ import annotations

import builtins
import json
import random

import pytest

from promptdistill.evaluation import agreement as ag
from promptdistill.evaluation import surface_baseline as sb
from promptdistill.evaluation.agreement import (
    accuracy, json_field_labels, json_reference_points, majority_floor, mcnemar_exact_p, paired_comparison,
    per_answer_fidelity, reference_points, self_consistency_ceiling_from_probs, self_consistency_ceiling_from_samples,
    small_count_warning, wilson_interval,
)
from promptdistill.evaluation.report import agreement_report_lines, agreement_summary_lines, json_agreement_report_lines
from promptdistill.task import UNPARSED


# ---------------------------------------------------------------- Wilson

@pytest.mark.parametrize("k, n, low, high", [
    # p = 0.8, z^2/n = 0.38416: centre (0.8 + 0.19208) / 1.38416 = 0.71682,
    # half 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.22666
    (8, 10, 0.490, 0.943),
    # 0/10: centre = half = 0.19208 / 1.38416 = 0.13877
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    # 500/1000: half 1.96 * sqrt(0.00025 + 0.00000096) / 1.00384 = 0.030932
    (500, 1000, 0.4691, 0.5309),
    # 1/3: p = 1/3, z^2/n = 1.28053; centre (0.33333 + 0.64027) / 2.28053 = 0.42692,
    # half 1.96 * sqrt(0.074074 + 0.106711) / 2.28053 = 0.36541
    (1, 3, 0.0615, 0.7923),
])
def test_wilson_interval_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-4)
    assert hi == pytest.approx(high, abs=5e-4)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # symmetric: k successes is n - k failures
    lo, hi = wilson_interval(3, 17)
    assert (1 - hi, 1 - lo) == pytest.approx(wilson_interval(14, 17))
    # a wider z gives a wider interval (z = 2.576: 99%)
    assert wilson_interval(8, 10, z=2.576)[0] < 0.490 < 0.943 < wilson_interval(8, 10, z=2.576)[1]
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(-1, 10)


def test_small_count_warning_thresholds():
    assert small_count_warning(0, 0, 1) == "no inputs"
    assert "only 9 inputs" in small_count_warning(9, *wilson_interval(9, 9))
    assert "only 1 input:" in small_count_warning(1, *wilson_interval(1, 1))
    # 10/10: (0.7225, 1), 27.8 points wide: enough inputs, narrow enough
    assert small_count_warning(10, *wilson_interval(10, 10)) is None
    # 8/10: (0.490, 0.943), 45 points wide
    assert "49-94%" in small_count_warning(10, *wilson_interval(8, 10))
    # 20/40: half 1.96 * sqrt(0.00625 + 0.00006) / 1.096 = 0.1421 -> 28.4 points: fine
    assert small_count_warning(40, *wilson_interval(20, 40)) is None
    # 15/30: half 1.96 * sqrt(0.008333 + 0.000107) / 1.12805 = 0.1596 -> 31.9 points: too wide
    assert "too wide" in small_count_warning(30, *wilson_interval(15, 30))
    assert ag.MIN_COUNT == 10 and ag.MAX_INTERVAL_WIDTH == 0.30


# ---------------------------------------------------------------- per answer

# Teacher: a x6, b x3, c x1, one unparsed; the student gets every a, one b of
# three (one b -> a, one b unparsed), and the c -> a.
TEACHER = ["a"] * 6 + ["b", "b", "b"] + ["c"] + [None]
STUDENT = ["a"] * 6 + ["b", "a", None] + ["a"] + ["a"]


def test_per_answer_fidelity_hand_table():
    m = per_answer_fidelity(TEACHER, STUDENT)
    # overall: 6 + 1 of the 10 inputs with a teacher answer (the unparsed one is left out)
    assert (m["agreement"]["successes"], m["agreement"]["n"]) == (7, 10)
    assert m["agreement"]["rate"] == pytest.approx(0.7)
    # macro: (6/6 + 1/3 + 0/1) / 3 = 0.4444
    assert m["macro_agreement"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    per = m["per_answer"]
    assert [(a, per[a]["n"], per[a]["successes"]) for a in per] == [("a", 6, 6), ("b", 3, 1), ("c", 1, 0)]
    assert (per["b"]["low"], per["b"]["high"]) == pytest.approx((0.0615, 0.7923), abs=5e-4)
    assert m["worst"] == ["c", "b", "a"]
    assert m["confusion"] == {
        "a": {"a": 6, "b": 0, "c": 0, UNPARSED: 0},
        "b": {"a": 1, "b": 1, "c": 0, UNPARSED: 1},
        "c": {"a": 1, "b": 0, "c": 0, UNPARSED: 0},
    }
    # every answer here has under 10 inputs
    assert [w.split(":")[0] for w in m["warnings"]] == ["a", "b", "c"]


def test_per_answer_fidelity_label_set_order_and_foreign_answers():
    teacher = ["x", "y", "y", "x", "y"]
    system = ["x", "z", "y", "x", None]
    m = per_answer_fidelity(teacher, system, labels=["y", "x", "never"])
    assert list(m["confusion"]) == ["y", "x", "never"]
    # a system answer the teacher never gave gets its own column, before the unparsed one
    assert list(m["confusion"]["y"]) == ["y", "x", "never", "z", UNPARSED]
    assert m["confusion"]["y"] == {"y": 1, "x": 0, "never": 0, "z": 1, UNPARSED: 1}
    # the answer the teacher never gave has n = 0 and stays out of macro and worst
    assert m["per_answer"]["never"]["n"] == 0 and m["per_answer"]["never"]["rate"] is None
    assert m["macro_agreement"] == pytest.approx((1 / 3 + 2 / 2) / 2)
    assert m["worst"] == ["y", "x"]
    # ties in rate: the more frequent answer first
    tie = per_answer_fidelity(["p", "q", "q"], ["r", "r", "r"])
    assert tie["worst"] == ["q", "p"]


def test_per_answer_fidelity_needs_aligned_lists():
    with pytest.raises(ValueError):
        per_answer_fidelity(["a", "b"], ["a"])


def test_accuracy_interval_counts_unparsed_as_wrong():
    gold = ["a", "b", None, "b"]
    r = accuracy(gold, ["a", None, "b", "b"])
    assert (r["successes"], r["n"]) == (2, 3)
    assert accuracy([None, None], ["a", "b"]) is None


# ---------------------------------------------------------------- floors

def test_majority_floor():
    f = majority_floor(TEACHER)
    assert f["label"] == "a"
    assert f["agreement"]["rate"] == pytest.approx(0.6)  # 6 of 10 parsed
    assert f["macro_agreement"] == pytest.approx(1 / 3)  # three distinct answers
    assert f["predictions"] == ["a"] * len(TEACHER)
    assert majority_floor([None, None]) is None


@pytest.mark.parametrize("wins, losses, p", [
    (8, 1, 2 * (1 + 9) / 2**9),   # 0.0390625
    (5, 1, 2 * (1 + 6) / 2**6),   # 0.21875
    (3, 3, 1.0),                  # 2 * 42/64 > 1 -> capped
    (0, 0, 1.0),
    (0, 6, 2 / 2**6),             # 0.03125
])
def test_mcnemar_exact_p(wins, losses, p):
    assert mcnemar_exact_p(wins, losses) == pytest.approx(p)


def test_paired_comparison_against_a_floor():
    teacher = ["a"] * 10 + ["b"] * 10
    floor = ["a"] * 20
    # the student: right on 9 of the b's, wrong on one a
    student = ["a"] * 9 + ["b"] + ["b"] * 9 + ["a"]
    c = paired_comparison(teacher, student, floor)
    assert (c["wins"], c["losses"], c["n"]) == (9, 1, 20)
    assert c["system"] == pytest.approx(18 / 20) and c["floor"] == pytest.approx(0.5)
    assert c["difference"] == pytest.approx(0.4)
    # 2 * (1 + 10) / 2**10 = 0.0215
    assert c["p_value"] == pytest.approx(22 / 1024)
    assert c["verdict"] == "beats"
    assert paired_comparison(teacher, floor, student)["verdict"] == "below"
    # 3 wins, 1 loss: p = 2 * 5/16 = 0.625, no clear difference
    close = paired_comparison(teacher, ["a"] * 9 + ["b"] + ["b"] * 3 + ["a"] * 7, floor)
    assert (close["wins"], close["losses"], close["verdict"]) == (3, 1, "no clear difference")


# ---------------------------------------------------------------- ceiling

def test_ceiling_from_probs_is_the_mean_top_probability():
    probs = [{"a": 0.9, "b": 0.1}, {"a": 0.6, "b": 0.4}, {"a": 0.2, "b": 0.3, "c": 0.5}, None]
    c = self_consistency_ceiling_from_probs(probs)
    assert c["ceiling"] == pytest.approx((0.9 + 0.6 + 0.5) / 3)
    assert c["n"] == 3 and c["mode"] == "probs"
    # with recorded answers: the probability of the recorded one; an input without one is left out
    c = self_consistency_ceiling_from_probs(probs, recorded=["a", "b", None, "a"])
    assert c["ceiling"] == pytest.approx((0.9 + 0.4) / 2)
    # unnormalised scores are normalised
    assert self_consistency_ceiling_from_probs([{"a": 2.0, "b": 2.0}])["ceiling"] == pytest.approx(0.5)
    assert self_consistency_ceiling_from_probs([None, {}]) is None


def test_ceiling_from_samples_is_the_mean_share_agreeing_with_the_recorded_answer():
    recorded = ["a", "b", None, "c", "d"]
    resamples = [["a", "a", "b", "a"], ["a", "a", "a", "a"], ["x"], ["c", None], []]
    c = self_consistency_ceiling_from_samples(recorded, resamples)
    # 3/4, 0/4, (no recorded answer), 1/2 (unparsed disagrees), (no resamples)
    assert c["ceiling"] == pytest.approx((0.75 + 0 + 0.5) / 3)
    assert c["n"] == 3 and c["k"] == "2-4" and c["mode"] == "samples"
    assert self_consistency_ceiling_from_samples(["a"], [["a", "b", "b"]])["k"] == 3
    with pytest.raises(ValueError):
        self_consistency_ceiling_from_samples(["a"], [])


# ---------------------------------------------------------------- sections and lines

def test_reference_points_and_report_lines():
    base = ["a"] * 10 + [None]
    gold = ["a"] * 5 + ["b"] * 5 + [None]
    ceiling = self_consistency_ceiling_from_probs([{"a": 0.875, "b": 0.125}])  # 0.875
    surface = {"available": True, "agreement": ag.rate(6, 10), "macro_agreement": 0.5, "predictions": ["a"] * 11}
    s = reference_points(TEACHER, {"base": base, "student": STUDENT}, gold_labels=gold, surface=surface, ceiling=ceiling)
    assert s["n"] == 10 and s["labels"] == ["a", "b", "c"]
    st = s["systems"]["student"]
    assert st["share_of_ceiling"] == pytest.approx(0.7 / 0.875)  # 0.8
    # accuracy: gold a,a,a,a,a,b,b,b,b,b vs student a,a,a,a,a,a,b,a,None,a -> 6/10
    assert st["accuracy"]["rate"] == pytest.approx(0.6)
    # the student against the majority (all a): one win (the b it got), no loss
    assert (st["against"]["majority"]["wins"], st["against"]["majority"]["losses"]) == (1, 0)
    assert st["against"]["majority"]["verdict"] == "no clear difference"
    assert "predictions" not in s["floors"]["majority"] and "predictions" not in s["floors"]["surface"]
    json.dumps(s)  # report.json material

    lines = agreement_report_lines(s)
    text = "\n".join(lines)
    assert lines[0] == "## Agreement in context"
    assert "logistic regression fitted on the training inputs' teacher labels." in lines[2] and "Ceiling:" in lines[2]
    assert "| floor: always `a` | 60.0% | 31.3-83.2% | 33.3% | | |" in lines
    assert "| student | 70.0% | 39.7-89.2% | 44.4% | 80% | 60.0% (31.3-83.2%) |" in lines
    assert "| ceiling: teacher self-consistency (stored distribution) | 87.5% | | | 100% | |" in lines
    # both floors answer a everywhere: the student has one win (the b it got) and no loss: p = 2 * 1/2 = 1
    assert ("The student is not clearly different from the majority answer (+10.0 points, p = 1), "
            "is not clearly different from the surface baseline (+10.0 points, p = 1) "
            "and reaches 80% of the teacher's self-consistency.") in lines
    assert "The base is not clearly different from the majority answer (+0.0 points, p = 1)" in text
    assert "Uncertain: base: 95% interval 31-83% is too wide to tell; student: 95% interval 40-89% is too wide to tell." in lines
    assert "| **b** | 3 | 0.0% (0.0-56.2%) | 33.3% (6.1-79.2%) | only 3 inputs: too few to tell |" in lines
    assert "Too few inputs to tell (under 10): `a`, `b`, `c`." in text
    assert "| **b** | 1 | 1 | 0 | 1 |" in lines  # student confusion row b: a, b, c, ??
    assert "### Confusion: student against the teacher (rows teacher answer, columns student answer)" in lines
    # every table is a well-formed pipe table: a header, a rule with as many cells, rows as wide
    _check_tables(lines)
    assert agreement_summary_lines(s) == [
        "base: agreement 60.0% (95% 31.3-83.2%), macro 33.3%; against majority 60.0%, surface baseline 60.0%, "
        "teacher self-consistency 87.5% [95% interval 31-83% is too wide to tell]",
        "student: agreement 70.0% (95% 39.7-89.2%), macro 44.4%; against majority 60.0%, surface baseline 60.0%, "
        "teacher self-consistency 87.5% [95% interval 40-89% is too wide to tell]",
    ]


def _check_tables(lines):
    i = 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            width = lines[i].count("|")
            assert lines[i + 1] == "|---" * (width - 1) + "|", lines[i:j]
            assert all(line.count("|") - line.count("\\|") == width for line in lines[i:j]), lines[i:j]
            i = j
        else:
            i += 1


def test_one_number_formatter_for_every_section():
    from promptdistill.evaluation.report import fmt, interval

    assert fmt(None) == fmt(None, ".1%") == "-"
    assert fmt(0.8126, ".1%") == "81.3%" and fmt(0.5, ".0%") == "50%"
    assert fmt(1.23456, ".3f") == "1.235" and fmt(62.0) == "62.0" and fmt(0.0123, ".2g") == "0.012"
    assert interval(0.3134, 0.8321) == "31.3-83.2%" and interval(0.3134, 0.8321, digits=0) == "31-83%"


def test_report_lines_render_as_html_tables():
    from promptdistill.evaluation.run_report import markdown_to_html

    s = reference_points(TEACHER, {"student": STUDENT})
    text = "\n".join(agreement_report_lines(s))
    assert "logistic regression" not in text and "Ceiling" not in text  # neither was given
    html = markdown_to_html(text, ".", title="t")
    assert html.count("<table>") == 3  # reference points, per answer, confusion


def test_confusion_lines_sum_the_rarest_answers():
    teacher = [f"l{i}" for i in range(20) for _ in range(20 - i)]
    system = [t if k % 2 else "l0" for k, t in enumerate(teacher)]
    lines = agreement_report_lines(reference_points(teacher, {"student": system}), max_answers=5)
    confusion = lines[lines.index("### Confusion: student against the teacher (rows teacher answer, columns student answer)") + 2:]
    assert confusion[0] == "| teacher \\ student | l0 | l1 | l2 | l3 | l4 | (other) | ?? |"
    # row l1 (19 inputs, k = 20..38): the 10 even k answered l0, the 9 odd ones l1
    assert confusion[3] == "| **l1** | 10 | 9 | 0 | 0 | 0 | 0 | 0 |"
    # row l2 (18 inputs, k = 39..56): 9 even, 9 odd
    assert confusion[4] == "| **l2** | 9 | 0 | 9 | 0 | 0 | 0 | 0 |"
    assert "(rarer teacher answers not shown: 120 inputs)" in lines  # l5..l19: 15 + 14 + ... + 1
    assert "| (15 rarer answers) | 120 | | |" in lines
    _check_tables(lines)


def test_confusion_is_capped_for_many_distinct_answers(monkeypatch):
    monkeypatch.setattr(ag, "MAX_CONFUSION", 3)
    # teacher: p x4, q x3, r x2, s x1, t x1; the system copies p, q, says "zz" for r and s, u for t
    teacher = ["p"] * 4 + ["q"] * 3 + ["r"] * 2 + ["s", "t"]
    system = ["p"] * 4 + ["q"] * 3 + ["zz", "zz", "zz", "u"]
    c = per_answer_fidelity(teacher, system)["confusion"]
    assert list(c) == ["p", "q", "r", ag.OTHER]
    assert c["r"] == {"p": 0, "q": 0, "r": 0, ag.OTHER: 2, UNPARSED: 0}
    assert c[ag.OTHER] == {"p": 0, "q": 0, "r": 0, ag.OTHER: 2, UNPARSED: 0}
    assert sum(v for row in c.values() for v in row.values()) == 11
    lines = agreement_report_lines(reference_points(teacher, {"student": system}), max_answers=2)
    head = lines.index("| teacher \\ student | p | q | (other) | ?? |")
    assert lines[head + 2:head + 5] == ["| **p** | 4 | 0 | 0 | 0 |", "| **q** | 0 | 3 | 0 | 0 |", "(rarer teacher answers not shown: 4 inputs)"]


# ---------------------------------------------------------------- surface baseline

def _words(alphabet: str, rng: random.Random, n: int) -> list[str]:
    return [" ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(3, 8))) for _ in range(rng.randint(2, 5)))
            for _ in range(n)]


LATIN, CYRILLIC, GREEK = "abcdefghijklmnopqrstuvwxyz", "абвгдежзийклмнопрстуфхцчшщыэюя", "αβγδεζηθικλμνξοπρστυφχψω"


def _script_task(seed: int, n: int):
    """Texts in three scripts, labelled by script: separable by character n-grams alone."""
    rng = random.Random(seed)
    texts, labels = [], []
    for name, alphabet in (("latin", LATIN), ("cyrillic", CYRILLIC), ("greek", GREEK)):
        texts += _words(alphabet, rng, n)
        labels += [name] * n
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [labels[i] for i in order]


def test_surface_baseline_learns_a_separable_char_ngram_task():
    train_x, train_y = _script_task(0, 20)
    test_x, test_y = _script_task(1, 15)
    test_y[0] = None  # an unparsed teacher answer is left out of the agreement
    r = sb.evaluate_surface_baseline(train_x, train_y, test_x, test_y)
    assert r["available"] and r["model"].startswith("tf-idf")
    assert r["agreement"]["n"] == 44
    assert r["agreement"]["rate"] >= 0.95
    assert r["macro_agreement"] >= 0.95
    assert len(r["predictions"]) == 45
    # deterministic: the same fit twice gives the same answers
    assert sb.fit_surface_baseline(train_x, train_y).predict(test_x) == r["predictions"]


def test_surface_baseline_without_signal_falls_to_the_majority():
    # one label only: the baseline answers it (agreement = that label's held-out share)
    const = sb.fit_surface_baseline(["one", "two", "three"], ["x", "x", "x"])
    assert const.predict(["anything", "else"]) == ["x", "x"]
    r = sb.score(const, ["a", "b", "c", "d"], ["x", "x", "x", "y"])
    assert r["agreement"]["rate"] == pytest.approx(0.75) and "answers `x`" in r["note"]
    # identical texts, labels 7:3: a fitted regression cannot tell them apart and answers the majority
    fitted = sb.fit_surface_baseline(["same text"] * 10, ["x"] * 7 + ["y"] * 3)
    assert fitted.constant is None
    assert fitted.predict(["same text"] * 4) == ["x"] * 4
    with pytest.raises(ValueError):
        sb.fit_surface_baseline(["a"], [None])
    assert sb.evaluate_surface_baseline(["a"], [None], ["b"], ["x"]) == {"available": False, "reason": "no training input has a teacher label"}


def test_surface_baseline_per_json_field():
    train_x, train_y = _script_task(2, 20)
    test_x, test_y = _script_task(3, 10)
    canon = lambda script, i: json.dumps({"script": script, "kind": "text", "note": f"input {i}"}, ensure_ascii=False, separators=(", ", ": "))
    train_labels = [canon(y, i) for i, y in enumerate(train_y)]
    test_labels = [canon(y, 1000 + i) for i, y in enumerate(test_y)]
    test_labels[0] = None
    fields = ["script", "kind", "note"]
    r = sb.evaluate_surface_baseline(train_x, train_labels, test_x, test_labels, json_fields=fields)
    assert r["available"] and list(r["fields"]) == fields
    assert r["fields"]["script"]["agreement"]["rate"] >= 0.95
    assert r["fields"]["kind"]["agreement"]["rate"] == 1.0  # a constant field
    assert "answers" in r["fields"]["kind"]["note"]
    # note: 60 distinct values in 60 inputs, free text: the most frequent value, never seen again
    assert r["fields"]["note"]["agreement"]["rate"] == 0.0 and "60 distinct" in r["fields"]["note"]["note"]
    assert r["exact_agreement"]["rate"] == 0.0 and r["exact_agreement"]["n"] == 29
    assert json.loads(r["predictions"][1])["kind"] == "text"

    # the student: right on script and kind, never on note; against the teacher's canonical replies
    student = [None if t is None else canon(json.loads(t)["script"], -1) for t in test_labels]
    student[1] = None  # an invalid reply disagrees on every field
    sections = json_reference_points(test_labels, {"student": student}, fields, surface=r)
    assert list(sections) == fields
    assert sections["script"]["systems"]["student"]["agreement"]["rate"] == pytest.approx(28 / 29)
    assert sections["script"]["floors"]["surface"]["agreement"]["rate"] >= 0.95
    assert sections["kind"]["systems"]["student"]["against"]["surface"]["losses"] == 1
    text = "\n".join(json_agreement_report_lines(sections))
    assert "## JSON fields in context" in text and "| kind | 100.0% | 100.0% |" in text
    # the whole object: the baseline's objects never match (the note field), the student's never either
    exact = reference_points(test_labels, {"student": student}, surface=r)
    assert exact["floors"]["surface"]["agreement"]["rate"] == 0.0
    assert "fields" not in exact["floors"]["surface"] and "predictions" not in exact["floors"]["surface"]
    assert exact["systems"]["student"]["against"]["surface"]["wins"] == 0
    lines = agreement_report_lines(exact, title="Exact agreement in context")
    assert "| floor: surface baseline | 0.0% | 0.0-11.7% | - | | |" in lines
    _check_tables(lines)


def test_json_field_labels():
    assert json_field_labels(['{"a": [1, 2], "b": "x"}', None], "a") == ["[1, 2]", None]
    assert json_field_labels(['{"a": [1, 2], "b": "x"}'], "b") == ['"x"']


def test_more_field_values_than_classes_answers_the_most_frequent(monkeypatch):
    monkeypatch.setattr(sb, "MAX_FIELD_CLASSES", 2)
    labels = [json.dumps({"f": v}) for v in ["p", "q", "q", "r"]]
    r = sb.evaluate_surface_baseline(["w", "x", "y", "z"], labels, ["x"], [json.dumps({"f": "q"})], json_fields=["f"])
    assert r["fields"]["f"]["predictions"] == ['"q"']


def test_missing_scikit_learn_is_reported_not_raised(monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(sb.BaselineUnavailable, match=r"pip install 'promptdistill\[baseline\]'"):
        sb.fit_surface_baseline(["a", "b"], ["x", "y"])
    r = sb.evaluate_surface_baseline(["a", "b"], ["x", "y"], ["c"], ["x"])
    assert r["available"] is False and "pip install 'promptdistill[baseline]'" in r["reason"]
    # the section and its lines say so, and the other floors and metrics are unaffected
    s = reference_points(TEACHER, {"student": STUDENT}, surface=r)
    assert "surface" not in s["systems"]["student"]["against"] and "majority" in s["systems"]["student"]["against"]
    lines = agreement_report_lines(s)
    assert "| floor: surface baseline | unavailable | | | | |" in lines
    assert any("pip install 'promptdistill[baseline]'" in line for line in lines)
    sections = json_reference_points(['{"f": 1}'], {"student": ['{"f": 1}']}, ["f"],
                                     surface=sb.evaluate_surface_baseline(["a"], ['{"f": 1}'], ["b"], ['{"f": 1}'], json_fields=["f"]))
    assert sections["f"]["floors"]["surface"]["available"] is False
    assert "unavailable" in "\n".join(json_agreement_report_lines(sections))
