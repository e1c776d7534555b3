"""Issue 18 wired in: train.balance's sampling weights, eval.teacher_resamples
(the ceiling from new teacher answers), the report sections, and their settings.
Hand-computed cases; no model (a scripted teacher)."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import make_task


# ---------------------------------------------------------------- train.balance

def test_balance_weights_by_hand():
    from promptdistill.training.data import balance_weights

    # three "a", one "b": each "a" weighs 1/3, the "b" 1, so both answers weigh 1 in total
    assert balance_weights(["a", "a", "b", "a"]) == pytest.approx([1 / 3, 1 / 3, 1, 1 / 3])


def test_sampling_weights_align_with_the_training_items():
    from promptdistill.config import TrainConfig
    from promptdistill.records import LabeledExample
    from promptdistill.training.data import sampling_weights

    def rec(i, label, status="ok"):
        turns = [{"role": "user", "content": "t"}] + ([{"role": "assistant", "content": label}] if status == "ok" else [])
        return LabeledExample(f"r{i}", "t", None, "", label, status, turns)

    records = [rec(0, "en"), rec(1, "en"), rec(2, None, "no_match"), rec(3, "fr"), rec(4, "en")]
    assert sampling_weights(records, [], TrainConfig()) is None  # balance = "none": a plain shuffle
    # r2 is not a training item (not ok), r4 is over max_length: items are r0, r1, r3
    assert sampling_weights(records, ["r4"], TrainConfig(balance="answers")) == pytest.approx([0.5, 0.5, 1.0])


def test_balanced_step_groups_draw_every_answer_about_equally():
    from promptdistill.training.data import balance_weights, step_groups

    answers = ["maj"] * 90 + ["rare"] * 10
    groups = step_groups(len(answers), 10, seed=3, weights=balance_weights(answers))
    drawn = [i for _ in range(100) for i in next(groups)]  # 10 epochs of 10 steps
    counts = Counter(answers[i] for i in drawn)
    assert len(drawn) == 1000
    assert 0.44 < counts["rare"] / len(drawn) < 0.56  # 10% of the items, half of the draws (sd 1.6 points)
    # seeded: the same order again (what resuming relies on), another seed another order
    again = step_groups(len(answers), 10, seed=3, weights=balance_weights(answers))
    assert [next(again) for _ in range(100)] == [drawn[i:i + 10] for i in range(0, 1000, 10)]
    other = step_groups(len(answers), 10, seed=4, weights=balance_weights(answers))
    assert next(other) != drawn[:10]


def test_unweighted_step_groups_unchanged():
    from promptdistill.training.data import step_groups

    groups = step_groups(5, 2, seed=0)
    epoch = next(groups) + next(groups) + next(groups)
    assert sorted(epoch) == [0, 1, 2, 3, 4]  # each item once per epoch


# ---------------------------------------------------------------- settings

def _cfg(**sections):
    from promptdistill.config import config_from_dict

    raw = {"task": {"user_template": "Which? {text}", "labels": ["en", "fr"]}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


@pytest.mark.parametrize("sections, field", [
    ({"train": {"balance": "labels"}}, "train.balance"),
    ({"task": {"reply_format": "json", "json_fields": ["a"], "labels": []}, "train": {"balance": "answers"}}, "train.balance"),
    ({"eval": {"teacher_resamples": -1}}, "eval.teacher_resamples"),
    ({"eval": {"teacher_resamples": 2}}, "eval.teacher_resamples"),  # greedy (temperature 0)
    ({"task": {"answer_mode": "choose"}, "eval": {"teacher_resamples": 2}}, "eval.teacher_resamples"),
])
def test_balance_and_resample_settings_are_validated(sections, field):
    from promptdistill.errors import PromptDistillError

    with pytest.raises(PromptDistillError) as e:
        _cfg(**sections)
    assert field in str(e.value)


def test_balance_and_resample_settings_accepted_and_hashed():
    from promptdistill.config import eval_settings, training_settings

    cfg = _cfg(task={"temperature": 0.7}, eval={"teacher_resamples": 3}, train={"balance": "answers"})
    assert cfg.eval.teacher_resamples == 3 and cfg.train.balance == "answers"
    assert training_settings(cfg.train)["balance"] == "answers" and eval_settings(cfg.eval)["teacher_resamples"] == 3
    # every setting is in the fingerprints: changing one from its default changes the stage's
    plain = _cfg()
    assert training_settings(plain.train)["balance"] == "none" and eval_settings(plain.eval)["teacher_resamples"] == 0
    assert training_settings(plain.train) != training_settings(cfg.train) and eval_settings(plain.eval) != eval_settings(cfg.eval)


# ---------------------------------------------------------------- ceiling from resamples

class ScriptedTeacher:
    """teacher.label with a fixed answer per (seed, input id); counts the requests."""

    def __init__(self, answers: dict):
        self.answers, self.asked = answers, []

    def label(self, examples, task, mode, seed, batch_size=None, *, reuse_prefix=True):
        from promptdistill.records import LabeledExample

        assert mode == "generate" and task.config.samples == 1 and task.config.temperature == 0.8
        for e in examples:
            self.asked.append((seed, e.id))
            reply = self.answers[seed][e.id]
            yield LabeledExample(e.id, e.text, None, reply, None, "ok", [])


def test_resamples_and_the_ceiling_by_hand():
    from promptdistill.evaluation.systems import Prediction, resample_teacher, teacher_ceiling
    from promptdistill.records import Example

    task = make_task(temperature=0.8, samples=3)
    examples = [Example("a", "x"), Example("b", "y"), Example("c", "z")]
    # labeling seed 5: resample j uses seed 5 + j
    teacher = ScriptedTeacher({
        6: {"a": "Final Answer: en", "b": "Final Answer: fr", "c": "no answer"},
        7: {"a": "Final Answer: fr", "b": "Final Answer: fr", "c": "Final Answer: de"},
    })
    made = []
    resamples = resample_teacher(task, teacher, examples, 2, 5, sink=made.append, progress=False)
    assert resamples == [["en", "fr"], ["fr", "fr"], [None, "de"]]
    assert [p.system for p in made] == ["teacher_resample_1"] * 3 + ["teacher_resample_2"] * 3
    recorded = [Prediction(i, "teacher", lab, "", "ok", 0, 0.0) for i, lab in (("a", "en"), ("b", "fr"), ("c", None))]
    ceiling = teacher_ceiling(recorded, resamples)
    # a: 1 of 2 resamples repeat "en"; b: 2 of 2; c has no recorded answer: left out -> (0.5 + 1) / 2
    assert ceiling["mode"] == "samples" and ceiling["ceiling"] == pytest.approx(0.75)
    assert ceiling["n"] == 2 and ceiling["k"] == 2

    # resumed: resamples already made are not asked again
    teacher.asked.clear()
    done = {"teacher_resample_1": {p.id: p for p in made[:3]}, "teacher_resample_2": {"a": made[3]}}
    assert resample_teacher(task, teacher, examples, 2, 5, done=done, progress=False) == resamples
    assert teacher.asked == [(7, "b"), (7, "c")]


def test_ceiling_from_the_stored_distribution_without_resamples():
    from promptdistill.evaluation.systems import Prediction, teacher_ceiling

    preds = [Prediction("a", "teacher", "en", "", "ok", 0, 0.0, {"en": 0.6, "fr": 0.4}),
             Prediction("b", "teacher", "fr", "", "ok", 0, 0.0, {"en": 0.1, "fr": 0.9})]
    assert teacher_ceiling(preds, None)["ceiling"] == pytest.approx((0.6 + 0.9) / 2)
    # generate mode without resamples: no distribution, no ceiling
    assert teacher_ceiling([Prediction("a", "teacher", "en", "", "ok", 0, 0.0)], None) is None


def test_reference_sections_fit_the_surface_baseline_on_training_labels():
    pytest.importorskip("sklearn")
    from promptdistill.evaluation.report import reference_lines
    from promptdistill.evaluation.systems import Prediction, reference_sections
    from promptdistill.records import Example, LabeledExample

    task = make_task(labels=["la", "cy"])
    latin, cyrillic = ["abc", "hello", "word", "latin", "text", "foo"], ["абв", "привет", "слово", "кир", "текст", "фу"]
    train = [LabeledExample(f"t{i}", w, None, "", lab, "ok", []) for i, (w, lab) in
             enumerate([(w, "la") for w in latin] + [(w, "cy") for w in cyrillic])]
    train.append(LabeledExample("bad", "zzz", None, "", None, "no_match", []))  # not a training label
    examples = [Example("h1", "bar", "la"), Example("h2", "дом", "cy"), Example("h3", "baz", "la")]
    pred = lambda system, labs: [Prediction(e.id, system, lab, "", "ok", 0, 0.0) for e, lab in zip(examples, labs)]  # noqa: E731
    all_preds = {"teacher": pred("teacher", ["la", "cy", "la"]), "student": pred("student", ["la", "la", "la"])}
    section = reference_sections(task, examples, all_preds, train, None)["reference_points"]
    assert list(section["systems"]) == ["student"] and section["n"] == 3
    surface = section["floors"]["surface"]
    assert surface["available"] and surface["n_train"] == 12
    student = section["systems"]["student"]
    assert student["agreement"]["rate"] == pytest.approx(2 / 3) and student["macro_agreement"] == pytest.approx(0.5)
    assert student["accuracy"]["rate"] == pytest.approx(2 / 3)
    assert section["floors"]["majority"]["label"] == "la" and section["ceiling"] is None
    text = "\n".join(reference_lines({"reference_points": section, "teacher_mode": "generate"}))
    assert "## Agreement in context" in text and "### Agreement per teacher answer" in text
    assert "eval.teacher_resamples" in text  # says how to get a ceiling


def test_balanced_training_draws_through_the_recipe(tmp_path, tiny_model_dir, monkeypatch):
    """The recipe's hook: with balance = "answers" its steps are drawn with the answers' weights."""
    from promptdistill.config import Config, ModelsConfig, TrainConfig
    from promptdistill.training import recipe

    from conftest import script_records

    records = script_records(8)
    records = [r for r in records if r.label == "la"] + [r for r in records if r.label == "cy"][:1]  # 4 la, 1 cy
    seen = []
    real = recipe.step_groups
    monkeypatch.setattr(recipe, "step_groups", lambda n, per_step, seed, weights=None: (seen.append(weights), real(n, per_step, seed, weights))[1])
    cfg = Config(task=make_task(labels=["la", "cy"]).config,
                 train=TrainConfig(lora_rank=2, lora_alpha=4, max_steps=2, batch_size=2, balance="answers"),
                 models=ModelsConfig(student=tiny_model_dir, teacher=tiny_model_dir, device="cpu", dtype="float32"))
    summary = recipe.train_student(cfg, records, tmp_path, progress=False)
    assert summary["steps"] == 2
    assert seen == [pytest.approx([0.25, 0.25, 0.25, 0.25, 1.0])]


def test_reference_sections_per_json_field():
    pytest.importorskip("sklearn")
    from promptdistill.evaluation.report import reference_lines
    from promptdistill.evaluation.systems import Prediction, reference_sections
    from promptdistill.jsonreply import canonical_json
    from promptdistill.records import Example, LabeledExample

    task = make_task(labels=[], reply_format="json", json_fields=["kind", "urgent"], answer_pattern=r"(.*)")
    obj = lambda kind, urgent: canonical_json({"kind": kind, "urgent": urgent})  # noqa: E731
    train = [LabeledExample(f"t{i}", text, None, "", obj(kind, urgent), "ok", []) for i, (text, kind, urgent) in enumerate(
        [("refund please", "billing", False), ("refund now!!", "billing", True), ("app crashes", "bug", False),
         ("crash again!!", "bug", True)] * 3)]
    examples = [Example("h1", "refund?"), Example("h2", "it crashes!!")]
    teacher = [obj("billing", False), obj("bug", True)]
    student = [obj("billing", True), None]  # one field right on h1, an invalid reply on h2
    pred = lambda system, labs: [Prediction(e.id, system, lab, "", "ok", 0, 0.0) for e, lab in zip(examples, labs)]  # noqa: E731
    out = reference_sections(task, examples, {"teacher": pred("teacher", teacher), "student": pred("student", student)}, train, None)
    assert out["reference_points"]["systems"]["student"]["agreement"]["rate"] == 0.0  # exact objects
    fields = out["json_reference_points"]
    assert list(fields) == ["kind", "urgent"]
    assert fields["kind"]["systems"]["student"]["agreement"]["rate"] == pytest.approx(0.5)
    assert fields["urgent"]["systems"]["student"]["agreement"]["rate"] == 0.0
    assert fields["kind"]["floors"]["surface"]["available"]
    text = "\n".join(reference_lines({**out, "teacher_mode": "generate"}))
    assert "## JSON fields in context" in text and "| kind |" in text
