"""The evaluation's batched answers equal one request at a time, and every row's
latency is measured the same way, on the `eval.latency_requests` sample."""

from __future__ import annotations

from conftest import make_task, one_request_answer
from promptdistill import engine
from promptdistill.config import EvalConfig
from promptdistill.evaluation import latency, systems
from promptdistill.records import Example
from promptdistill.render import render_prompt
from promptdistill.teachers.local import LocalTeacher, shared_prefix
from promptdistill.teachers.server import ServerTeacher

TEXTS = ["Hello there, how are you today?", "Bonjour à tous", "Guten Morgen, wie geht's?", "a", "你好", "x = {text}",
         "Очень длинное предложение на русском языке"]


def _examples():
    return [Example(id=str(i), text=t, gold_label=["en", "fr", "de"][i % 3]) for i, t in enumerate(TEXTS)]


def test_batched_system_answers_equal_one_request_at_a_time(varied_model):
    task = make_task(max_new_tokens=6)
    examples = _examples()
    batched = systems.predict_system(task, varied_model, examples, "student", progress=False, batch_size=4)
    alone = [one_request_answer(task, varied_model, task.student_messages(e.text)) for e in examples]
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
    run = dict(systems=systems.Systems(LocalTeacher(varied_model), varied_model, varied_model),
               settings=EvalConfig(latency_requests=3, general_ability=False), progress=False)
    batched = systems.evaluate_systems(task, examples, tmp_path / "batched", **run)
    monkeypatch.setattr(systems, "GENERATE_BATCH_SIZE", 1)  # one input per batch: single requests
    single = systems.evaluate_systems(task, examples, tmp_path / "single", **run)
    for name in ("teacher", "base", "student"):
        a, b = batched["systems"][name], single["systems"][name]
        for key in ("n", "accuracy", "agreement", "parse_rate", "mean_prompt_tokens", "confusion"):
            assert a[key] == b[key], (name, key)
        if b["kl_to_teacher"] is not None:
            assert abs(a["kl_to_teacher"] - b["kl_to_teacher"]) <= 1e-5
    assert batched["latency"]["requests"] == 3 and "one generated answer" in batched["latency"]["how"]


def test_every_row_times_the_same_sample_with_one_generated_answer(varied_model, tmp_path, monkeypatch):
    """Each row's latency requests: the same inputs, one at a time, one generated answer through
    the same decoder, on top of a cache of what all that row's requests start with."""
    task = make_task(answer_mode="choose", max_new_tokens=6)
    examples = _examples()
    teacher = LocalTeacher(varied_model)
    tok = varied_model.tokenizer
    teacher_prompt = shared_prefix(task, tok)
    opening = shared_prefix(task, tok, task.student_messages)
    assert 0 < len(opening) < len(teacher_prompt)
    asked, decoded = [], []
    real_label, real_decode = LocalTeacher.label, engine.decode_with_prefix

    def spy_label(self, batch, task_, mode, seed, batch_size=None, *, reuse_prefix=True):
        if batch_size == 1:
            asked.append((mode, [e.id for e in batch], reuse_prefix))
        return real_label(self, batch, task_, mode, seed, batch_size, reuse_prefix=reuse_prefix)

    def spy_decode(prefix, suffixes, **kwargs):
        if len(suffixes) == 1:
            decoded.append((prefix.prefix, suffixes[0], kwargs["max_new_tokens"]))
        return real_decode(prefix, suffixes, **kwargs)

    monkeypatch.setattr(LocalTeacher, "label", spy_label)
    monkeypatch.setattr(engine, "decode_with_prefix", spy_decode)
    report = systems.evaluate_systems(task, examples, tmp_path / "eval", systems.Systems(teacher, varied_model, varied_model),
                                      EvalConfig(latency_requests=2, general_ability=False), progress=False)
    # the teacher answers in choose mode, yet its latency is one generated answer per request, like the others'
    assert asked == [("generate", ["0"], True), ("generate", ["1"], True)]
    whole = {e.id: render_prompt(tok, task.teacher_messages(e.text)) for e in examples[:2]}
    student = [render_prompt(tok, task.student_messages(e.text)) for e in examples[:2]]
    assert decoded == ([(teacher_prompt, whole[i][len(teacher_prompt):], 6) for i in ("0", "1")]
                       + [(opening, p[len(opening):], 6) for p in student] * 2)  # base, then student
    for name in ("teacher", "base", "student"):
        assert report["systems"][name]["median_latency_ms"] > 0
    section = report["latency"]
    assert section["requests"] == 2 and section["teacher_prompt_tokens"] == len(teacher_prompt)
    assert section["teacher_prompt_ms"] > 0 and f"the {len(teacher_prompt)} prompt tokens" in section["how"]


def test_a_latency_request_answers_as_the_whole_prompt_does(varied_model):
    """With the chat template's opening cached, one request answers what the whole prompt answers."""
    task = make_task(max_new_tokens=8)
    request = latency.model_request(task, varied_model)
    tok = varied_model.tokenizer
    for e in _examples():
        (got,) = request(e)
        want, _ = one_request_answer(task, varied_model, task.student_messages(e.text))
        assert tok.decode(got.text_ids, skip_special_tokens=True) == want


def test_the_prompt_cost_is_only_measured_where_the_model_runs_here(varied_model):
    task = make_task()
    seconds, tokens = latency.prompt_cost(task, LocalTeacher(varied_model))
    assert seconds > 0 and tokens == len(shared_prefix(task, varied_model.tokenizer))

    # a server teacher's prompt is computed (and cached, or not) where it runs: nothing to measure here
    remote = ServerTeacher("http://127.0.0.1:9", "m", tokenizer=varied_model.tokenizer)
    assert latency.prompt_cost(task, remote) is None


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
