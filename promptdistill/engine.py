"""The inference engine: token ids in, token ids or log-probabilities out.

It knows nothing about tasks or chat templates. Two operations:

- `generate`: continue each prompt until an end-of-turn token or
  `max_new_tokens`, greedy when temperature is 0.
- `score_continuations`: the total log-probability of each candidate
  continuation after one shared context. The context is run once; its
  key/value cache is then repeated across the candidates, which are scored
  together in one batched forward. This is what `choose` mode uses to score
  every allowed answer without one full forward per label.
"""

from __future__ import annotations

import torch


@torch.inference_mode()
def generate(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[list[int]]:
    """Generate a continuation for each prompt (one batch, left-padded).

    Returns the new tokens of each prompt, cut before the first end-of-turn token.
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attention[i, width - len(p):] = 1
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=None,
        top_k=None,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_id,
    )
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config)
    results = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos_ids), len(row))
        results.append(row[:cut])
    return results


@torch.inference_mode()
def score_continuations(model, context: list[int], continuations: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """Total log-probability of each continuation after `context`, shape (n,)."""
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([context], device=device), use_cache=True)
    first_logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    totals = torch.stack([first_logp[c[0]] for c in continuations])
    longest = max(len(c) for c in continuations)
    if longest == 1:
        return totals.cpu()

    n = len(continuations)
    cache = out.cache
    cache.batch_repeat_interleave(n)
    # Feed every candidate token but the last; right padding is harmless because
    # a real token never attends to a later (padded) position.
    steps = torch.full((n, longest - 1), pad_id, dtype=torch.long)
    attention = torch.ones((n, len(context) + longest - 1), dtype=torch.long)
    for i, c in enumerate(continuations):
        steps[i, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
        attention[i, len(context) + len(c) - 1:] = 0
    logits = model(input_ids=steps.to(device), attention_mask=attention.to(device), cache=cache, use_cache=True).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    for i, c in enumerate(continuations):
        if len(c) > 1:
            targets = torch.tensor(c[1:], device=device)
            totals[i] = totals[i] + logp[i, torch.arange(len(c) - 1, device=device), targets].sum()
    return totals.cpu()
