"""Rendering with the real chat template, choose-mode scoring against a direct
computation, and teacher labeling (choose, generate, resume, settings check)
on the tiny random model."""

from __future__ import annotations

import json

import pytest
import torch

from promptdistill import engine
from promptdistill.config import TaskConfig
from promptdistill.errors import PromptDistillError
from promptdistill.records import Example
from promptdistill.render import render_example, render_prompt
from promptdistill.task import Task
from promptdistill.labeling import label_candidates, label_distribution, label_inputs

IM_END = "<|im_end|>"


def conversation(user="Bonjour tout le monde", reply="Final Answer: en", system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


# --------------------------------------------------------------------- render


@pytest.mark.parametrize("system", [None, "You classify languages. Reply with Final Answer: xx."])
def test_render_weights_on_reply_and_end_of_turn_only(tokenizer, system):
    messages = conversation(system=system)
    ex = render_example(tokenizer, messages)
    assert len(ex.input_ids) == len(ex.weights)
    assert set(ex.weights) == {0.0, 1.0}

    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    first = ex.weights.index(1.0)
    # weights: a block of zeros, then a block of ones running to the end
    assert all(w == 0.0 for w in ex.weights[:first])
    assert all(w == 1.0 for w in ex.weights[first:])
    trained = ex.input_ids[first:]
    assert trained[-1] == im_end
    assert trained.count(im_end) == 1
    assert tokenizer.decode(trained, skip_special_tokens=False) == "Final Answer: en" + IM_END
    assert ex.num_trained == len(trained)
    assert ex.num_tokens == len(ex.input_ids)

    # the unweighted prefix is exactly what the model sees at inference time
    assert ex.input_ids[:first] == render_prompt(tokenizer, messages[:-1])
    assert tokenizer.decode(ex.input_ids[:first]).endswith("<|im_start|>assistant\n")

    # the whole sequence is the template's rendering without the newline after <|im_end|>
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert full_text.endswith(IM_END + "\n")
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(full[-1:]) == "\n"
    assert ex.input_ids == full[:-1]


def test_render_multiline_reply(tokenizer):
    messages = conversation(reply="Reasoning: accents.\nFinal Answer: fr")
    ex = render_example(tokenizer, messages)
    first = ex.weights.index(1.0)
    assert tokenizer.decode(ex.input_ids[first:]) == "Reasoning: accents.\nFinal Answer: fr" + IM_END
    assert ex.input_ids[:first] == render_prompt(tokenizer, messages[:-1])


def test_render_refuses_conversation_without_reply(tokenizer):
    with pytest.raises(PromptDistillError):
        render_example(tokenizer, [{"role": "user", "content": "hi"}])
    with pytest.raises(PromptDistillError):
        render_example(tokenizer, [])


# --------------------------------------------------------------- choose mode

LABELS = ["en", "fr", "de", "zh", "ot"]


def make_task(**kw) -> Task:
    fields = dict(user_template="Which language is this?\n{text}\nAnswer with Final Answer: xx.", labels=LABELS,
                  answer_mode="choose", max_new_tokens=6)
    fields.update(kw)
    return Task(TaskConfig(**fields))


def direct_logprob(model, context: list[int], candidate: list[int]) -> torch.Tensor:
    """log p(candidate | context) from one plain forward over context + candidate (no cache)."""
    ids = torch.tensor([context + candidate])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[len(context) - 1 + j, t] for j, t in enumerate(candidate))


def reference_candidates(tokenizer, messages, replies):
    """Each reply's tokens as the template renders them, up to and including <|im_end|>."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = []
    for reply in replies:
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}], tokenize=False)
        assert full.startswith(prompt)
        ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        im_end = tokenizer.convert_tokens_to_ids(IM_END)
        out.append(ids[: ids.index(im_end) + 1])
    return out


@pytest.mark.parametrize("text", ["Bonjour tout le monde", "The quick brown fox {text} jumps."])
def test_label_distribution_matches_direct_computation(tiny, text):
    task = make_task()
    tok = tiny.tokenizer
    messages = task.teacher_messages(text)
    candidates = label_candidates(task, tok, messages)
    assert candidates == reference_candidates(tok, messages, [f"Final Answer: {lab}" for lab in LABELS])

    probs = label_distribution(task, tiny, messages, candidates)
    assert list(probs) == LABELS

    context = render_prompt(tok, messages)
    logps = torch.stack([direct_logprob(tiny.model, context, c) for c in candidates]).double()
    expected = torch.softmax(logps, dim=0)
    got = torch.tensor([probs[lab] for lab in LABELS], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
    assert abs(sum(probs.values()) - 1.0) < 1e-9
    assert all(0.0 <= p <= 1.0 for p in probs.values())


def test_score_continuations_different_lengths(tiny):
    tok = tiny.tokenizer
    context = render_prompt(tok, [{"role": "user", "content": "Count with me please."}])
    rng = torch.Generator().manual_seed(0)
    vocab = len(tok)
    for lengths in ([1, 2, 5], [5, 1, 2], [2, 2, 1, 5, 3]):
        conts = [torch.randint(0, vocab, (n,), generator=rng).tolist() for n in lengths]
        got = engine.score_continuations(tiny.model, context, conts, pad_id=tok.pad_token_id)
        assert got.shape == (len(conts),)
        expected = torch.stack([direct_logprob(tiny.model, context, c) for c in conts])
        assert torch.allclose(got.float(), expected, atol=1e-5, rtol=0), (lengths, got, expected)


def test_score_continuations_all_single_tokens(tiny):
    tok = tiny.tokenizer
    context = render_prompt(tok, [{"role": "user", "content": "hi"}])
    conts = [[5], [100], [2000]]
    got = engine.score_continuations(tiny.model, context, conts, pad_id=tok.pad_token_id)
    expected = torch.stack([direct_logprob(tiny.model, context, c) for c in conts])
    assert torch.allclose(got.float(), expected, atol=1e-5, rtol=0)


def read_jsonl(path):
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


TEXTS = ["Hello, how are you?", "Bonjour, comment ça va ?", "Wie geht es dir?", "你好吗？", "¿Cómo estás?",
         "Text with {text} and {braces}"]


def examples(n=len(TEXTS)):
    return [Example(id=f"id{i}", text=t, gold_label=LABELS[i % len(LABELS)]) for i, t in enumerate(TEXTS[:n])]


def test_label_inputs_choose_mode(tiny, tmp_path):
    task = make_task()
    ex = examples(4)
    out = tmp_path / "labeled.jsonl"
    summary = label_inputs(ex, task, tiny, out, progress=False)
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [e.id for e in ex]
    for r, e in zip(records, ex):
        assert r["status"] == "ok"
        assert r["label"] in LABELS
        probs = r["label_probs"]
        assert set(probs) == set(LABELS)
        assert abs(sum(probs.values()) - 1.0) < 1e-6
        assert max(probs, key=probs.get) == r["label"]
        assert r["teacher_reply"] == f"Final Answer: {r['label']}"
        assert r["messages"] == [
            {"role": "user", "content": e.text},
            {"role": "assistant", "content": f"Final Answer: {r['label']}"},
        ]
        assert r["text"] == e.text and r["gold_label"] == e.gold_label
    rejects = tmp_path / "labeled.rejects.jsonl"
    assert not rejects.exists() or read_jsonl(rejects) == []
    assert summary["total"] == 4 and summary["labeled"] == 4 and summary["rejected"] == 0
    assert summary["by_status"] == {"ok": 4}
    expected_acc = sum(r["label"] == r["gold_label"] for r in records) / 4
    assert summary["teacher_accuracy"] == pytest.approx(expected_acc)
    assert summary["gold_count"] == 4
    meta = json.loads((tmp_path / "labeled.jsonl.meta.json").read_text())
    assert meta["answer_mode"] == "choose" and meta["task_fingerprint"] == task.fingerprint()


def test_label_inputs_choose_matches_label_distribution(tiny, tmp_path):
    task = make_task(system_prompt="Identify the language.", user_template=None)
    ex = examples(2)
    out = tmp_path / "labeled.jsonl"
    # whole requests, the same computation as label_distribution; the shared-prefix
    # path is compared with it in test_prefix_reuse.py
    label_inputs(ex, task, tiny, out, progress=False, reuse_prefix=False)
    for r, e in zip(read_jsonl(out), ex):
        messages = task.teacher_messages(e.text)
        probs = label_distribution(task, tiny, messages, label_candidates(task, tiny.tokenizer, messages))
        assert r["label_probs"] == pytest.approx(probs, abs=1e-9)


def test_label_inputs_generate_mode_rejects_garbage(tiny, tmp_path):
    task = make_task(answer_mode="generate")
    ex = examples(5)
    out = tmp_path / "labeled.jsonl"
    rejects = tmp_path / "rej.jsonl"
    summary = label_inputs(ex, task, tiny, out, rejects, batch_size=2, progress=False)
    good = read_jsonl(out) if out.exists() else []
    bad = read_jsonl(rejects)
    assert good == []
    assert len(good) + len(bad) == len(ex)
    assert sorted(r["id"] for r in bad) == sorted(e.id for e in ex)
    for r in bad:
        assert r["status"] == "no_match"
        assert r["label"] is None
        assert isinstance(r["teacher_reply"], str)
        assert "Final Answer" not in r["teacher_reply"]
        assert r["messages"] == [{"role": "user", "content": next(e.text for e in ex if e.id == r["id"])}]
    assert summary["total"] == 5
    assert summary["labeled"] == 0
    assert summary["rejected"] == 5
    assert summary["by_status"] == {"no_match": 5}
    assert summary["teacher_accuracy"] == 0.0


def test_label_inputs_resume_after_torn_write(tiny, tmp_path):
    task = make_task()
    ex = examples(6)
    full_out = tmp_path / "full" / "labeled.jsonl"
    label_inputs(ex, task, tiny, full_out, progress=False)
    reference = read_jsonl(full_out)
    assert len(reference) == 6

    # an interrupted run: two whole records and a torn third line
    # (the same files as the finished run, cut short: output and its meta sidecar)
    out = tmp_path / "resumed" / "labeled.jsonl"
    out.parent.mkdir()
    meta = full_out.with_name(full_out.name + ".meta.json")
    out.with_name(out.name + ".meta.json").write_bytes(meta.read_bytes())
    lines = full_out.read_text(encoding="utf-8").split("\n")
    third = lines[2]
    out.write_text(lines[0] + "\n" + lines[1] + "\n" + third[: len(third) // 2], encoding="utf-8")

    summary = label_inputs(ex, task, tiny, out, progress=False)
    resumed = read_jsonl(out)
    assert [r["id"] for r in resumed] == [e.id for e in ex]
    assert len({r["id"] for r in resumed}) == 6
    assert resumed == reference
    assert summary["total"] == 6 and summary["labeled"] == 6

    # running again changes nothing
    label_inputs(ex, task, tiny, out, progress=False)
    assert read_jsonl(out) == reference


def test_label_inputs_resume_labels_only_missing(tiny, tmp_path, monkeypatch):
    task = make_task()
    ex = examples(6)
    out = tmp_path / "labeled.jsonl"
    label_inputs(ex[:3], task, tiny, out, progress=False)
    seen = []
    real = label_distribution

    def spy(task_, loaded, messages, candidates, prefix=None):
        seen.append(messages[-1]["content"])
        return real(task_, loaded, messages, candidates, prefix)

    import promptdistill.labeling as teacher_mod

    monkeypatch.setattr(teacher_mod, "label_distribution", spy)
    summary = label_inputs(ex, task, tiny, out, progress=False)
    assert len(seen) == 3
    assert seen == [task.teacher_messages(e.text)[-1]["content"] for e in ex[3:]]
    assert [r["id"] for r in read_jsonl(out)] == [e.id for e in ex]
    assert summary["labeled"] == 6


def test_changed_prompt_refused_unless_forced(tiny, tmp_path):
    ex = examples(3)
    out = tmp_path / "labeled.jsonl"
    task = make_task()
    label_inputs(ex, task, tiny, out, progress=False)
    before = out.read_text(encoding="utf-8")

    changed = make_task(user_template="A different prompt.\n{text}")
    with pytest.raises(PromptDistillError) as info:
        label_inputs(ex, changed, tiny, out, progress=False)
    assert "task_fingerprint" in str(info.value)
    assert str(out) in str(info.value)
    assert out.read_text(encoding="utf-8") == before  # untouched

    summary = label_inputs(ex, changed, tiny, out, force=True, progress=False, reuse_prefix=False)
    records = read_jsonl(out)
    assert [r["id"] for r in records] == [e.id for e in ex]
    assert summary["total"] == 3 and summary["labeled"] == 3
    meta = json.loads((tmp_path / "labeled.jsonl.meta.json").read_text())
    assert meta["task_fingerprint"] == changed.fingerprint()
    # the relabeled records come from the new prompt
    for r, e in zip(records, ex):
        messages = changed.teacher_messages(e.text)
        probs = label_distribution(changed, tiny, messages, label_candidates(changed, tiny.tokenizer, messages))
        assert r["label_probs"] == pytest.approx(probs, abs=1e-9)


def test_changed_mode_refused(tiny, tmp_path):
    ex = examples(2)
    out = tmp_path / "labeled.jsonl"
    label_inputs(ex, make_task(), tiny, out, progress=False)
    with pytest.raises(PromptDistillError, match="answer_mode"):
        label_inputs(ex, make_task(), tiny, out, mode="generate", progress=False)


def test_choose_mode_needs_labels(tiny, tmp_path):
    task = Task(TaskConfig(system_prompt="p"))
    with pytest.raises(PromptDistillError):
        label_inputs(examples(1), task, tiny, tmp_path / "o.jsonl", mode="choose", progress=False)


def _reference_and_copy(tiny, tmp_path, task, ex):
    """Label `ex` once; return (reference records, raw bytes, path of a fresh output folder with the same meta)."""
    full_out = tmp_path / "full" / "labeled.jsonl"
    label_inputs(ex, task, tiny, full_out, progress=False)
    out = tmp_path / "resumed" / "labeled.jsonl"
    out.parent.mkdir()
    meta = full_out.with_name(full_out.name + ".meta.json")
    out.with_name(out.name + ".meta.json").write_bytes(meta.read_bytes())
    return read_jsonl(full_out), full_out.read_bytes(), out


def test_resume_when_torn_line_is_whole_record_without_newline(tiny, tmp_path):
    # A kill between the record's last byte and its newline: the last line parses
    # as JSON but is still torn (the appender cuts it), so it must be relabeled.
    task = make_task()
    ex = examples(4)
    reference, data, out = _reference_and_copy(tiny, tmp_path, task, ex)
    lines = data.split(b"\n")
    out.write_bytes(lines[0] + b"\n" + lines[1] + b"\n" + lines[2])  # third record complete, no newline
    summary = label_inputs(ex, task, tiny, out, progress=False)
    assert read_jsonl(out) == reference
    assert summary["labeled"] == 4


def test_resume_when_torn_inside_multibyte_character(tiny, tmp_path):
    # Writes are bytes: a kill can cut a non-ASCII text in the middle of a character.
    task = make_task()
    ex = examples(5)  # the 4th input is Chinese, stored unescaped (ensure_ascii=False)
    reference, data, out = _reference_and_copy(tiny, tmp_path, task, ex)
    lines = data.split(b"\n")
    fourth = lines[3]
    cut = fourth.index("你".encode()) + 1  # one byte into a 3-byte character
    out.write_bytes(b"\n".join(lines[:3]) + b"\n" + fourth[:cut])
    summary = label_inputs(ex, task, tiny, out, progress=False)
    assert read_jsonl(out) == reference
    assert summary["labeled"] == 5
