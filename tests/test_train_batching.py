"""Sorting each step's examples by length before cutting micro-batches cuts
padding and leaves the trained adapter unchanged (the step's loss is a sum
over its examples, so their order only changes float rounding)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import promptdistill.training.recipe as train_mod
from promptdistill.config import ModelsConfig, TrainConfig
from promptdistill.records import LabeledExample


def _records(n=16):
    out = []
    for i in range(n):
        label = ["la", "cy"][i % 2]
        text = f"example {i} " + ("abc def " if label == "la" else "где ты ") * (1 + (i * 7) % 5)
        out.append(LabeledExample(id=str(i), text=text, gold_label=label, teacher_reply=f"Final Answer: {label}", label=label,
                                  status="ok", messages=[{"role": "user", "content": text},
                                                         {"role": "assistant", "content": f"Final Answer: {label}"}]))
    return out


def test_by_length_sorts_and_keeps_every_item(tokenizer):
    rendered, _ = train_mod.render_for_training(_records(), tokenizer, 512)
    ordered = train_mod._by_length(rendered)
    assert [e.num_tokens for e in ordered] == sorted(e.num_tokens for e in rendered)
    assert sorted(map(id, ordered)) == sorted(map(id, rendered))
    # micro-batches of 4 cut from the sorted group hold fewer padded positions
    def padded(items):
        return sum(max(e.num_tokens for e in items[i : i + 4]) * len(items[i : i + 4]) for i in range(0, len(items), 4))
    assert padded(ordered) < padded(rendered)
    records = _records(3)
    assert train_mod._by_length(records) == records  # on-policy items (plain records) keep their order


def test_sorted_micro_batches_train_the_same_adapter(tmp_path, tiny_model_dir, monkeypatch):
    cfg = TrainConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2, lr_schedule="constant",
                      max_steps=3, batch_size=2, grad_accum=3, save_every=100, seed=1)
    models = ModelsConfig(student=tiny_model_dir, teacher=tiny_model_dir, device="cpu", dtype="float32")
    train_mod.train_student(_records(), tmp_path / "sorted", cfg, models, progress=False)
    monkeypatch.setattr(train_mod, "_by_length", lambda items: items)
    train_mod.train_student(_records(), tmp_path / "unsorted", cfg, models, progress=False)
    a = load_file(str(tmp_path / "sorted" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "unsorted" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
    assert any(not torch.equal(a[key], torch.zeros_like(a[key])) for key in a if "lora_B" in key)  # it did train


def test_gradients_are_clipped_to_max_grad_norm_and_the_norm_is_logged(tmp_path, tiny_model_dir, monkeypatch):
    """The optimiser sees a gradient of norm <= max_grad_norm; metrics log the norm before clipping."""
    import json

    seen = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    models = ModelsConfig(student=tiny_model_dir, teacher=tiny_model_dir, device="cpu", dtype="float32")
    logged = {}
    for limit in (0.0, 1e-3):
        seen.clear()
        cfg = TrainConfig(lora_rank=4, lora_alpha=8, learning_rate=1e-2, lr_schedule="constant", max_steps=2, batch_size=4,
                          save_every=100, seed=1, max_grad_norm=limit)
        run = tmp_path / f"clip-{limit}"
        train_mod.train_student(_records(8), run, cfg, models, progress=False)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        logged[limit] = [r["grad_norm"] for r in rows if "grad_norm" in r]
        if limit == 0.0:
            unclipped = list(seen)
            assert logged[limit] == pytest.approx(unclipped, rel=1e-4)  # no clipping: the optimiser sees the logged norm
            assert min(unclipped) > 1e-2
        else:
            assert all(n <= limit * (1 + 1e-4) for n in seen), seen
    # the first step starts from the same weights and data, so its pre-clip norm is the same
    assert logged[1e-3][0] == pytest.approx(logged[0.0][0], rel=1e-4)
