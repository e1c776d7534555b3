"""An interrupted evaluation keeps the predictions it made; the rerun computes only the rest."""

from __future__ import annotations

import json

import pytest

import promptdistill.evaluation.systems as evaluate_mod
from promptdistill.config import EvalConfig, TaskConfig
from promptdistill.records import Example
from promptdistill.task import Task
from promptdistill.teachers.local import LocalTeacher


def _task():
    return Task(TaskConfig(user_template="Rules.\nText: {text}", labels=["la", "cy"], answer_mode="choose", max_new_tokens=4))


def test_interrupted_eval_resumes(tmp_path, tiny, monkeypatch):
    task = _task()
    examples = [Example(id=str(i), text=f"text number {i}", gold_label="la") for i in range(5)]
    out = tmp_path / "eval"
    calls = []
    real = evaluate_mod.generate_answers
    # Answers come in batches (of 2 here), each batch's predictions kept as it completes.
    monkeypatch.setattr(evaluate_mod, "GENERATE_BATCH_SIZE", 2)

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 5:  # the student's second batch (base: batches 1-3, student: 4-6)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "generate_answers", counting)
    models = evaluate_mod.Systems(LocalTeacher(tiny), tiny, tiny)
    run = dict(progress=False, resume_settings={"run": "abc"})
    with pytest.raises(KeyboardInterrupt):
        evaluate_mod.evaluate_systems(task, examples, out, models, EvalConfig(general_ability=False), **run)
    partial = out / "predictions.partial.jsonl"
    kept = [json.loads(line) for line in partial.read_text().splitlines()[1:]]
    assert [(p["system"], p["id"]) for p in kept] == [("teacher", str(i)) for i in range(5)] + [("base", str(i)) for i in range(5)] + [("student", "0"), ("student", "1")]

    # a kill -9 in the middle of writing the next prediction leaves a torn last line
    with open(partial, "a", encoding="utf-8") as f:
        f.write('{"id": "2", "system": "stud')
    calls.clear()
    monkeypatch.setattr(evaluate_mod, "generate_answers", lambda *a, **k: (calls.append(len(a[2])), real(*a, **k))[1])
    report = evaluate_mod.evaluate_systems(task, examples, out, models, EvalConfig(latency_requests=2, general_ability=False), **run)
    assert calls == [2, 1]  # only the student's remaining inputs
    assert not partial.exists()
    final = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(final) == 15
    by_key = {(p["system"], p["id"]): p for p in final}
    for p in kept:  # reused exactly; latency is measured anew on its sample every run
        assert {**by_key[(p["system"], p["id"])], "latency_s": None} == {**p, "latency_s": None}
    assert report["systems"]["teacher"]["agreement"] == 1.0
    assert [p["id"] for p in final if p["latency_s"] is not None] == ["0", "1"] * 3


def test_partial_predictions_of_other_settings_are_discarded(tmp_path, tiny, capsys):
    task = _task()
    examples = [Example(id=str(i), text=f"text {i}") for i in range(3)]
    out = tmp_path / "eval"
    out.mkdir()
    bogus = {"id": "0", "system": "teacher", "label": "cy", "reply": "Final Answer: cy", "status": "ok", "prompt_tokens": 1, "latency_s": 9.0}
    (out / "predictions.partial.jsonl").write_text(json.dumps({"settings": {"run": "old"}}) + "\n" + json.dumps(bogus) + "\n")
    evaluate_mod.evaluate_systems(task, examples, out, evaluate_mod.Systems(LocalTeacher(tiny), tiny), progress=False, resume_settings={"run": "new"})
    final = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    teacher0 = next(p for p in final if p["system"] == "teacher" and p["id"] == "0")
    assert teacher0["latency_s"] != 9.0
    # the restart says which setting changed
    assert "other settings (run); starting over" in capsys.readouterr().err


def test_partial_predictions_without_recorded_settings_are_discarded(tmp_path, tiny):
    task = _task()
    examples = [Example(id=str(i), text=f"text {i}") for i in range(2)]
    out = tmp_path / "eval"
    out.mkdir()
    bogus = {"id": "0", "system": "teacher", "label": "cy", "reply": "Final Answer: cy", "status": "ok", "prompt_tokens": 1, "latency_s": 9.0}
    (out / "predictions.partial.jsonl").write_text(json.dumps({"fingerprint": "abc"}) + "\n" + json.dumps(bogus) + "\n")
    evaluate_mod.evaluate_systems(task, examples, out, evaluate_mod.Systems(LocalTeacher(tiny), tiny), progress=False, resume_settings={"run": "abc"})
    final = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert next(p for p in final if p["system"] == "teacher" and p["id"] == "0")["latency_s"] != 9.0


def test_teacher_resamples_give_the_ceiling_and_resume(tmp_path, tiny):
    """eval.teacher_resamples in generate mode: K sampled answers per input, in
    teacher_resamples.jsonl and the ceiling; an interrupted run keeps the ones made."""
    task = Task(TaskConfig(user_template="Rules.\nText: {text}", labels=["la", "cy"], max_new_tokens=4, temperature=1.0))
    examples = [Example(id=str(i), text=f"text number {i}", gold_label="la") for i in range(3)]
    out = tmp_path / "eval"
    teacher = LocalTeacher(tiny)
    asked = []
    real = teacher.label

    def counting(exs, t, mode, seed, *args, **kwargs):
        if seed != 0:  # a resample (the teacher row uses the labeling seed, 0)
            asked.append((seed, [e.id for e in exs]))
            if seed == 2:
                raise KeyboardInterrupt
        return real(exs, t, mode, seed, *args, **kwargs)

    teacher.label = counting
    run = dict(systems=evaluate_mod.Systems(teacher, tiny), settings=EvalConfig(teacher_resamples=2), progress=False, resume_settings={"run": "abc"})
    with pytest.raises(KeyboardInterrupt):
        evaluate_mod.evaluate_systems(task, examples, out, **run)
    asked.clear()
    teacher.label = lambda exs, t, mode, seed, *a, **k: (asked.append((seed, [e.id for e in exs])), real(exs, t, mode, seed, *a, **k))[1]
    report = evaluate_mod.evaluate_systems(task, examples, out, **run)
    assert [a for a in asked if a[0] != 0] == [(2, ["0", "1", "2"])]  # resample 1 was kept
    rows = [json.loads(line) for line in (out / "teacher_resamples.jsonl").read_text().splitlines()]
    assert [len(r["resamples"]) for r in rows] == [2, 2, 2]
    scored = [r for r in rows if r["recorded"] is not None]
    ceiling = report["reference_points"]["ceiling"]
    if scored:
        assert ceiling["mode"] == "samples" and ceiling["k"] == 2
        assert ceiling["ceiling"] == pytest.approx(sum(sum(s == r["recorded"] for s in r["resamples"]) / 2 for r in scored) / len(scored))
    else:  # the tiny random teacher parsed nothing: no ceiling to compute
        assert ceiling is None


def test_interrupted_offtask_predictions_resume(tmp_path, tiny, monkeypatch):
    """Off-task predictions go through the same partial file under their
    own system names: an evaluation stopped among them keeps the held-out ones and
    the off-task ones made, and the rerun computes only the rest."""
    task = _task()
    examples = [Example(id=str(i), text=f"text number {i}", gold_label="la") for i in range(3)]
    # the same ids as held-out inputs on purpose: kept apart by system name
    offtask = [Example(id=str(i), text=t) for i, t in enumerate(["hello there", "what time is it?", "def f(): pass"])]
    out = tmp_path / "eval"
    calls = []
    real = evaluate_mod.generate_answers
    monkeypatch.setattr(evaluate_mod, "GENERATE_BATCH_SIZE", 2)

    def counting(*args, **kwargs):
        calls.append([m[0]["content"] for m in args[2]])
        if len(calls) == 7:  # base 1-2, student 3-4, off-task base 5-6, off-task student 7
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "generate_answers", counting)
    run = dict(systems=evaluate_mod.Systems(LocalTeacher(tiny), tiny, tiny), progress=False, resume_settings={"run": "abc"}, offtask=offtask,
               settings=EvalConfig(offtask_inputs="offtask.jsonl", latency_requests=1, general_ability=False))
    with pytest.raises(KeyboardInterrupt):
        evaluate_mod.evaluate_systems(task, examples, out, **run)
    kept = [json.loads(line) for line in (out / "predictions.partial.jsonl").read_text().splitlines()[1:]]
    systems = [p["system"] for p in kept]
    assert systems == ["teacher"] * 3 + ["base"] * 3 + ["student"] * 3 + ["offtask_teacher"] * 3 + ["offtask_base"] * 3

    calls.clear()
    monkeypatch.setattr(evaluate_mod, "generate_answers", lambda *a, **k: (calls.append([m[0]["content"] for m in a[2]]), real(*a, **k))[1])
    report = evaluate_mod.evaluate_systems(task, examples, out, **run)
    assert calls == [["hello there", "what time is it?"], ["def f(): pass"]]  # only the off-task student's inputs
    final = [json.loads(line) for line in (out / "offtask_predictions.jsonl").read_text().splitlines()]
    assert [p["system"] for p in final] == ["offtask_teacher"] * 3 + ["offtask_base"] * 3 + ["offtask_student"] * 3
    # the same model as base and student: they agree everywhere and their KL is 0
    assert report["offtask"]["student"]["agreement_base"] == 1.0
    assert report["offtask"]["student"]["kl_base"] == pytest.approx(0.0, abs=1e-9)
