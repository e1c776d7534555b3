"""The training loss: only weighted reply tokens count, computed on their positions alone."""

from __future__ import annotations

import torch

from promptdistill.render import render_example
from promptdistill.training.recipe import _lora_model, collate, weighted_token_loss
from promptdistill.config import TrainConfig


def _batch(tokenizer):
    convs = [
        [{"role": "user", "content": "short"}, {"role": "assistant", "content": "Final Answer: la"}],
        [{"role": "user", "content": "a much longer input with many more words in it"}, {"role": "assistant", "content": "Final Answer: cy"}],
    ]
    return collate([render_example(tokenizer, c) for c in convs], tokenizer.pad_token_id)


def _reference(model, ids, mask, weights):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    w = weights[:, 1:]
    return (nll * w).sum(), w.sum()


def test_loss_equals_full_logits_computation(tiny, tokenizer):
    ids, mask, weights = _batch(tokenizer)
    for model in (tiny.model, _lora_model(tiny.model, TrainConfig(lora_rank=4))):
        got, n = weighted_token_loss(model, ids, mask, weights)
        want, n_ref = _reference(model, ids, mask, weights)
        assert n == n_ref == 10  # "Final Answer: xx<|im_end|>" is 5 tokens, twice
        assert torch.allclose(got, want, atol=1e-4), (got, want)


def test_loss_ignores_unweighted_tokens(tiny, tokenizer):
    ids, mask, weights = _batch(tokenizer)
    base, _ = weighted_token_loss(tiny.model, ids, mask, weights)
    changed = ids.clone()
    first_weighted = int(weights[0].nonzero()[0])
    changed[0, 3] = (changed[0, 3] + 1) % 1000  # a prompt token far before the reply: changes the context
    assert first_weighted > 4
    changed_loss, _ = weighted_token_loss(tiny.model, changed, mask, weights)
    assert not torch.allclose(base, changed_loss)  # the context matters
    zeroed = weights.clone()
    zeroed[0] = 0
    only_second, n = weighted_token_loss(tiny.model, ids, mask, zeroed)
    assert n == 5
    second_alone, _ = weighted_token_loss(tiny.model, ids[1:], mask[1:], weights[1:])
    assert torch.allclose(only_second, second_alone, atol=1e-4)


def test_gradient_reaches_only_lora_parameters(tiny, tokenizer):
    ids, mask, weights = _batch(tokenizer)
    model = _lora_model(tiny.model, TrainConfig(lora_rank=4))
    loss, n = weighted_token_loss(model, ids, mask, weights)
    (loss / n).backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all("lora_" in name for name in with_grad)
    assert any("lora_B" in name for name in with_grad)
