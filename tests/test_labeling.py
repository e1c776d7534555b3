"""Labeling's orchestration and the local teacher's answers, on tiny random models.

What every backend must do (order, modes, reply prefix, seeds, control
tokens, resume) is in test_teacher_contract.py. Here: what label_inputs adds
around a teacher (records and summary, the sidecar and its refusals, torn
lines on resume, voting and confidence), the local teacher's choose-mode
scoring against a direct computation, its shared-prefix path against whole
requests, and the settings a teacher backend cannot serve.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from conftest import direct_logprob, read_jsonl
from promptdistill.config import Config, DataConfig, TaskConfig, config_from_dict
from promptdistill.errors import PromptDistillError
from promptdistill.labeling import label_inputs
from promptdistill.records import Example
from promptdistill.render import render_prompt
from promptdistill.task import Task
from promptdistill.teachers.local import LocalTeacher, label_distribution, shared_prefix
from promptdistill.teachers.records import label_candidates

LABELS = ["en", "fr", "de", "zh", "ot"]
TEXTS = ["Hello, how are you?", "Bonjour, comment \u00e7a va ?", "Wie geht es dir?", "\u4f60\u597d\u5417\uff1f", "\u00bfC\u00f3mo est\u00e1s?",
         "Text with {text} and {braces}"]
TEMPLATE = "Which language is this?\n{text}\nAnswer with Final Answer: xx."


def config(**task) -> Config:
    return Config(task=TaskConfig(**{"user_template": TEMPLATE, "labels": LABELS, "answer_mode": "choose", "max_new_tokens": 6,
                                     **task}))


def open_config(**task) -> Config:
    # The random model never writes "Final Answer:", so its first word is read as the label.
    return Config(task=TaskConfig(**{"user_template": "Say one word about:\n{text}", "answer_pattern": r"^\s*(\S+)",
                                     "answer_template": "{label}", "max_new_tokens": 3, **task}))


def examples(n=len(TEXTS)):
    return [Example(id=f"id{i}", text=t, gold_label=LABELS[i % len(LABELS)]) for i, t in enumerate(TEXTS[:n])]


def all_records(out):
    return read_jsonl(out) + read_jsonl(out.with_name(out.stem + ".rejects.jsonl"))


# ------------------------------------------------------ records and summary


def test_choose_mode_records_summary_and_sidecar(tiny, tmp_path):
    cfg = config()
    ex = examples(4)
    out = tmp_path / "labeled.jsonl"
    summary = label_inputs(cfg, ex, LocalTeacher(tiny), out, progress=False)
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [e.id for e in ex]
    for r, e in zip(records, ex):
        assert r["status"] == "ok" and r["label"] in LABELS
        assert r["teacher_reply"] == f"Final Answer: {r['label']}"
        assert r["messages"] == [{"role": "user", "content": e.text}, {"role": "assistant", "content": f"Final Answer: {r['label']}"}]
        assert r["text"] == e.text and r["gold_label"] == e.gold_label
    assert read_jsonl(tmp_path / "labeled.rejects.jsonl") == []
    assert (summary["total"], summary["labeled"], summary["rejected"], summary["by_status"]) == (4, 4, 0, {"ok": 4})
    assert summary["teacher_accuracy"] == pytest.approx(sum(r["label"] == r["gold_label"] for r in records) / 4)
    meta = json.loads((tmp_path / "labeled.jsonl.meta.json").read_text())
    assert meta == {"teacher": tiny.name, "task_fingerprint": Task(cfg.task).fingerprint(), "answer_mode": "choose",
                    "max_new_tokens": 6, "teacher_max_new_tokens": 6, "temperature": 0.0, "seed": 0, "backend": "transformers",
                    "rejects": "labeled.rejects.jsonl"}


def test_generate_mode_rejects_garbage(tiny, tmp_path):
    ex = examples(5)
    out, rejects = tmp_path / "labeled.jsonl", tmp_path / "rej.jsonl"
    summary = label_inputs(config(answer_mode="generate"), ex, LocalTeacher(tiny), out, rejects, batch_size=2, progress=False)
    assert read_jsonl(out) == []
    bad = read_jsonl(rejects)
    assert [r["id"] for r in bad] == [e.id for e in ex]
    for r, e in zip(bad, ex):
        assert r["status"] == "no_match" and r["label"] is None and "Final Answer" not in r["teacher_reply"]
        assert r["messages"] == [{"role": "user", "content": e.text}]
    assert (summary["labeled"], summary["rejected"], summary["by_status"], summary["teacher_accuracy"]) == (0, 5, {"no_match": 5}, 0.0)


def test_label_inputs_never_appends_to_a_file_that_is_not_labels(tiny, tmp_path):
    """Called from Python, label_inputs checks its outputs as the CLI does: a user's file stays as it was."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not labels\n", encoding="utf-8")
    for out, rejects in ((notes, None), (tmp_path / "labels.jsonl", notes)):
        with pytest.raises(PromptDistillError, match="notes.txt"):
            label_inputs(config(), examples(2), LocalTeacher(tiny), out, rejects, progress=False)
    assert notes.read_text(encoding="utf-8") == "my notes, not labels\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_old_call_gets_a_clear_error(tiny, tmp_path):
    with pytest.raises(TypeError, match=r"takes the Config and a teachers.Teacher .* got list and LoadedModel"):
        label_inputs(examples(1), config().task, tiny, tmp_path / "o.jsonl")


def test_choose_mode_needs_labels(tiny, tmp_path):
    with pytest.raises(PromptDistillError):
        label_inputs(Config(task=TaskConfig(system_prompt="p")), examples(1), LocalTeacher(tiny), tmp_path / "o.jsonl", mode="choose",
                     progress=False)


# ------------------------------------------------------------- the sidecar


@pytest.mark.parametrize("change, what", [
    (dict(config=config(user_template="A different prompt.\n{text}")), "task_fingerprint"),
    (dict(mode="generate"), "answer_mode"),
    (dict(config=replace(config(), data=DataConfig(seed=1))), "seed"),
])
def test_relabeling_with_other_settings_is_refused_unless_forced(tiny, tmp_path, change, what):
    ex = examples(3)
    out = tmp_path / "labeled.jsonl"
    teacher = LocalTeacher(tiny)
    label_inputs(config(), ex, teacher, out, progress=False)
    before = out.read_text(encoding="utf-8")
    cfg = change.get("config", config())
    with pytest.raises(PromptDistillError) as info:
        label_inputs(cfg, ex, teacher, out, mode=change.get("mode"), progress=False)
    assert what in str(info.value) and str(out) in str(info.value)
    assert out.read_text(encoding="utf-8") == before  # untouched
    summary = label_inputs(cfg, ex, teacher, out, mode=change.get("mode"), force=True, progress=False)
    assert summary["total"] == 3
    assert [r["id"] for r in all_records(out)] == [e.id for e in ex]
    meta = json.loads((tmp_path / "labeled.jsonl.meta.json").read_text())
    assert (meta["task_fingerprint"], meta["answer_mode"], meta["seed"]) == (
        Task(cfg.task).fingerprint(), change.get("mode", "choose"), cfg.data.seed)


def _reference_and_copy(tiny, tmp_path, cfg, ex):
    """Label `ex` once; return (reference records, raw bytes, a fresh output path with the same sidecar)."""
    full_out = tmp_path / "full" / "labeled.jsonl"
    label_inputs(cfg, ex, LocalTeacher(tiny), full_out, progress=False)
    out = tmp_path / "resumed" / "labeled.jsonl"
    out.parent.mkdir()
    meta = full_out.with_name(full_out.name + ".meta.json")
    out.with_name(out.name + ".meta.json").write_bytes(meta.read_bytes())
    return read_jsonl(full_out), full_out.read_bytes(), out


@pytest.mark.parametrize("tear", ["mid-line", "whole record without newline", "inside a multibyte character"])
def test_resume_relabels_a_torn_last_line(tiny, tmp_path, tear):
    """A kill can land anywhere in a write: the torn last line is cut and relabeled,
    and the file ends equal to an uninterrupted run's (running again changes nothing)."""
    cfg, ex = config(), examples(5)  # the 4th input is Chinese, stored unescaped
    reference, data, out = _reference_and_copy(tiny, tmp_path, cfg, ex)
    lines = data.split(b"\n")
    if tear == "mid-line":
        torn = lines[:2] + [lines[2][: len(lines[2]) // 2]]
    elif tear == "whole record without newline":  # parses as JSON, but the newline never came
        torn = lines[:3]
    else:
        torn = lines[:3] + [lines[3][: lines[3].index("\u4f60".encode()) + 1]]
    out.write_bytes(b"\n".join(torn))
    summary = label_inputs(cfg, ex, LocalTeacher(tiny), out, progress=False)
    assert_same_records(read_jsonl(out), reference)
    assert summary["labeled"] == 5
    label_inputs(cfg, ex, LocalTeacher(tiny), out, progress=False)
    assert_same_records(read_jsonl(out), reference)


def assert_same_records(got: list[dict], want: list[dict]) -> None:
    """Records equal, choose mode's probabilities (and the confidence and entropy
    made from them) to 1e-6: a batch of inputs is scored in shared forwards, and
    which inputs share one (a resumed run labels fewer) moves their float32
    sums in the last bits."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        close = ("label_probs", "confidence", "entropy")
        assert {k: v for k, v in g.items() if k not in close} == {k: v for k, v in w.items() if k not in close}
        if w.get("label_probs") is not None:
            assert g["label_probs"] == pytest.approx(w["label_probs"], abs=1e-6)
        for k in ("confidence", "entropy"):
            assert (g.get(k) is None) == (w.get(k) is None) and (w.get(k) is None or g[k] == pytest.approx(w[k], abs=1e-6))


# ------------------------------------------------------ the local teacher


def test_label_distribution_matches_direct_computation(tiny):
    task = Task(config().task)
    tok = tiny.tokenizer
    messages = task.teacher_messages("Bonjour tout le monde")
    candidates = label_candidates(task, tok, messages)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert [tok.decode(c) for c in candidates] == [f"Final Answer: {lab}<|im_end|>" for lab in LABELS]
    assert all(c[-1] == im_end for c in candidates)
    probs = label_distribution(task, tiny, messages, candidates)
    assert list(probs) == LABELS
    context = render_prompt(tok, messages)
    expected = torch.softmax(torch.stack([direct_logprob(tiny.model, context, c) for c in candidates]).double(), dim=0)
    assert torch.allclose(torch.tensor([probs[lab] for lab in LABELS], dtype=torch.float64), expected, atol=1e-5)


@pytest.mark.parametrize("form", ["user", "system"])
def test_shared_prefix_is_a_prefix_of_every_prompt(tokenizer, form):
    prompt = "You classify texts by script.\nRules:\n- Latin -> la\n- Han -> zh\n"
    cfg = TaskConfig(user_template=prompt + "Text:\n{text}") if form == "user" else TaskConfig(system_prompt=prompt)
    task = Task(cfg)
    prefix = shared_prefix(task, tokenizer)
    assert len(prefix) > 20
    for text in TEXTS:
        ids = render_prompt(tokenizer, task.teacher_messages(text))
        assert ids[: len(prefix)] == prefix and len(ids) > len(prefix)
    decoded = tokenizer.decode(prefix)
    assert "Han -> zh" in decoded and "Hello" not in decoded  # it stops before the input


@pytest.mark.parametrize("mode", ["generate", "sampled", "choose"])
def test_shared_prefix_gives_what_whole_requests_give(varied_model, tmp_path, mode):
    cfg = {"generate": open_config(top_logprobs=2),
           "sampled": open_config(samples=3, temperature=1.0, top_logprobs=0),
           "choose": config()}[mode]
    ex = examples()
    runs = {}
    for reuse in (False, True):
        out = tmp_path / f"{reuse}.jsonl"
        label_inputs(cfg, ex, LocalTeacher(varied_model), out, batch_size=4, progress=False, reuse_prefix=reuse)
        runs[reuse] = all_records(out)
    assert len(runs[True]) == len(runs[False]) == len(TEXTS)
    for fast, whole in zip(runs[True], runs[False]):
        for key in ("id", "teacher_reply", "label", "status", "votes"):
            assert fast.get(key) == whole.get(key)
        if mode == "choose":
            assert fast["label_probs"] == pytest.approx(whole["label_probs"], abs=1e-5)


def test_a_model_that_cannot_share_prefix_attention_labels_as_whole_requests(tokenizer, tmp_path, capsys):
    """A sliding-window model falls back to a copied prefix cache: same labels as
    whole requests, and the fallback is said at most once, not once per batch."""
    from conftest import build_varied_model

    model = build_varied_model(tmp_path / "sliding", tokenizer, seed=5, family="mistral", sliding_window=4)
    teacher = LocalTeacher(model)
    runs = {}
    for reuse in (True, False):
        out = tmp_path / f"{reuse}.jsonl"
        label_inputs(open_config(max_new_tokens=6), examples(), teacher, out, batch_size=2, progress=False, reuse_prefix=reuse)
        runs[reuse] = [(r["id"], r["teacher_reply"]) for r in all_records(out)]
    assert runs[True] == runs[False] and len(runs[True]) == len(TEXTS)
    notes = [line for line in capsys.readouterr().out.splitlines() if "shared-prefix attention is not available" in line]
    assert len(notes) <= 1


def test_the_prefix_cache_is_built_once_per_task(varied_model, tmp_path, monkeypatch):
    from promptdistill import engine

    built = []
    real = engine.PrefixCache

    def counting(model, prefix, *args, **kwargs):
        built.append(len(prefix))
        return real(model, prefix, *args, **kwargs)

    monkeypatch.setattr(engine, "PrefixCache", counting)
    teacher = LocalTeacher(varied_model)
    label_inputs(config(), examples(2), teacher, tmp_path / "a.jsonl", progress=False)
    label_inputs(config(), examples(4), teacher, tmp_path / "b.jsonl", progress=False)
    teacher.continuation_logprobs(Task(config().task), [TEXTS[0]], [[5, 6]])
    assert len([n for n in built if n]) == 1  # one shared prefix for the three calls


# ------------------------------------------------- voting and confidence


def test_majority_vote_share_and_low_confidence(varied_model, tmp_path):
    out = tmp_path / "a.jsonl"
    summary = label_inputs(open_config(samples=5, temperature=1.5, min_confidence=0.99), examples(), LocalTeacher(varied_model), out,
                           progress=False)
    records = sorted(all_records(out), key=lambda r: r["id"])
    assert len(records) == len(TEXTS)  # nothing dropped
    for r in records:
        votes = r["votes"]
        assert sum(votes.values()) == 5  # every sample parses to a first word
        top = max(votes.values())
        label = r["teacher_reply"].split()[0]
        assert votes[label] == top and r["confidence"] == pytest.approx(top / 5)
        assert r["status"] == ("ok" if r["confidence"] >= 0.99 else "low_confidence")
        if r["status"] == "low_confidence":
            assert len(r["messages"]) == 1 and r["label"] == label  # no assistant target for a rejected input
    assert summary["by_status"].get("low_confidence", 0) == sum(r["status"] == "low_confidence" for r in records) > 0


def test_choose_mode_confidence_and_entropy(varied_model, tmp_path):
    out = tmp_path / "d.jsonl"
    label_inputs(config(min_confidence=0.5), examples(), LocalTeacher(varied_model), out, progress=False)
    records = all_records(out)
    assert len(records) == len(TEXTS)
    for r in records:
        probs = r["label_probs"]
        assert r["confidence"] == pytest.approx(max(probs.values()))
        assert r["entropy"] == pytest.approx(-sum(p * math.log(p) for p in probs.values() if p > 0))
        assert r["label"] == max(probs, key=probs.get)
        assert r["status"] == ("ok" if r["confidence"] >= 0.5 else "low_confidence")


# ------------------------------------------------------------- settings


@pytest.mark.parametrize("raw, field", [
    ({"task": {"samples": 3}}, "task.samples"),  # greedy samples are all the same
    ({"task": {"samples": 0, "temperature": 1.0}}, "task.samples"),
    ({"task": {"samples": 3, "temperature": 1.0, "answer_mode": "choose", "labels": LABELS}}, "task.samples"),
    ({"task": {"min_confidence": 1.5}}, "task.min_confidence"),
    # on-policy training needs the teacher's per-token distributions: only the transformers backend has them
    ({"train": {"loss": "on-policy"}, "models": {"teacher_backend": "vllm"}}, "train.loss"),
    ({"train": {"loss": "on-policy"}, "models": {"teacher_backend": "vllm-server", "teacher_url": "http://x/v1"}}, "train.loss"),
])
def test_settings_a_teacher_cannot_serve_are_refused_when_read(raw, field):
    raw = {**raw, "task": {"user_template": "{text}", **raw.get("task", {})}}
    with pytest.raises(PromptDistillError) as err:
        config_from_dict(raw)
    assert err.value.field == field
