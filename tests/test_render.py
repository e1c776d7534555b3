"""Rendering with the real chat template, and the engine's continuation scoring
(what choose mode runs on) against a direct computation, on the tiny random
model. Labeling itself is tested in test_labeling.py and test_teacher_contract.py."""

from __future__ import annotations


import pytest
import torch

from conftest import direct_logprob

from promptdistill import engine
from promptdistill.errors import PromptDistillError
from promptdistill.render import render_example, render_prompt

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


# ------------------------------------------------- continuation scoring

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
