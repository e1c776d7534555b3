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


def test_adapter_disabled_is_the_base_and_leaves_the_adapter_on(tiny):
    """The wrapper answers as the model without its adapter, and the adapter is on again after
    each call (switched off only where it was on, so a call inside peft's own disabled block leaves it off)."""
    from peft import LoraConfig, get_peft_model

    from promptdistill.models import AdapterDisabled

    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.inference_mode():
        base_logits = tiny.model(input_ids=ids).logits
    torch.manual_seed(0)
    peft_model = get_peft_model(tiny.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    base = AdapterDisabled(peft_model)
    with torch.inference_mode():
        adapted = peft_model(input_ids=ids).logits
        assert not torch.allclose(adapted, base_logits, atol=1e-3)  # the adapter changes the answer
        torch.testing.assert_close(base(input_ids=ids).logits, base_logits)
        torch.testing.assert_close(peft_model(input_ids=ids).logits, adapted)
        generated = base.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
        assert generated.shape == (1, 8)
        torch.testing.assert_close(peft_model(input_ids=ids).logits, adapted)
        with peft_model.disable_adapter():
            base(input_ids=ids)
            torch.testing.assert_close(peft_model(input_ids=ids).logits, base_logits)
        torch.testing.assert_close(peft_model(input_ids=ids).logits, adapted)
