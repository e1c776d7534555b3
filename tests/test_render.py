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


# ------------------------------------------------------- multi-turn conversations

# Two more real chat templates besides the packaged SmolLM2's ChatML, verbatim from their
# models' tokenizer_config.json: Zephyr (HuggingFaceH4/zephyr-7b-beta: role headers, the eos
# token closing every turn) and Mistral-7B-Instruct-v0.1 ([INST] ... [/INST], the reply
# straight after it; refuses a system turn and turns out of user/assistant order).
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
          "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")


def with_template(tokenizer, template):
    import copy

    if template is None:
        return tokenizer
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


MULTI_TURN = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple. Another?"},
              {"role": "user", "content": "Yes, a yellow one."}, {"role": "assistant", "content": "A banana. More?"}]


@pytest.mark.parametrize("template", [None, ZEPHYR, MISTRAL], ids=["smollm2", "zephyr", "mistral"])
def test_multi_turn_trains_only_the_last_assistant_turn(tokenizer, template):
    tok = with_template(tokenizer, template)
    ex = render_example(tok, MULTI_TURN)
    first = ex.weights.index(1.0)
    # The prompt part is exactly what the model sees when asked for the last reply ...
    assert ex.input_ids[:first] == render_prompt(tok, MULTI_TURN[:-1])
    assert all(w == 1.0 for w in ex.weights[first:]) and not any(ex.weights[:first])
    # ... and the trained tokens are the last reply and its end of turn, never the earlier one.
    trained = tok.decode(ex.input_ids[first:])
    assert trained.strip().startswith("A banana. More?") and trained.rstrip().endswith(tok.eos_token)
    assert "An apple" in tok.decode(ex.input_ids[:first])
    assert "An apple" not in trained


def test_a_template_that_refuses_a_turn_order_is_one_error_naming_the_line(tokenizer, tmp_path):
    """Two user turns in a row: ChatML renders them, Mistral's template raises; the input
    check says which input, in one line, before anything is labeled."""
    from conftest import make_task
    from promptdistill.config import Config
    from promptdistill.inputs import _fit
    from promptdistill.records import Example

    turns = [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Still there?"}]
    example = Example(id="7", text="Still there?", messages=turns, line=7)
    task = make_task(labels=[], reply_format="text")
    assert _fit([example], tokenizer, task.student_messages, "", 512, "x", Config(), "in.jsonl", print) == [example]
    with pytest.raises(PromptDistillError) as err:
        _fit([example], with_template(tokenizer, MISTRAL), task.student_messages, "", 512, "x", Config(), "in.jsonl", print)
    assert str(err.value).startswith("in.jsonl:7 field 'messages': the chat template") and "must alternate" in str(err.value)
    assert "\n" not in str(err.value)
