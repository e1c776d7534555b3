"""An interrupted training run resumes from its last checkpoint and ends with the same adapter."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import promptdistill.training.recipe as train_mod
from promptdistill.config import ModelsConfig, TrainConfig
from promptdistill.records import LabeledExample


def _records(n=24):
    out = []
    for i in range(n):
        label = ["la", "cy"][i % 2]
        text = f"example {i} " + ("abc def" if label == "la" else "где ты")
        out.append(LabeledExample(id=str(i), text=text, gold_label=label, teacher_reply=f"Final Answer: {label}", label=label,
                                  status="ok", messages=[{"role": "user", "content": text},
                                                         {"role": "assistant", "content": f"Final Answer: {label}"}]))
    return out


def _cfgs(model_dir):
    # dropout > 0 so that restoring the random-number state matters
    train = TrainConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.1, learning_rate=1e-2, lr_schedule="cosine", warmup_steps=2,
                        max_steps=6, batch_size=4, grad_accum=2, eval_every=3, save_every=2, seed=7)
    return train, ModelsConfig(student=model_dir, teacher=model_dir, device="cpu", dtype="float32")


def _metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("tokens_per_s", None)
    return rows


def test_interrupted_training_resumes_to_the_same_adapter(tmp_path, tiny_model_dir, monkeypatch):
    records = _records()
    heldout = _records(6)
    train_cfg, models_cfg = _cfgs(tiny_model_dir)
    reference = tmp_path / "reference"
    train_mod.train_student(records, reference, train_cfg, models_cfg, heldout=heldout, progress=False)

    real_groups = train_mod._step_groups

    def crashing_groups(*args):
        for i, group in enumerate(real_groups(*args)):
            if i == 4:  # after the checkpoint of step 4, during step 5
                raise KeyboardInterrupt
            yield group

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(train_mod, "_step_groups", crashing_groups)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train_student(records, interrupted, train_cfg, models_cfg, heldout=heldout, progress=False)
    assert not (interrupted / "adapter").exists()
    assert (interrupted / "checkpoints" / "step-000004" / "optimizer.safetensors").exists()
    monkeypatch.setattr(train_mod, "_step_groups", real_groups)

    summary = train_mod.train_student(records, interrupted, train_cfg, models_cfg, heldout=heldout, progress=False)
    assert summary["steps"] == 6
    want = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(interrupted / "adapter" / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert _metrics(interrupted) == _metrics(reference)


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path, tiny_model_dir, capsys):
    records = _records()
    train_cfg, models_cfg = _cfgs(tiny_model_dir)
    run = tmp_path / "run"
    train_mod.train_student(records, run, train_cfg, models_cfg, progress=False)
    train_cfg.learning_rate = 5e-3
    train_mod.train_student(records, run, train_cfg, models_cfg, progress=False)
    assert "starting over" in capsys.readouterr().out
    fresh = tmp_path / "fresh"
    train_mod.train_student(records, fresh, train_cfg, models_cfg, progress=False)
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(fresh / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
