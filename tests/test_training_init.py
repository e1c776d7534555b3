"""Starting training from a trained adapter (train.init_adapter, training/init_adapter.py):
the student starts with the adapter's weights and shape, for every loss; the
on-policy teacher stays the untouched base; checkpoints belong to the
adapter's weights; an interrupted run resumes to the uninterrupted adapter;
`--init-from RUN` and `--init-adapter FOLDER` set it from the command line."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import promptdistill.training.recipe as recipe
from conftest import make_task, read_jsonl, script_records, write_jsonl, write_task_file
from promptdistill.config import Config, DataConfig, ModelsConfig, TrainConfig
from promptdistill.errors import PromptDistillError
from promptdistill.training.checkpoint import checkpoint_settings


def _config(model_dir: str, task=None, **train) -> Config:
    settings = dict(lora_rank=4, lora_alpha=8, learning_rate=1e-2, lr_schedule="constant", max_steps=2, batch_size=4,
                    save_every=100, seed=1)
    return Config(task=(task or make_task(labels=["la", "cy"])).config, train=TrainConfig(**{**settings, **train}),
                  models=ModelsConfig(student=model_dir, teacher=model_dir, device="cpu", dtype="float32"))


def _adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A finished sft run of the tiny model: its train/ folder holds the adapter to start from."""
    run = tmp_path_factory.mktemp("first")
    recipe.train_student(_config(tiny_model_dir, max_steps=3), script_records(12), run, progress=False)
    return run / "adapter"


def _set_up(cfg: Config, run: Path, records) -> recipe.DistillationRecipe:
    """A recipe set up (model, data, optimiser, loss) and not trained."""
    r = recipe.DistillationRecipe(cfg, run, progress=False)
    with r.lock():
        r.setup(records, [])
    r.cleanup()
    return r


def _model_state(model) -> dict:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def test_the_student_starts_with_the_adapters_weights_and_shape(tmp_path, tiny_model_dir, trained, capsys):
    # The task file asks for rank 8 and dropout 0.1: the adapter's rank 4 is trained, with the task file's dropout.
    cfg = _config(tiny_model_dir, init_adapter=str(trained), lora_rank=8, lora_dropout=0.1)
    r = _set_up(cfg, tmp_path / "run", script_records(8))
    assert _same(_model_state(r.model), _adapter(trained))
    assert all(p.shape[0] == 4 for n, p in r.model.named_parameters() if "lora_A" in n)
    assert all(p.requires_grad for n, p in r.model.named_parameters() if "lora_" in n)
    assert r.trainable and all("lora_" in n for n, p in r.model.named_parameters() if p.requires_grad)
    dropouts = {m.p for n, m in r.model.named_modules() if n.endswith("lora_dropout.default")}
    assert dropouts == {0.1}
    out = capsys.readouterr().out
    assert "adapter's own LoRA shape (rank 4, alpha 8, 14 modules)" in out and "lora_rank 8" in out

    # The same shape asked for: no line about it.
    _set_up(_config(tiny_model_dir, init_adapter=str(trained)), tmp_path / "run2", script_records(8))
    assert "LoRA shape" not in capsys.readouterr().out


def test_a_relative_init_adapter_resolves_against_the_task_files_folder(tmp_path, tiny_model_dir, trained):
    shutil.copytree(trained, tmp_path / "tasks" / "start")
    cfg = replace(_config(tiny_model_dir, init_adapter="start", max_steps=1), base_dir=tmp_path / "tasks")
    summary = recipe.train_student(cfg, script_records(8), tmp_path / "run", progress=False)
    assert summary["init_adapter"] == str(tmp_path / "tasks" / "start")


@pytest.mark.parametrize("loss", ["sft", "kd"])
def test_a_run_from_the_adapter_differs_from_a_fresh_one(tmp_path, tiny_model_dir, trained, loss):
    task = make_task(labels=["la", "cy"], answer_mode="choose")
    records = script_records(8)
    for r in records:
        r.label_probs = {"la": 0.8, "cy": 0.2} if r.label == "la" else {"la": 0.1, "cy": 0.9}
    fresh = recipe.train_student(_config(tiny_model_dir, task, loss=loss), records, tmp_path / "fresh", progress=False)
    started = recipe.train_student(_config(tiny_model_dir, task, loss=loss, init_adapter=str(trained)), records,
                                   tmp_path / "started", progress=False)
    assert not _same(_adapter(tmp_path / "fresh" / "adapter"), _adapter(tmp_path / "started" / "adapter"))
    # Starting from an sft adapter trained on the same mapping, the first step's loss is already lower.
    first = [read_jsonl(tmp_path / run / "metrics.jsonl")[0]["loss"] for run in ("fresh", "started")]
    assert first[1] < first[0], first
    assert fresh["loss"] == started["loss"] == loss and "init_adapter" not in fresh


def test_on_policy_starts_from_the_adapter_and_its_teacher_is_the_untouched_base(tmp_path, varied_model, tokenizer):
    """Teacher == student: the teacher is the student with its adapter switched
    off, which must be the base model, not the adapter training started from."""
    from promptdistill.models import load_model
    from promptdistill.task import Task
    from promptdistill.teachers import load_teacher

    model_dir = varied_model.name
    task = make_task(labels=["la", "cy"], max_new_tokens=3)
    start = tmp_path / "start"
    recipe.train_student(_config(model_dir, task, max_steps=3, learning_rate=5e-2), script_records(8), start, progress=False)
    cfg = _config(model_dir, task, loss="on-policy", max_steps=1, init_adapter=str(start / "adapter"))
    r = _set_up(cfg, tmp_path / "run", script_records(4))
    assert _same(_model_state(r.model), _adapter(start / "adapter"))

    texts, samples = ["example abc def", "где ты"], [[tokenizer.eos_token_id], [28, 29, tokenizer.eos_token_id]]
    scored = r.teacher.continuation_logprobs(Task(task.config), texts, samples, full=True)
    base = load_teacher(cfg.models, base=load_model(model_dir, "cpu", "float32"))
    want = base.continuation_logprobs(Task(task.config), texts, samples, full=True)
    with_adapter = load_teacher(cfg.models, base=replace(load_model(model_dir, "cpu", "float32"), model=r.model))
    adapted = with_adapter.continuation_logprobs(Task(task.config), texts, samples, full=True)
    for got, base_lp, adapter_lp in zip(scored, want, adapted):
        assert torch.allclose(got, base_lp, atol=1e-5)
        assert not torch.allclose(got, adapter_lp, atol=1e-3)  # the adapter does change the scores: the test can fail

    summary = recipe.train_student(cfg, script_records(4), tmp_path / "run", progress=False)
    assert summary["loss"] == "on-policy" and summary["init_adapter"] == str(start / "adapter")


def test_the_fingerprint_follows_the_adapters_weights_not_its_path(tmp_path, tiny_model_dir, trained):
    records = script_records(4)
    shutil.copytree(trained, tmp_path / "a")
    cfg = _config(tiny_model_dir, init_adapter=str(tmp_path / "a"))
    before = checkpoint_settings(records, cfg)
    assert before != checkpoint_settings(records, _config(tiny_model_dir))  # with an adapter or without
    shutil.copytree(trained, tmp_path / "b")
    assert checkpoint_settings(records, replace(cfg, train=replace(cfg.train, init_adapter=str(tmp_path / "b")))) == before

    weights = _adapter(tmp_path / "a")
    key = sorted(weights)[0]
    weights[key] = weights[key] + 1e-3
    save_file(weights, str(tmp_path / "a" / "adapter_model.safetensors"))
    assert checkpoint_settings(records, cfg) != before
    assert checkpoint_settings(records, replace(cfg, data=DataConfig(mix_general=0.2))) != checkpoint_settings(records, cfg)


def test_checkpoints_of_another_start_are_not_resumed(tmp_path, tiny_model_dir, trained, capsys):
    run = tmp_path / "run"
    recipe.train_student(_config(tiny_model_dir, save_every=1), script_records(8), run, progress=False)
    recipe.train_student(_config(tiny_model_dir, save_every=1, init_adapter=str(trained)), script_records(8), run, progress=False)
    assert "starting over" in capsys.readouterr().out


def _stop_after(step_to_stop: int, monkeypatch):
    """A SIGINT delivered during step `step_to_stop`: the recipe finishes it, checkpoints and stops."""
    original = recipe.DistillationRecipe._train_step

    def train_step(self, step, group):
        original(self, step, group)
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(recipe.DistillationRecipe, "_train_step", train_step)
    return original


def test_a_stopped_run_from_an_adapter_resumes_to_the_uninterrupted_adapter(tmp_path, tiny_model_dir, trained, monkeypatch, capsys):
    # dropout so that the random state must be restored, a schedule so that the scheduler must,
    # and general items mixed in, so the resumed run must reuse them
    cfg = replace(_config(tiny_model_dir, init_adapter=str(trained), lora_dropout=0.1, lr_schedule="cosine", warmup_steps=1,
                          max_steps=6, batch_size=2, save_every=100),
                  data=DataConfig(mix_general=0.25))
    records = script_records(12)
    recipe.train_student(cfg, records, tmp_path / "reference", progress=False)

    original = _stop_after(3, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        recipe.train_student(cfg, records, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoints" / "step-000003").is_dir() and not (tmp_path / "run" / "adapter").exists()
    monkeypatch.setattr(recipe.DistillationRecipe, "_train_step", original)
    capsys.readouterr()
    recipe.train_student(cfg, records, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert "resuming training from" in out and "generating" not in out  # the general items were reused
    assert _same(_adapter(tmp_path / "reference" / "adapter"), _adapter(tmp_path / "run" / "adapter"))

    def metrics(run):
        return [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in read_jsonl(tmp_path / run / "metrics.jsonl")]
    assert metrics("run") == metrics("reference")


@pytest.mark.slow
def test_a_killed_run_from_an_adapter_resumes_to_the_uninterrupted_adapter(tmp_path, tiny_model_dir, trained):
    """As test_training_resume's kill test, through the CLI, started with --init-adapter."""
    task = write_task_file(tmp_path, tiny_model_dir, task=dict(user_template="{text}", labels=["la", "cy"]),
                           train=dict(lora_rank=4, lora_alpha=8, lora_dropout=0.1, learning_rate=1e-2, lr_schedule="cosine",
                                      warmup_steps=2, max_steps=40, batch_size=2, grad_accum=2, save_every=3, seed=3))
    labeled = write_jsonl(tmp_path / "labeled.jsonl", [r.to_json() for r in script_records(48)])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def command(run):
        return [sys.executable, "-m", "promptdistill", "train", str(task), "--labeled", str(labeled), "--run-dir", str(run),
                "--init-adapter", str(trained), "--no-progress"]

    subprocess.run(command(tmp_path / "reference"), check=True, capture_output=True, env=env)
    run = tmp_path / "run"
    proc = subprocess.Popen(command(run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    marker = run / "train" / "checkpoints" / "step-000006" / "trainer_state.json"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (run / "train" / "adapter").exists()
    resumed = subprocess.run(command(run), check=True, capture_output=True, text=True, env=env)
    assert "resuming training from" in resumed.stdout
    assert _same(_adapter(tmp_path / "reference" / "train" / "adapter"), _adapter(run / "train" / "adapter"))


# ---- the command line -------------------------------------------------------------


def test_init_from_a_finished_run_through_the_cli(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from promptdistill.cli import main

    monkeypatch.chdir(tmp_path)
    task = write_task_file(tmp_path / "tasks", tiny_model_dir, task=dict(user_template="{text}", labels=["la", "cy"]),
                           train=dict(lora_rank=4, lora_alpha=8, learning_rate=1e-2, max_steps=2, batch_size=4))
    labeled = write_jsonl(tmp_path / "labeled.jsonl", [r.to_json() for r in script_records(8)])
    train = ["train", str(task), "--labeled", str(labeled), "--no-progress"]
    assert main(train + ["--run-dir", "first"]) == 0
    capsys.readouterr()

    # RUN relative to the current folder (not the task file's): its finished adapter
    assert main(train + ["--run-dir", "second", "--init-from", "first"]) == 0
    assert "training starts from the adapter" in capsys.readouterr().out
    summary = json.loads((tmp_path / "second" / "train" / "train_summary.json").read_text())
    assert summary["init_adapter"] == str(tmp_path / "first" / "train" / "adapter")
    saved = json.loads((tmp_path / "second" / "config.json").read_text())
    assert saved["train"]["init_adapter"] == str(tmp_path / "first" / "train" / "adapter")
    assert not _same(_adapter(tmp_path / "first" / "train" / "adapter"), _adapter(tmp_path / "second" / "train" / "adapter"))

    # --init-adapter FOLDER, relative to the current folder
    assert main(train + ["--run-dir", "third", "--init-adapter", "second/train/adapter"]) == 0
    summary = json.loads((tmp_path / "third" / "train" / "train_summary.json").read_text())
    assert summary["init_adapter"] == str(tmp_path / "second" / "train" / "adapter")


def test_init_from_and_init_adapter_exclude_each_other(tmp_path):
    from promptdistill.cli import _parser

    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "t.toml", "--labeled", "l", "--run-dir", "r", "--init-from", "a", "--init-adapter", "b"])


def test_init_adapter_problems_are_one_clear_error(tmp_path, tiny_model_dir):
    """Refused before a model is loaded (the CLI refuses before anything is written: test_faults.py)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    prompt = tmp_path / "prompt"
    prompt.mkdir()
    (prompt / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    save_file({"w": torch.zeros(1)}, str(prompt / "adapter_model.safetensors"))
    for folder, words in ((tmp_path / "nope", "not found"), (tmp_path / "file", "is a file"),
                          (tmp_path / "empty", "no adapter_config.json"), (prompt, "LoRA adapters only")):
        with pytest.raises(PromptDistillError) as info:
            recipe.train_student(_config(tiny_model_dir, init_adapter=str(folder)), script_records(4), tmp_path / "run",
                                 progress=False)
        assert info.value.field == "train.init_adapter" and words in str(info.value), str(info.value)
