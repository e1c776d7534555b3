"""Shared-prefix attention computes what a copied prefix cache computes, and
falls back to the copied cache where a model's attention needs more."""

from __future__ import annotations

import json

import pytest
import torch

from promptdistill import engine, prefix_cache
from promptdistill.records import Example
from promptdistill.render import render_prompt
from promptdistill.config import Config
from promptdistill.labeling import label_inputs
from promptdistill.teachers.local import LocalTeacher, shared_prefix
from conftest import build_varied_model
from test_prefix_reuse import TEXTS, make_task


def _suffixes(loaded, task, texts):
    prefix_ids = shared_prefix(task, loaded.tokenizer)
    return prefix_ids, [render_prompt(loaded.tokenizer, task.teacher_messages(t))[len(prefix_ids):] for t in texts]


@pytest.mark.parametrize("kernel", ["fused", "generic"])
def test_continuation_logprobs_equal_with_shared_attention_and_copied_cache(varied_model, monkeypatch, kernel):
    """Both ways of computing the two-part attention (PyTorch's fused CPU kernel
    merged by log-sum-exp, and plain matrix products with one softmax)."""
    if kernel == "generic":
        monkeypatch.setattr(prefix_cache, "_FUSED_CPU", None)
    else:
        assert prefix_cache._FUSED_CPU is not None
    task = make_task()
    prefix_ids, suffixes = _suffixes(varied_model, task, TEXTS)
    replies = [[5, 6, 7], [9], [11, 12, 13, 14, 15], [4, 2], [8, 8, 8], [3, 1]]
    shared = engine.PrefixCache(varied_model.model, prefix_ids)
    copied = engine.PrefixCache(varied_model.model, prefix_ids, shared_attention=False)
    assert shared.shared is not None and copied.shared is None
    ours = engine.continuation_logprobs(shared, suffixes, replies, full=True)
    plain = engine.continuation_logprobs(copied, suffixes, replies, full=True)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_prefill_chunks_give_the_same_answers_as_one_chunk(varied_model, monkeypatch):
    """Suffixes of unlike lengths, in no particular order: prefilled in several
    short chunks they decode exactly as in one chunk, and come back in input order."""
    task = make_task()
    texts = TEXTS + ["b", "Hola, ¿qué tal estás hoy, amigo mío?", "θ", TEXTS[5] + " " + TEXTS[2]]
    prefix_ids, suffixes = _suffixes(varied_model, task, texts)
    cache = engine.PrefixCache(varied_model.model, prefix_ids)
    tok = varied_model.tokenizer

    def decode():
        got = engine.decode_with_prefix(cache, suffixes, max_new_tokens=8, eos_ids={tok.eos_token_id}, pad_id=tok.pad_token_id,
                                        top_logprobs=2)
        return [g.token_ids for g in got], [v for g in got for step in g.top for _, v in step]

    chunks = []
    split = prefix_cache._chunks
    monkeypatch.setattr(prefix_cache, "_chunks", lambda lengths, budget: chunks.append(list(split(lengths, budget))) or split(lengths, budget))
    monkeypatch.setattr(prefix_cache, "PREFILL_CHUNK_TOKENS", 10**6)
    whole_ids, whole_lp = decode()
    monkeypatch.setattr(prefix_cache, "PREFILL_CHUNK_TOKENS", 40)
    split_ids, split_lp = decode()
    assert len(chunks[0]) < len(chunks[1]) and len(chunks[1]) >= 3, chunks
    assert split_ids == whole_ids
    assert split_lp == pytest.approx(whole_lp, abs=1e-4)
    alone = [engine.decode_with_prefix(cache, [s], max_new_tokens=8, eos_ids={tok.eos_token_id}, pad_id=tok.pad_token_id)[0].token_ids
             for s in suffixes]
    assert split_ids == alone


@pytest.mark.parametrize("budget", [1, 16, 64, 10**6])
def test_chunks_cover_the_rows_in_order_within_budget_and_padding(budget):
    lengths = [2, 3, 3, 4, 9, 10, 10, 11, 30, 31]
    chunks = list(prefix_cache._chunks(lengths, budget))
    assert [i for start, end, _ in chunks for i in range(start, end)] == list(range(len(lengths)))
    for start, end, longest in chunks:
        rows = lengths[start:end]
        assert longest == max(rows)
        padded = longest * len(rows)
        assert len(rows) == 1 or (padded <= budget and padded - sum(rows) <= 0.1 * padded)
    if budget >= 10**6:
        assert len(chunks) < len(lengths)  # rows of similar length share a chunk


def test_row_cache_refuses_to_write_past_its_capacity():
    rows = prefix_cache.RowCache(2, capacity=3)
    k = torch.zeros(2, 1, 2, 4)
    rows.write(0, slice(None), 0, k, k, 0)
    with pytest.raises(RuntimeError, match="holds 3 positions"):
        rows.write(0, slice(None), 2, k, k, 0)


@pytest.fixture(scope="module")
def sliding_window_model(tmp_path_factory, tokenizer):
    """A tiny Mistral whose layers attend to a sliding window of 4 tokens."""
    return build_varied_model(tmp_path_factory.mktemp("sliding"), tokenizer, seed=5, family="mistral", sliding_window=4)


def test_a_sliding_window_model_falls_back_to_the_copied_cache_with_one_note(sliding_window_model, tmp_path, capsys):
    task = make_task(max_new_tokens=6, answer_mode="generate")
    prefix_ids = shared_prefix(task, sliding_window_model.tokenizer)
    prefix_cache._notes.clear()
    first = engine.PrefixCache(sliding_window_model.model, prefix_ids)
    second = engine.PrefixCache(sliding_window_model.model, prefix_ids)
    assert first.shared is None and second.shared is None
    notes = [line for line in capsys.readouterr().out.splitlines() if "shared-prefix attention is not available" in line]
    assert len(notes) == 1 and "sliding_window" in notes[0], notes
    # labeling still works, and gives what whole requests give
    examples = [Example(id=str(i), text=t) for i, t in enumerate(TEXTS)]
    runs = {}
    for reuse in (True, False):
        out = tmp_path / f"{reuse}.jsonl"
        label_inputs(Config(task=task.config), examples, LocalTeacher(sliding_window_model), out, mode="generate", batch_size=4, progress=False, reuse_prefix=reuse)
        rows = [json.loads(line) for p in (out, out.with_name(out.stem + ".rejects.jsonl")) if p.exists()
                for line in p.read_text(encoding="utf-8").splitlines()]
        runs[reuse] = sorted((r["id"], r["teacher_reply"]) for r in rows)
    assert runs[True] == runs[False] and len(runs[True]) == len(TEXTS)
