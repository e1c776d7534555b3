"""The engine's shared-prefix paths give what sending every request whole gives.
(Labeling through them is compared with whole requests in test_labeling.py.)"""

from __future__ import annotations


import pytest
import torch

from promptdistill import engine
from promptdistill.config import TaskConfig
from promptdistill.render import render_prompt
from promptdistill.task import Task
from promptdistill.teachers.local import shared_prefix

TEXTS = [
    "a",
    "Hello there, how are you today?",
    "Bonjour à tous, le café est prêt depuis une heure déjà.",
    "你好",
    "x = {text} and {braces}",
    "Очень длинное предложение на русском языке, которое продолжается и продолжается без конца и края.",
]

LABELS = ["la", "cy", "gr", "zh"]


def make_task(form: str = "user", **overrides) -> Task:
    prompt = "You classify texts by script.\nRules:\n- Latin -> la\n- Cyrillic -> cy\n- Greek -> gr\n- Han -> zh\n"
    if form == "user":
        cfg = TaskConfig(user_template=prompt + "Text to classify:\n{text}", labels=LABELS, **overrides)
    else:
        cfg = TaskConfig(system_prompt=prompt, labels=LABELS, **overrides)
    return Task(cfg)


@pytest.mark.parametrize("shared_attention", [True, False], ids=["shared-prefix-attention", "copied-cache"])
def test_generate_with_prefix_equals_one_at_a_time(varied_model, shared_attention):
    tok = varied_model.tokenizer
    task = make_task()
    prefix_ids = shared_prefix(task, tok)
    prompts = [render_prompt(tok, task.teacher_messages(t)) for t in TEXTS]
    eos = {tok.eos_token_id}
    alone = [engine.generate(varied_model.model, [p], max_new_tokens=10, eos_ids=eos, pad_id=tok.pad_token_id)[0] for p in prompts]
    assert len({tuple(a) for a in alone}) > 1, "outputs should differ between inputs for this test to mean anything"
    assert any(len(set(a)) > 1 for a in alone)
    cache = engine.PrefixCache(varied_model.model, prefix_ids, shared_attention=shared_attention)
    assert (cache.shared is not None) == shared_attention
    batched = engine.generate_with_prefix(
        cache, [p[len(prefix_ids):] for p in prompts], max_new_tokens=10, eos_ids=eos, pad_id=tok.pad_token_id
    )
    assert batched == alone
    # the stored prefix cache is not modified by use: a second run gives the same
    again = engine.generate_with_prefix(cache, [prompts[2][len(prefix_ids):]], max_new_tokens=10, eos_ids=eos, pad_id=tok.pad_token_id)
    assert again == [alone[2]]


def test_generate_with_prefix_stops_at_end_of_turn(varied_model):
    tok = varied_model.tokenizer
    task = make_task()
    prefix_ids = shared_prefix(task, tok)
    prompt = render_prompt(tok, task.teacher_messages(TEXTS[1]))
    free = engine.generate(varied_model.model, [prompt], max_new_tokens=6, eos_ids={tok.eos_token_id}, pad_id=tok.pad_token_id)[0]
    # declare the third generated token an end-of-turn token: output must stop before it
    stop = {free[2]}
    cache = engine.PrefixCache(varied_model.model, prefix_ids)
    out = engine.generate_with_prefix(cache, [prompt[len(prefix_ids):]], max_new_tokens=6, eos_ids=stop, pad_id=tok.pad_token_id)[0]
    assert out == free[: free.index(free[2])]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_that_stop_early_leave_the_batch_without_changing_the_others(varied_model, temperature):
    """Rows stopping at different steps (finished rows are dropped from the batch
    mid-decode) give what each gives alone, greedy and sampled with per-row seeds."""
    tok = varied_model.tokenizer
    task = make_task()
    prefix_ids = shared_prefix(task, tok)
    cache = engine.PrefixCache(varied_model.model, prefix_ids)
    suffixes = [render_prompt(tok, task.teacher_messages(t))[len(prefix_ids):] for t in TEXTS]
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


@pytest.mark.parametrize(
    "candidates",
    [
        [[5, 6, 7, 2], [5, 6, 9, 2], [5, 6, 11, 12, 2], [5, 6, 13, 2]],  # common head, different lengths
        [[7], [9], [11]],  # single tokens
        [[4, 2], [4, 2, 2], [8, 1, 3]],  # one candidate a prefix of another
    ],
)
def test_score_with_prefix_equals_direct(varied_model, candidates):
    tok = varied_model.tokenizer
    task = make_task()
    prefix_ids = shared_prefix(task, tok)
    cache = engine.PrefixCache(varied_model.model, prefix_ids)
    for text in TEXTS[:4]:
        ids = render_prompt(tok, task.teacher_messages(text))
        direct = engine.score_continuations(varied_model.model, ids, candidates)
        shared = engine.score_with_prefix(cache, ids[len(prefix_ids):], candidates)
        assert torch.allclose(direct, shared, atol=1e-4), (direct, shared)
