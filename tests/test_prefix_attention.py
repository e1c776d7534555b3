"""The engine on top of a shared prefix computes what whole requests compute.

Shared-prefix attention is checked against the copied prefix cache (and
both against whole prompts); a model whose attention needs more falls back
to the copied cache and says so in `PrefixCache.note`; and our attention
leaves no trace on the model's config outside our own forwards.
"""

from __future__ import annotations

import pytest
import torch

from conftest import build_varied_model, direct_logprob, make_task
from promptdistill import engine, prefix_cache
from promptdistill.render import render_prompt

TEXTS = [
    "a",
    "Hello there, how are you today?",
    "Bonjour à tous, le café est prêt depuis une heure déjà.",
    "你好",
    "x = {text} and {braces}",
    "Очень длинное предложение на русском языке, которое продолжается и продолжается без конца и края.",
]

PROMPT = "You classify texts by script.\nRules:\n- Latin -> la\n- Cyrillic -> cy\n- Greek -> gr\n- Han -> zh\n"


def _texts(decoded) -> list[list[int]]:
    """The replies' token ids without the end-of-turn token."""
    return [d.text_ids for d in decoded]


def script_task(**fields):
    return make_task(user_template=PROMPT + "Text to classify:\n{text}", labels=["la", "cy", "gr", "zh"], **fields)


def prompts_and_prefix(tokenizer, task, texts=TEXTS):
    """Each text's whole prompt, and the token ids they all start with (found
    from unlike probe inputs, as labeling finds it)."""
    probes = [render_prompt(tokenizer, task.teacher_messages(p)) for p in ["A", "z 1", "\u4f60\u597d", "\n-", "{text}"]]
    n = next((i for i, column in enumerate(zip(*probes)) if len(set(column)) > 1), min(map(len, probes)))
    prompts = [render_prompt(tokenizer, task.teacher_messages(t)) for t in texts]
    assert n > 20 and all(p[:n] == probes[0][:n] for p in prompts)
    return prompts, probes[0][:n]


def suffixes_and_prefix(tokenizer, task, texts=TEXTS):
    prompts, prefix = prompts_and_prefix(tokenizer, task, texts)
    return [p[len(prefix):] for p in prompts], prefix


@pytest.mark.parametrize("kernel", ["fused", "generic"])
def test_continuation_logprobs_equal_with_shared_attention_and_copied_cache(varied_model, monkeypatch, kernel):
    """Both ways of computing the two-part attention (PyTorch's fused CPU kernel
    merged by log-sum-exp, and plain matrix products with one softmax)."""
    if kernel == "generic":
        monkeypatch.setattr(prefix_cache, "_FUSED_CPU", None)
    else:
        assert prefix_cache._FUSED_CPU is not None
    suffixes, prefix_ids = suffixes_and_prefix(varied_model.tokenizer, script_task())
    replies = [[5, 6, 7], [9], [11, 12, 13, 14, 15], [4, 2], [8, 8, 8], [3, 1]]
    shared = engine.PrefixCache(varied_model.model, prefix_ids)
    copied = engine.PrefixCache(varied_model.model, prefix_ids, attention="expand")
    assert shared.shared is not None and copied.shared is None
    assert shared.note is None and copied.note is None
    ours = engine.continuation_logprobs(shared, suffixes, replies, full=True)
    plain = engine.continuation_logprobs(copied, suffixes, replies, full=True)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("attention", ["cascade", "expand"])
def test_decode_with_prefix_equals_one_at_a_time(varied_model, attention):
    tok = varied_model.tokenizer
    prompts, prefix_ids = prompts_and_prefix(tok, script_task())
    eos = {tok.eos_token_id}
    alone = [engine.generate(varied_model.model, [p], max_new_tokens=10, eos_ids=eos, pad_id=tok.pad_token_id)[0] for p in prompts]
    assert len({tuple(a) for a in alone}) > 1, "outputs should differ between inputs for this test to mean anything"
    assert any(len(set(a)) > 1 for a in alone)
    cache = engine.PrefixCache(varied_model.model, prefix_ids, attention=attention)
    assert (cache.shared is not None) == (attention == "cascade")
    batched = _texts(engine.decode_with_prefix(
        cache, [p[len(prefix_ids):] for p in prompts], max_new_tokens=10, eos_ids=eos, pad_id=tok.pad_token_id
    ))
    assert batched == alone
    # the stored prefix cache is not modified by use: a second run gives the same
    again = _texts(engine.decode_with_prefix(cache, [prompts[2][len(prefix_ids):]], max_new_tokens=10, eos_ids=eos, pad_id=tok.pad_token_id))
    assert again == [alone[2]]


def test_decode_with_prefix_stops_at_end_of_turn(varied_model):
    tok = varied_model.tokenizer
    prompts, prefix_ids = prompts_and_prefix(tok, script_task(), [TEXTS[1]])
    free = engine.generate(varied_model.model, prompts, max_new_tokens=6, eos_ids={tok.eos_token_id}, pad_id=tok.pad_token_id)[0]
    # declare the third generated token an end-of-turn token: output must stop before it
    stop = {free[2]}
    cache = engine.PrefixCache(varied_model.model, prefix_ids)
    out = _texts(engine.decode_with_prefix(cache, [prompts[0][len(prefix_ids):]], max_new_tokens=6, eos_ids=stop, pad_id=tok.pad_token_id))[0]
    assert out == free[: free.index(free[2])]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_that_stop_early_leave_the_batch_without_changing_the_others(varied_model, temperature):
    """Rows stopping at different steps (finished rows are dropped from the batch
    mid-decode) give what each gives alone, greedy and sampled with per-row seeds."""
    tok = varied_model.tokenizer
    suffixes, prefix_ids = suffixes_and_prefix(tok, script_task())
    cache = engine.PrefixCache(varied_model.model, prefix_ids)
    seeds = [11 * i + 3 for i in range(len(TEXTS))]

    def decode(rows, eos, row_seeds):
        return engine.decode_with_prefix(cache, rows, max_new_tokens=10, eos_ids=eos, pad_id=tok.pad_token_id,
                                         temperature=temperature, seeds=row_seeds, top_logprobs=3)

    free = [decode([s], {-1}, [seed])[0].token_ids for s, seed in zip(suffixes, seeds)]
    # end-of-turn tokens picked so that rows stop at different steps (or not at all)
    eos = {free[0][1], free[3][5]}
    alone = [decode([s], eos, [seed])[0] for s, seed in zip(suffixes, seeds)]
    lengths = [len(a.token_ids) for a in alone]
    assert any(a.stopped for a in alone) and not all(a.stopped for a in alone), lengths
    assert len(set(lengths)) > 1
    batched = decode(suffixes, eos, seeds)
    for got, want in zip(batched, alone):
        assert got.token_ids == want.token_ids and got.stopped == want.stopped
        assert [[t for t, _ in step] for step in got.top] == [[t for t, _ in step] for step in want.top]
        for g, w in zip(got.top, want.top):
            assert [v for _, v in g] == pytest.approx([v for _, v in w], abs=1e-4)


def test_prefill_chunks_give_the_same_answers_as_one_chunk(varied_model, monkeypatch):
    """Suffixes of unlike lengths, in no particular order: prefilled in several
    short chunks they decode exactly as in one chunk, and come back in input order."""
    texts = TEXTS + ["b", "Hola, ¿qué tal estás hoy, amigo mío?", "θ", TEXTS[5] + " " + TEXTS[2]]
    suffixes, prefix_ids = suffixes_and_prefix(varied_model.tokenizer, script_task(), texts)
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


@pytest.mark.parametrize(
    "candidates",
    [
        [[5, 6, 7, 2], [5, 6, 9, 2], [5, 6, 11, 12, 2], [5, 6, 13, 2]],  # common head, different lengths
        [[7], [9], [11]],  # single tokens
        [[4, 2], [4, 2, 2], [8, 1, 3]],  # one candidate a prefix of another
    ],
)
def test_score_with_prefix_equals_direct(varied_model, candidates):
    prompts, prefix_ids = prompts_and_prefix(varied_model.tokenizer, script_task(), TEXTS[:4])
    cache = engine.PrefixCache(varied_model.model, prefix_ids)
    for ids in prompts:
        direct = engine.score_continuations(varied_model.model, ids, candidates)
        shared = engine.score_with_prefix(cache, ids[len(prefix_ids):], candidates)
        assert torch.allclose(direct, shared, atol=1e-4), (direct, shared)


@pytest.mark.parametrize(
    "candidates",
    [
        [[5, 6, 7, 2], [5, 6, 9, 2], [5, 6, 11, 12, 2], [5, 6, 13, 2]],  # common head, different lengths
        [[7], [9], [11]],  # single tokens
        [[4, 2], [4, 2, 2], [8, 1, 3]],  # one candidate a prefix of another
    ],
)
@pytest.mark.parametrize("chunk_tokens", [1, 40, 10**6], ids=["row-per-chunk", "some-rows-per-chunk", "one-chunk"])
@pytest.mark.parametrize("kernel", ["fused", "generic"])
def test_batched_choose_scores_equal_one_input_at_a_time(varied_model, monkeypatch, candidates, chunk_tokens, kernel):
    # Batched choose mode: many inputs' candidate blocks in one forward give
    # each input the scores (and so the label distribution) it gets alone.
    if kernel == "generic":
        monkeypatch.setattr(prefix_cache, "_FUSED_CPU", None)
    suffixes, prefix_ids = suffixes_and_prefix(varied_model.tokenizer, script_task())
    cache = engine.PrefixCache(varied_model.model, prefix_ids)
    assert cache.shared is not None
    alone = torch.stack([engine.score_with_prefix(cache, s, candidates) for s in suffixes])
    batched = engine.score_batch_with_prefix(cache, suffixes, candidates, chunk_tokens=chunk_tokens)
    assert batched.shape == (len(suffixes), len(candidates))
    assert torch.allclose(alone, batched, atol=1e-4), (alone - batched).abs().max()
    assert torch.allclose(torch.softmax(alone, 1), torch.softmax(batched, 1), atol=1e-5)


@pytest.mark.parametrize("chunk_tokens", [None, 40])
def test_batched_choose_on_expanded_prefix_copies_equals_one_at_a_time(varied_model, chunk_tokens):
    """The expand strategy scores a batch on per-row copies of the prefix cache,
    under the model's own attention with the block mask given whole."""
    suffixes, prefix_ids = suffixes_and_prefix(varied_model.tokenizer, script_task())
    cache = engine.PrefixCache(varied_model.model, prefix_ids, attention="expand")
    assert cache.shared is None and cache.strategy == "expand"
    candidates = [[5, 6, 7, 2], [5, 6, 9, 2], [8], [5, 11, 12, 13, 2]]
    alone = torch.stack([engine.score_with_prefix(cache, s, candidates) for s in suffixes])
    batched = engine.score_batch_with_prefix(cache, suffixes, candidates, chunk_tokens=chunk_tokens)
    assert torch.allclose(alone, batched, atol=1e-4), (alone - batched).abs().max()
    cascade = engine.PrefixCache(varied_model.model, prefix_ids, attention="cascade")
    assert torch.allclose(engine.score_batch_with_prefix(cascade, suffixes, candidates), batched, atol=1e-4)


@pytest.mark.parametrize("attention, device, strategy", [("auto", "cpu", "cascade"), ("auto", "cuda:0", "expand"), ("auto", "mps", "expand"),
                                                          ("cascade", "cuda", "cascade"), ("expand", "cpu", "expand")])
def test_auto_prefix_attention_is_cascade_on_cpu_only(attention, device, strategy):
    assert prefix_cache.strategy_for(attention, device) == strategy


def test_an_unknown_prefix_attention_is_refused():
    with pytest.raises(ValueError, match="auto, cascade, expand"):
        prefix_cache.strategy_for("paged", "cpu")


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


def test_a_sliding_window_model_falls_back_to_the_copied_cache_and_returns_its_note(sliding_window_model, capsys):
    """The note comes back on the PrefixCache (every time), nothing is printed,
    and decoding on the fallback still gives what whole requests give."""
    tok = sliding_window_model.tokenizer
    prompts, prefix_ids = prompts_and_prefix(tok, script_task())
    first = engine.PrefixCache(sliding_window_model.model, prefix_ids)
    second = engine.PrefixCache(sliding_window_model.model, prefix_ids)
    assert first.shared is None and second.shared is None
    assert first.note == second.note and "shared-prefix attention is not available" in first.note and "sliding_window" in first.note
    assert engine.PrefixCache(sliding_window_model.model, prefix_ids, attention="expand").note is None
    eos = {tok.eos_token_id}
    batched = _texts(engine.decode_with_prefix(first, [p[len(prefix_ids):] for p in prompts], max_new_tokens=6, eos_ids=eos,
                                               pad_id=tok.pad_token_id))
    alone = [engine.generate(sliding_window_model.model, [p], max_new_tokens=6, eos_ids=eos, pad_id=tok.pad_token_id)[0] for p in prompts]
    assert batched == alone
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("attention", ["cascade", "expand"])
def test_a_sliding_window_model_scores_candidates_as_a_plain_forward_does(sliding_window_model, attention):
    """Choose mode on a model whose cache keeps a 4-token window: the packed block mask
    cannot span the context there, so each candidate runs alone on a copy of the
    input's state; every score is the plain forward's, and each input its own."""
    tok = sliding_window_model.tokenizer
    suffixes, prefix_ids = suffixes_and_prefix(tok, script_task())
    candidates = [tok.encode(f"Final Answer: {x}", add_special_tokens=False) for x in ("la", "cy", "gr", "latin alphabet")]
    prefix = engine.PrefixCache(sliding_window_model.model, prefix_ids, attention=attention)
    got = engine.score_batch_with_prefix(prefix, suffixes, candidates)
    expected = torch.stack([torch.stack([direct_logprob(sliding_window_model.model, prefix_ids + s, c) for c in candidates])
                            for s in suffixes])
    assert got.shape == (len(suffixes), len(candidates))
    assert torch.allclose(got, expected, atol=1e-4)
    assert len({tuple(row.tolist()) for row in got}) > 1  # the window still sees each input's own last tokens


def test_shared_attention_leaves_no_trace_on_the_models_configs(varied_model, tiny):
    """Two models, one of them with two PrefixCaches: during a shared-prefix
    forward only that model's config names our attention; after it, and after
    a forward that raises, every config is as it was, and a plain forward
    computes what it computed before."""
    suffixes, prefix_ids = suffixes_and_prefix(varied_model.tokenizer, script_task())
    configs = {"varied": varied_model.model.config, "tiny": tiny.model.config}
    before = {name: c._attn_implementation for name, c in configs.items()}
    assert prefix_cache.ATTENTION_NAME not in before.values()
    ids = torch.tensor([prefix_ids])
    plain_before = varied_model.model(input_ids=ids).logits

    one = engine.PrefixCache(varied_model.model, prefix_ids)
    two = engine.PrefixCache(varied_model.model, prefix_ids[:-3])
    other = engine.PrefixCache(tiny.model, prefix_ids)
    assert None not in (one.shared, two.shared, other.shared)
    seen = []
    layer = varied_model.model.model.layers[0]
    hook = layer.register_forward_pre_hook(lambda *_: seen.append({n: c._attn_implementation for n, c in configs.items()}))
    try:
        engine.continuation_logprobs(one, suffixes[:2], [[5, 6], [7]])
        assert seen and all(s == {**before, "varied": prefix_cache.ATTENTION_NAME} for s in seen), seen
        assert {n: c._attn_implementation for n, c in configs.items()} == before
        # a forward that fails inside our attention (a row cache too small) restores the config too
        batch = engine._suffix_batch(len(one), suffixes[:1], 0, one.device)
        with pytest.raises(RuntimeError, match="row cache holds"):
            one.forward(*batch, prefix_cache.RowCache(1, capacity=1))
        assert {n: c._attn_implementation for n, c in configs.items()} == before
    finally:
        hook.remove()
    engine.continuation_logprobs(two, suffixes[:2], [[5, 6], [7]])
    engine.continuation_logprobs(other, suffixes[:2], [[5, 6], [7]])
    assert {n: c._attn_implementation for n, c in configs.items()} == before
    assert torch.equal(varied_model.model(input_ids=ids).logits, plain_before)
