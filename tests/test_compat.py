"""compat: the cache is passed by the name the installed transformers' forward takes.

A wrong name is not an error on transformers < 5.24 (the forward swallows it
in **kwargs), so these check the name against the signature itself, through
the wrappers the engine is called with.
"""

from __future__ import annotations

import inspect

import torch

from promptdistill.compat import cache_kwargs, output_cache


def _expected(model) -> str:
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def test_cache_name_through_peft_and_adapter_disabled(tiny):
    from peft import LoraConfig, get_peft_model

    from promptdistill.models import AdapterDisabled

    want = _expected(tiny.model)
    peft_model = get_peft_model(tiny.model, LoraConfig(r=2, target_modules=["q_proj"]))
    for wrapped in (tiny.model, peft_model, AdapterDisabled(peft_model)):
        assert list(cache_kwargs(wrapped, None)) == [want]


def test_cache_is_used(tiny):
    """Running the last token on top of the cache gives the whole sequence's last logits."""
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.inference_mode():
        whole = tiny.model(input_ids=ids).logits[0, -1]
        cache = output_cache(tiny.model(input_ids=ids[:, :-1], use_cache=True))
        assert cache.get_seq_length() == 4
        step = tiny.model(input_ids=ids[:, -1:], **cache_kwargs(tiny.model, cache), use_cache=True).logits[0, -1]
    torch.testing.assert_close(step, whole, rtol=1e-4, atol=1e-4)
