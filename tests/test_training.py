"""The training recipe (training/recipe.py, training/data.py): train_student takes
the whole Config, every loss runs through it and logs its statistics, each
step's items are sorted by length without changing the adapter, gradients
are clipped, and problems with the inputs or settings are one clear error."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import promptdistill.training.recipe as recipe
from conftest import make_task, read_jsonl, script_records
from promptdistill.config import Config, ModelsConfig, TrainConfig
from promptdistill.errors import PromptDistillError
from promptdistill.training.data import by_length, render_for_training

STEP_KEYS = ["step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "examples"]
SUMMARY_KEYS = ["steps", "steps_per_epoch", "train_examples", "skipped_too_long", "loss", "final_loss", "final_heldout_loss",
                "seconds", "student", "processes", "adapter"]


def _config(model_dir: str, task=None, **train) -> Config:
    settings = dict(lora_rank=4, lora_alpha=8, learning_rate=1e-2, lr_schedule="constant", max_steps=2, batch_size=4,
                    save_every=100, seed=1)
    return Config(task=(task or make_task(labels=["la", "cy"])).config, train=TrainConfig(**{**settings, **train}),
                  models=ModelsConfig(student=model_dir, teacher=model_dir, device="cpu", dtype="float32"))


def _adapter(run) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _with_soft_labels(records):
    """The records as choose-mode labels: the teacher's distribution over la/cy."""
    for r in records:
        r.label_probs = {"la": 0.8, "cy": 0.2} if r.label == "la" else {"la": 0.1, "cy": 0.9}
    return records


@pytest.mark.parametrize("loss, stats", [("sft", ["trained_tokens"]), ("kd", ["kl"]), ("on-policy", ["reverse_kl", "sampled_tokens"])])
def test_each_loss_trains_through_the_recipe_and_logs_its_statistics(tmp_path, tiny_model_dir, varied_model, loss, stats):
    # kd reads the label replies and on-policy the teacher's prompt from cfg.task: no task argument
    if loss == "on-policy":  # teacher == student: the teacher is the student with its adapter disabled
        cfg = _config(varied_model.name, make_task(labels=["la", "cy"], max_new_tokens=3), loss=loss, max_steps=1)
    else:
        cfg = _config(tiny_model_dir, make_task(labels=["la", "cy"], answer_mode="choose"), loss=loss, eval_every=1)
    records = _with_soft_labels(script_records(8))
    summary = recipe.train_student(cfg, records, tmp_path, heldout=script_records(3, offset=50), progress=False)

    assert list(summary) == SUMMARY_KEYS
    assert summary["loss"] == loss and summary["train_examples"] == 8 and summary["processes"] == 1
    assert json.loads((tmp_path / "train_summary.json").read_text()) == summary
    steps = [m for m in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in m]
    assert [list(m) for m in steps] == [STEP_KEYS + stats] * cfg.train.max_steps
    heldout = [m for m in read_jsonl(tmp_path / "metrics.jsonl") if "heldout_loss" in m]
    assert heldout and summary["final_heldout_loss"] == heldout[-1]["heldout_loss"]  # sft's cross-entropy whatever the loss
    assert any(t.abs().max() > 0 for k, t in _adapter(tmp_path).items() if "lora_B" in k)  # it did train


def test_by_length_sorts_and_keeps_every_item(tokenizer):
    rendered, _ = render_for_training(script_records(16), tokenizer, 512)
    ordered = by_length(rendered)
    assert [e.num_tokens for e in ordered] == sorted(e.num_tokens for e in rendered)
    assert sorted(map(id, ordered)) == sorted(map(id, rendered))

    # micro-batches of 4 cut from the sorted group hold fewer padded positions
    def padded(items):
        return sum(max(e.num_tokens for e in items[i : i + 4]) * len(items[i : i + 4]) for i in range(0, len(items), 4))
    assert padded(ordered) < padded(rendered)
    records = script_records(3)
    assert by_length(records) == records  # on-policy items (plain records) keep their order


def test_sorted_micro_batches_train_the_same_adapter(tmp_path, tiny_model_dir, monkeypatch):
    """The step's loss is a sum over its items, so sorting them changes float rounding only."""
    cfg = _config(tiny_model_dir, max_steps=3, batch_size=2, grad_accum=3)
    recipe.train_student(cfg, script_records(16), tmp_path / "sorted", progress=False)
    monkeypatch.setattr(recipe, "by_length", lambda items: items)
    recipe.train_student(cfg, script_records(16), tmp_path / "unsorted", progress=False)
    a, b = _adapter(tmp_path / "sorted"), _adapter(tmp_path / "unsorted")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
    assert any(not torch.equal(a[key], torch.zeros_like(a[key])) for key in a if "lora_B" in key)  # it did train


def test_gradients_are_clipped_to_max_grad_norm_and_the_norm_is_logged(tmp_path, tiny_model_dir, monkeypatch):
    """The optimiser sees a gradient of norm <= max_grad_norm; metrics log the norm before clipping."""
    seen = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    logged = {}
    for limit in (0.0, 1e-3):
        seen.clear()
        run = tmp_path / f"clip-{limit}"
        recipe.train_student(_config(tiny_model_dir, max_grad_norm=limit), script_records(8), run, progress=False)
        logged[limit] = [r["grad_norm"] for r in read_jsonl(run / "metrics.jsonl") if "grad_norm" in r]
        if limit == 0.0:
            unclipped = list(seen)
            assert logged[limit] == pytest.approx(unclipped, rel=1e-4)  # no clipping: the optimiser sees the logged norm
            assert min(unclipped) > 1e-2
        else:
            assert all(n <= limit * (1 + 1e-4) for n in seen), seen
    # the first step starts from the same weights and data, so its pre-clip norm is the same
    assert logged[1e-3][0] == pytest.approx(logged[0.0][0], rel=1e-4)


def test_input_problems_are_one_clear_error(tmp_path, tiny_model_dir):
    cfg = _config(tiny_model_dir)
    rejected = [replace(r, status="no_match") for r in script_records(4)]
    with pytest.raises(PromptDistillError) as info:
        recipe.train_student(cfg, rejected, tmp_path / "rejected", progress=False)
    assert info.value.field == "train" and "no usable training examples" in str(info.value)

    # kd on records labeled without soft labels: which labeling gives them
    with pytest.raises(PromptDistillError) as info:
        recipe.train_student(replace(cfg, train=replace(cfg.train, loss="kd")), script_records(4), tmp_path / "kd", progress=False)
    assert info.value.field == "train.loss" and "choose" in info.value.message

    with pytest.raises(PromptDistillError) as info:  # a Config built in code, not checked by load_config
        recipe.train_student(replace(cfg, train=replace(cfg.train, loss="dpo")), script_records(4), tmp_path / "dpo")
    assert info.value.field == "train.loss" and "sft" in info.value.message

    with pytest.raises(TypeError, match=r"the whole Config first"):  # only the [train] table
        recipe.train_student(cfg.train, script_records(4), tmp_path / "train-table")
