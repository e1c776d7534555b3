"""The training-memory estimate (training/gpu_memory.py): its parameter counts are the
models', its LoRA count is peft's, its activation count is what autograd keeps, and
its terms add up as the table of docs/gpu.md says."""

from __future__ import annotations

import pytest
import torch

from promptdistill.training import gpu_memory as gm


def _llama(shape: gm.ModelShape, device: str = "meta"):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                         tie_word_embeddings=shape.tied_embeddings, max_position_embeddings=4096)
    with torch.device(device):
        return LlamaForCausalLM(config)


@pytest.mark.parametrize("key", list(gm.SHAPES))
def test_parameter_counts_are_the_models(key):
    shape = gm.SHAPES[key]
    model = _llama(shape)
    assert shape.params == sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for name, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear))
    assert shape.linear_params == linear
    assert {"135M": 134_515_008, "8B": 8_030_261_248}.get(key, shape.params) == shape.params  # the published sizes


def test_lora_count_is_peft_s(tokenizer):
    from peft import LoraConfig, get_peft_model

    shape = gm.ModelShape("tiny", hidden=64, layers=2, intermediate=128, heads=4, kv_heads=2, vocab=len(tokenizer), tied_embeddings=True)
    model = get_peft_model(_llama(shape, "cpu"), LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert gm.lora_params(shape, 8) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_activation_count_is_what_autograd_keeps(tokenizer):
    """float32 on a CPU, one sequence, a quarter of it trained, through the recipe's loss."""
    from promptdistill.config import TrainConfig
    from promptdistill.training.losses import weighted_token_loss
    from promptdistill.training.recipe import lora_model

    shape = gm.ModelShape("tiny", hidden=64, layers=3, intermediate=160, heads=4, kv_heads=2, vocab=len(tokenizer), tied_embeddings=True)
    torch.manual_seed(0)
    model = lora_model(_llama(shape, "cpu"), TrainConfig(lora_rank=8, lora_alpha=8))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    n = 96
    ids = torch.randint(0, shape.vocab, (1, n))
    weights = torch.zeros(1, n)
    weights[:, -n // 4:] = 1.0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = weighted_token_loss(model, ids, torch.ones_like(ids), weights)
    estimated = shape.layers * gm.layer_activation_bytes(shape, 8, 4) * n + n // 4 * shape.vocab * 4
    # what the count leaves out: the norms' per-token scales, attention's log-sum-exp, masks, positions
    assert estimated <= sum(kept.values()) <= estimated * 1.03


def test_the_terms_add_up():
    s = gm.SHAPES["8B"]
    plain, ckpt, q = (gm.estimate(s, 2048, mode) for mode in gm.MODES)
    for e in (plain, ckpt, q):
        assert e["total"] == e["weights"] + e["lora"] + e["optimizer"] + e["activations"]
        assert e["optimizer"] == 3 * e["lora"] == 12 * gm.lora_params(s, 32)
    assert plain["weights"] == ckpt["weights"] == 2 * s.params
    assert q["weights"] == int(s.linear_params * gm.NF4_BITS / 8 + s.other_params * 4)
    assert gm.NF4_BITS == pytest.approx(4.127, abs=1e-3)
    assert ckpt["activations"] == q["activations"] < plain["activations"]
    # without checkpointing activations grow with every layer; with it, by one layer's input per layer and token
    grow = gm.estimate(s, 4096, "bf16-lora")["activations"] - plain["activations"]
    assert grow == s.layers * gm.layer_activation_bytes(s, 32, 2) * 2048 + 512 * s.vocab * 4
    grow_ckpt = gm.estimate(s, 4096, "bf16-lora-ckpt")["activations"] - ckpt["activations"]
    assert grow_ckpt == (s.layers * 2 * s.hidden + gm.layer_activation_bytes(s, 32, 2)) * 2048 + 512 * s.vocab * 4
    assert gm.estimate(s, 1024, "bf16-lora", batch=2)["total"] == gm.estimate(s, 2048, "bf16-lora")["total"]
    with pytest.raises(ValueError, match="mode must be one of"):
        gm.estimate(s, 512, "fp8")


def test_the_table_has_every_shape_length_and_mode():
    rows = gm.table()
    assert [(r["student"], r["seq_len"]) for r in rows] == [(k, n) for k in gm.SHAPES for n in (512, 2048)]
    for r in rows:
        assert r["qlora-ckpt"] < r["bf16-lora"] and r["bf16-lora-ckpt"] < r["bf16-lora"]
    text = gm.markdown_table(rows)
    assert text.count("\n") == len(rows) + 1 and "4-bit QLoRA + checkpointing" in text and "| 8B | 2048 |" in text
