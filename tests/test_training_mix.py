"""data.mix_general (training/general_mix.py): the base model's own replies to
general prompts mixed into training, F of all items, generated once into
RUN/train/general_mix.jsonl and reused, trained with cross-entropy whatever
the loss, their loss logged; the sampling weights stay aligned with the items."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import promptdistill.training.general_mix as general_mix
import promptdistill.training.recipe as recipe
from conftest import make_task, read_jsonl, script_records, write_jsonl, write_task_file
from promptdistill.config import Config, DataConfig, ModelsConfig, TrainConfig
from promptdistill.general import general_checks, general_prompts
from promptdistill.training.checkpoint import checkpoint_settings
from promptdistill.training.data import sampling_weights
from promptdistill.training.general_mix import GeneralExample, drawn_prompts, general_count

REPO = Path(__file__).resolve().parents[1]


def _config(model_dir: str, mix: float = 0.25, task=None, **train) -> Config:
    settings = dict(lora_rank=4, lora_alpha=8, learning_rate=1e-2, lr_schedule="constant", max_steps=2, batch_size=4,
                    save_every=100, seed=1)
    return Config(task=(task or make_task(labels=["la", "cy"])).config, train=TrainConfig(**{**settings, **train}),
                  models=ModelsConfig(student=model_dir, teacher=model_dir, device="cpu", dtype="float32"),
                  data=DataConfig(mix_general=mix))


@pytest.fixture()
def short_replies(monkeypatch):
    """Replies of 8 tokens rather than 64: the tiny random models never stop on their own."""
    monkeypatch.setattr(general_mix, "REPLY_TOKENS", 8)


@pytest.fixture()
def generations(monkeypatch):
    """The prompts each call of base_replies generated for."""
    calls = []
    original = general_mix.base_replies

    def counting(base, tokenizer, prompts, *args, **kwargs):
        calls.append(list(prompts))
        return original(base, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(general_mix, "base_replies", counting)
    return calls


def test_how_many_general_items_and_which_prompts():
    assert general_count(0.25, 12) == 4 and general_count(0.25, 30) == 10 and general_count(0.5, 7) == 7
    assert general_count(0.0, 100) == 0 and general_count(0.2, 40) == 10
    pool = general_prompts()
    first = drawn_prompts(30, seed=1)
    assert len(set(first)) == 30 and set(first) <= set(pool)
    assert first == drawn_prompts(30, seed=1) and first != drawn_prompts(30, seed=2)  # seeded
    assert first != list(pool[:30])  # shuffled
    many = drawn_prompts(250, seed=1)
    assert many[:30] == first and len(set(many)) == len(pool) and many[len(pool):2 * len(pool)] == many[:len(pool)]
    # none of the pool is in the general-ability check the report scores
    assert not {p for _, p in pool} & {c.prompt for c in general_checks()}


def test_general_items_are_a_quarter_of_the_items_in_the_batches_with_their_loss_logged(tmp_path, tiny_model_dir, short_replies,
                                                                                       generations, capsys):
    # 12 task items, F = 0.25: round(0.25 / 0.75 * 12) = 4 general items, 16 in all; one epoch of 4 steps of 4
    cfg = _config(tiny_model_dir, 0.25, max_steps=0, epochs=1)
    summary = recipe.train_student(cfg, script_records(12), tmp_path, progress=False)
    assert summary["general_items"] == 4 and summary["train_examples"] == 12 and summary["steps"] == 4
    assert "4 of 16 training items are the base model's replies to general prompts" in capsys.readouterr().out
    rows = read_jsonl(tmp_path / "general_mix.jsonl")
    assert [(r["id"], r["prompt"]) for r in rows] == drawn_prompts(4, seed=1)
    assert {r["model"] for r in rows} == {tiny_model_dir} and all(isinstance(r["reply"], str) for r in rows)
    assert generations == [[r["prompt"] for r in rows]]  # generated once, in one batch

    steps = [m for m in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in m]
    assert sum(m["general_items"] for m in steps) == 4  # each general item once in the epoch
    for m in steps:
        assert (m["general_loss"] is None) == (m["general_items"] == 0)
        assert m["general_loss"] is None or m["general_loss"] > 0


def test_the_file_is_reused_when_it_matches_and_rewritten_when_not(tmp_path, tiny_model_dir, short_replies, generations, capsys):
    records = script_records(12)
    cfg = _config(tiny_model_dir, 0.25, save_every=1)
    recipe.train_student(cfg, records, tmp_path, progress=False)
    path = tmp_path / "general_mix.jsonl"
    written = path.read_bytes()
    assert len(generations) == 1

    # a rerun (it resumes from the last checkpoint): the file is reused, untouched
    recipe.train_student(cfg, records, tmp_path, progress=False)
    assert len(generations) == 1 and path.read_bytes() == written

    # more task items: more general items, another file
    recipe.train_student(cfg, script_records(18), tmp_path, progress=False)
    assert len(generations) == 2 and len(read_jsonl(path)) == 6

    # a damaged file is the tool's own: rewritten
    path.write_text("{not json\n")
    recipe.train_student(cfg, script_records(18), tmp_path, progress=False)
    assert len(generations) == 3 and len(read_jsonl(path)) == 6


def test_the_replies_are_the_untouched_bases_also_from_an_init_adapter(tmp_path, varied_model, tokenizer):
    from promptdistill.models import load_model

    model_dir = varied_model.name
    start = tmp_path / "start"
    recipe.train_student(_config(model_dir, 0.0, max_steps=3, learning_rate=5e-2), script_records(8), start, progress=False)
    run = tmp_path / "run"
    recipe.train_student(_config(model_dir, 0.25, init_adapter=str(start / "adapter")), script_records(12), run, progress=False)
    rows = read_jsonl(run / "general_mix.jsonl")
    prompts = [r["prompt"] for r in rows]
    base = load_model(model_dir, "cpu", "float32")
    assert [r["reply"] for r in rows] == [reply for reply, _ in general_mix.base_replies(base.model, tokenizer, prompts)]
    adapted = load_model(model_dir, "cpu", "float32", adapter=start / "adapter")
    # the adapter answers otherwise: the file holds the base's replies, not the student's
    assert [r["reply"] for r in rows] != [reply for reply, _ in general_mix.base_replies(adapted.model, tokenizer, prompts)]


def test_an_unfinished_reply_is_trained_without_its_end_of_turn(tokenizer):
    rows = [{"id": "a", "prompt": "Hi", "reply": "Hello there", "stopped": True},
            {"id": "b", "prompt": "Hi", "reply": "Hello there", "stopped": False}]
    done, cut, again = general_mix.general_examples(rows, 3, tokenizer)
    assert done.input_ids == cut.input_ids and again.id == "a"
    assert done.num_trained == cut.num_trained + 1 and cut.weights[-1] == 0 and done.weights[-1] == 1


@pytest.mark.parametrize("loss", ["kd", "on-policy"])
def test_kd_and_on_policy_train_with_general_items_counted_as_examples(tmp_path, varied_model, short_replies, loss, monkeypatch):
    task = make_task(labels=["la", "cy"], answer_mode="choose" if loss == "kd" else "generate", max_new_tokens=3)
    records = script_records(12)
    for r in records:
        r.label_probs = {"la": 0.8, "cy": 0.2} if r.label == "la" else {"la": 0.1, "cy": 0.9}
    seen = []
    original = recipe.DistillationRecipe._general_loss

    def general_loss(self, batch, step):
        loss_sum, stats = original(self, batch, step)
        seen.append((len(batch), loss_sum.item(), stats["general_units"]))
        return loss_sum, stats

    monkeypatch.setattr(recipe.DistillationRecipe, "_general_loss", general_loss)
    cfg = _config(varied_model.name, 0.25, task, loss=loss, max_steps=0, epochs=1)
    summary = recipe.train_student(cfg, records, tmp_path, progress=False)
    assert summary["general_items"] == 4
    steps = [m for m in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in m]
    stat = "kl" if loss == "kd" else "reverse_kl"
    assert all(stat in m and "general_loss" in m for m in steps)
    assert sum(m["general_items"] for m in steps) == 4
    # one unit per general item: the logged general loss is the mean of the items' mean cross-entropies
    assert sum(n for n, _, _ in seen) == 4 and all(n == units for n, _, units in seen)
    logged = [m["general_loss"] for m in steps if m["general_items"]]
    assert logged and all(0 < x < 30 for x in logged)
    assert any(t.abs().max() > 0 for k, t in load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")).items()
               if "lora_B" in k)


def test_per_example_token_loss_is_the_sum_of_each_items_mean(tiny, tokenizer):
    from promptdistill.training.data import collate
    from promptdistill.training.losses import per_example_token_loss, weighted_token_loss

    rows = [{"id": str(i), "prompt": p, "reply": r, "stopped": True}
            for i, (p, r) in enumerate([("Hi", "Hello"), ("Name a colour.", "Blue, or perhaps a deep shade of green.")])]
    items = general_mix.general_examples(rows, 2, tokenizer)
    with torch.no_grad():
        total, n = per_example_token_loss(tiny.model, *collate(items, tokenizer.pad_token_id))
        means = []
        for item in items:
            loss_sum, count = weighted_token_loss(tiny.model, *collate([item], tokenizer.pad_token_id))
            means.append(loss_sum / count)
    assert n == 2 and torch.allclose(total, sum(means), rtol=1e-5)


def test_sampling_weights_give_general_items_the_mean_task_weight():
    records = script_records(6)
    records[0] = replace(records[0], label="la")
    cfg = TrainConfig(balance="answers")
    weights = sampling_weights(records, [], cfg, general=2)
    task = weights[:6]
    assert len(weights) == 8 and weights[6:] == [sum(task) / 6] * 2
    # the general items keep their share of the draws: 2 of 8
    assert sum(weights[6:]) / sum(weights) == pytest.approx(2 / 8)
    assert sampling_weights(records, [], TrainConfig(), general=2) is None


def test_balance_draws_general_items_with_the_task_items(tmp_path, tiny_model_dir, short_replies):
    cfg = _config(tiny_model_dir, 0.25, balance="answers", max_steps=0, epochs=2)
    summary = recipe.train_student(cfg, script_records(12), tmp_path, progress=False)
    steps = [m for m in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in m]
    assert summary["general_items"] == 4 and sum(m["examples"] for m in steps) == 32
    assert 0 < sum(m["general_items"] for m in steps) < 32


def test_the_fingerprint_changes_with_mix_general_and_with_the_replies(tiny_model_dir):
    records = script_records(4)
    rows = [{"id": "p1", "reply": "yes", "stopped": True}]
    plain = checkpoint_settings(records, _config(tiny_model_dir, 0.0))
    assert plain != checkpoint_settings(records, _config(tiny_model_dir, 0.25), rows)
    assert checkpoint_settings(records, _config(tiny_model_dir, 0.25), rows) != checkpoint_settings(records, _config(tiny_model_dir, 0.5), rows)
    assert checkpoint_settings(records, _config(tiny_model_dir, 0.25), rows) != \
        checkpoint_settings(records, _config(tiny_model_dir, 0.25), [{**rows[0], "reply": "no"}])


def test_cycling_through_the_pool_is_said_in_one_line(tmp_path, tiny_model_dir, short_replies, generations, capsys):
    pool = len(general_prompts())
    cfg = _config(tiny_model_dir, 0.5, max_steps=1, batch_size=2)
    recipe_ = recipe.DistillationRecipe(cfg, tmp_path, progress=False)
    with recipe_.lock():
        recipe_.setup(script_records(120), [])
    recipe_.cleanup()
    general = [e for e in recipe_.train_set if isinstance(e, GeneralExample)]
    assert len(general) == 120 and len({e.id for e in general}) == pool
    assert len(generations) == 1 and len(generations[0]) == pool  # each distinct prompt generated once
    lines = [line for line in capsys.readouterr().out.splitlines() if "repeat" in line]
    assert lines == [f"[promptdistill] data.mix_general = 0.5: 120 of 240 training items are the base model's replies to "
                     f"general prompts; the pool has {pool} prompts, so they repeat (up to 2 times each)"]


@pytest.mark.slow
def test_two_processes_share_one_general_mix_file(tmp_path, tiny_model_dir):
    """Under torchrun the file is generated once (by the main process) and both processes train on it:
    the same file and the same adapter as one process."""
    task = write_task_file(tmp_path, tiny_model_dir, task=dict(user_template="{text}", labels=["la", "cy"]),
                           data=dict(mix_general=0.25),
                           train=dict(lora_rank=4, lora_alpha=8, learning_rate=1e-2, max_steps=3, batch_size=2, grad_accum=2, seed=3))
    labeled = write_jsonl(tmp_path / "train.jsonl", [r.to_json() for r in script_records(12)])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    args = ["-m", "promptdistill", "train", str(task), "--labeled", str(labeled), "--no-progress"]
    one = subprocess.run([sys.executable, *args, "--run-dir", str(tmp_path / "one")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args,
                          "--run-dir", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count("generating the base model's replies") == 1
    assert (tmp_path / "two" / "train" / "general_mix.jsonl").read_bytes() == (tmp_path / "one" / "train" / "general_mix.jsonl").read_bytes()
    want = load_file(str(tmp_path / "one" / "train" / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "two" / "train" / "adapter" / "adapter_model.safetensors"))
    assert want.keys() == got.keys() and all(torch.allclose(want[k], got[k], atol=1e-5, rtol=1e-4) for k in want)
