"""The exported adapter, served by vLLM with `--enable-lora`, answers like the student (marker `vllm`).

A student is LoRA-trained here on the packaged SmolLM2 (a few steps on gold
"Final Answer: xx" replies, enough to change its answers), exported with
`promptdistill export RUN --adapter DIR`, and served by a real vLLM
OpenAI-compatible server on the base model with the adapter as a LoRA module.
Through the `openai` client (what a user of the served student would call),
the greedy replies to held-out inputs must equal the student's own replies
under transformers + PEFT, and differ from the base model's (served by the
same server), so the adapter is what is being compared.

Run with `make test-vllm` (`.venv-vllm`); see test_vllm.py.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from vllm_server import serve_vllm

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_HELDOUT = 48, 8
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory (config.json + train/adapter) with a student trained on gold replies, and held-out texts."""
    from dataclasses import replace

    from promptdistill.config import load_config, save_config
    from promptdistill.records import LabeledExample, read_inputs
    from promptdistill.training.recipe import train_student

    cfg = load_config(ROOT / "examples/language_id/task.toml")
    rows = random.Random(0).sample(read_inputs(cfg.resolve_path(cfg.data.inputs)), N_TRAIN + N_HELDOUT)
    records = []
    for e in rows[:N_TRAIN]:
        reply = f"Final Answer: {e.gold_label}"
        records.append(LabeledExample(id=e.id, text=e.text, gold_label=e.gold_label, teacher_reply=reply, label=e.gold_label,
                                      status="ok", messages=[{"role": "user", "content": e.text},
                                                             {"role": "assistant", "content": reply}]))
    # rank 8: within vLLM's default --max-lora-rank (16); a short constant-rate run
    cfg.models = replace(cfg.models, student="smollm2-135m-instruct", device="cpu", dtype="float32")
    cfg.train = replace(cfg.train, lora_rank=8, lora_alpha=16, learning_rate=1e-3, lr_schedule="constant", warmup_steps=0,
                        max_steps=6, batch_size=8, grad_accum=1, save_every=100, eval_every=100)
    run = tmp_path_factory.mktemp("lora-run")
    save_config(cfg, run / "config.json")
    train_student(cfg, records, run / "train", progress=False)
    return run, [e.text for e in rows[N_TRAIN:]]


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory, trained_run):
    """A vLLM server on the base model with the exported adapter as LoRA module `student`."""
    from promptdistill.cli import main
    from promptdistill.models import model_path

    run, _ = trained_run
    adapter = tmp_path_factory.mktemp("export") / "adapter"
    assert main(["export", "--run-dir", str(run), "--adapter", str(adapter)]) == 0
    # the adapter names the built-in model, never this machine's cache path (the server is given the base itself)
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m-instruct"

    log = tmp_path_factory.mktemp("server") / "vllm-serve.log"
    args = ["--served-model-name", "base", "--max-model-len", "1024", "--enable-lora", "--lora-modules",
            f"student={adapter}", "--max-lora-rank", "8"]
    with serve_vllm(model_path("smollm2-135m-instruct"), args, log, what="LoRA server") as url:
        yield url


def _served_replies(url: str, model: str, texts: list[str], max_tokens: int) -> list[str]:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused")
    replies = []
    for text in texts:
        out = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                             temperature=0.0, max_tokens=max_tokens)
        replies.append(out.choices[0].message.content)
    return replies


def test_served_adapter_answers_like_the_student(trained_run, lora_server):
    from promptdistill.predict import load_student, predict_texts

    run, texts = trained_run
    from openai import OpenAI

    served = {m.id for m in OpenAI(base_url=lora_server, api_key="unused").models.list().data}
    assert {"base", "student"} <= served

    task, student = load_student(run, device="cpu")
    want = [reply for _, reply in predict_texts(task, student, texts)]
    max_tokens = task.config.max_new_tokens
    got = _served_replies(lora_server, "student", texts, max_tokens)
    base = _served_replies(lora_server, "base", texts, max_tokens)
    print("\n[vllm] student replies:", got, "\n[vllm] base replies:", base, flush=True)
    assert sum(g != b for g, b in zip(got, base)) >= N_HELDOUT // 2  # the adapter changes the answers
    assert got == want
