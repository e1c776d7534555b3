"""The evaluation's batched answers equal one request at a time, and every row's
latency is measured the same way, on the `eval.latency_requests` sample."""

from __future__ import annotations

from conftest import make_task
from promptdistill.evaluation import systems
from promptdistill.records import Example
from promptdistill.teachers.local import LocalTeacher

TEXTS = ["Hello there, how are you today?", "Bonjour à tous", "Guten Morgen, wie geht's?", "a", "你好", "x = {text}",
         "Очень длинное предложение на русском языке"]


def _examples():
    return [Example(id=str(i), text=t, gold_label=["en", "fr", "de"][i % 3]) for i, t in enumerate(TEXTS)]


def test_batched_system_answers_equal_one_request_at_a_time(varied_model):
    task = make_task(max_new_tokens=6)
    examples = _examples()
    batched = systems.predict_system(task, varied_model, examples, "student", progress=False, batch_size=4)
    alone = [systems.generate_answer(task, varied_model, task.student_messages(e.text)) for e in examples]
    assert [(p.reply, p.prompt_tokens) for p in batched] == alone
    assert all(p.latency_s is None for p in batched)  # latency is measured apart


def test_batched_teacher_row_equals_one_request_at_a_time(varied_model):
    task = make_task(answer_mode="choose", max_new_tokens=6)
    examples = _examples()
    teacher = LocalTeacher(varied_model)
    batched = systems.predict_teacher(task, teacher, examples, mode="choose", progress=False, batch_size=3)
    for e, p in zip(examples, batched):
        (record,) = teacher.label([e], task, "choose", 0, 1, reuse_prefix=False)
        assert (p.label, p.reply) == (record.label, record.teacher_reply)
        assert p.label_probs.keys() == record.label_probs.keys()
        assert all(abs(p.label_probs[k] - record.label_probs[k]) <= 1e-5 for k in p.label_probs)


def test_metrics_from_batches_equal_metrics_from_single_requests(varied_model, tmp_path, monkeypatch):
    task = make_task(answer_mode="choose", max_new_tokens=6)
    examples = _examples()
    run = dict(teacher=LocalTeacher(varied_model), student=varied_model, base=varied_model, progress=False, latency_requests=3)
    batched = systems.evaluate_systems(task, examples, tmp_path / "batched", **run)
    monkeypatch.setattr(systems, "EVAL_BATCH_SIZE", 1)  # one input per batch: single requests
    single = systems.evaluate_systems(task, examples, tmp_path / "single", **run)
    for name in ("teacher", "base", "student"):
        a, b = batched["systems"][name], single["systems"][name]
        for key in ("n", "accuracy", "agreement", "parse_rate", "mean_prompt_tokens", "confusion"):
            assert a[key] == b[key], (name, key)
        if b["kl_to_teacher"] is not None:
            assert abs(a["kl_to_teacher"] - b["kl_to_teacher"]) <= 1e-5
    assert batched["latency"]["requests"] == 3 and "one generated answer" in batched["latency"]["how"]


def test_every_row_times_the_same_sample_with_one_generated_answer(varied_model, tmp_path, monkeypatch):
    task = make_task(answer_mode="choose", max_new_tokens=6)
    examples = _examples()
    asked = []
    real_label = LocalTeacher.label

    def spy(self, batch, task_, mode, seed, batch_size=None, *, reuse_prefix=True):
        if batch_size == 1 and not reuse_prefix:
            asked.append(("teacher", mode, [e.id for e in batch]))
        return real_label(self, batch, task_, mode, seed, batch_size, reuse_prefix=reuse_prefix)

    real_answer = systems.generate_answer
    monkeypatch.setattr(LocalTeacher, "label", spy)
    monkeypatch.setattr(systems, "generate_answer", lambda *a, **k: (asked.append(("model", "generate", None)), real_answer(*a, **k))[1])
    report = systems.evaluate_systems(task, examples, tmp_path / "eval", teacher=LocalTeacher(varied_model), student=varied_model,
                                      base=varied_model, progress=False, latency_requests=2)
    # the teacher answers in choose mode, yet its latency is one generated answer per request, like the others'
    assert [a for a in asked if a[0] == "teacher"] == [("teacher", "generate", ["0"]), ("teacher", "generate", ["1"])]
    assert len([a for a in asked if a[0] == "model"]) == 4  # base and student, 2 requests each
    for name in ("teacher", "base", "student"):
        assert report["systems"][name]["median_latency_ms"] > 0


def test_latency_requests_must_be_at_least_one():
    import pytest

    from promptdistill.config import config_from_dict
    from promptdistill.errors import PromptDistillError

    raw = {"task": {"user_template": "Classify:\n{text}", "labels": ["a", "b"]}, "eval": {"latency_requests": 0}}
    with pytest.raises(PromptDistillError) as info:
        config_from_dict(raw)
    assert "eval.latency_requests" in str(info.value)
    raw["eval"]["latency_requests"] = 5
    assert config_from_dict(raw).eval.latency_requests == 5


def test_label_distributions_in_a_batch_equal_one_at_a_time(tiny):
    """The evaluation's batched label distributions (the chat template's common
    opening cached once, every input's candidates packed after it) equal the
    one-input path, for a LoRA-wrapped student and for its base view."""
    import torch

    from conftest import make_task
    from promptdistill.config import TrainConfig
    from promptdistill.evaluation.fidelity import FidelityScorer
    from promptdistill.models import AdapterDisabled, LoadedModel
    from promptdistill.training.recipe import lora_model

    task = make_task(labels=["la", "cy", "gr"], answer_mode="choose")
    student = lora_model(tiny.model, TrainConfig(lora_rank=4))
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    student.eval()
    texts = ["hello world", "привет мир как дела", "γεια σου", "abc def ghi jkl mno", "x"]
    views = {"student": student, "base": AdapterDisabled(student)}
    results = {}
    for name, model in views.items():
        loaded = LoadedModel(model, tiny.tokenizer, name, "cpu")
        scorer = FidelityScorer(task, None)
        one = [scorer.model_label_probs(loaded, t) for t in texts]
        batch = scorer.model_label_probs_batch(loaded, texts)
        for a, b in zip(one, batch):
            assert list(a) == list(b) == task.labels
            assert all(abs(a[k] - b[k]) < 1e-5 for k in a)
        results[name] = batch
    # the adapter matters: the two views are not the same model
    assert max(abs(a[k] - b[k]) for a, b in zip(results["student"], results["base"]) for k in a) > 1e-3
