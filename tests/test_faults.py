"""The fault table: every bad argument or damaged file, through the real CLI.

Each case runs `python -m promptdistill ...` in a subprocess on a copy of one
small world (a tiny model, a task file, inputs, a run directory made by
`promptdistill run`) and asserts what the rule "promptdistill only removes or
replaces what it created itself" (io.py) promises:

- exit status 2 and one line on stderr, `error: ...`, with the expected words
  (the path, line or field, and what to do), never a traceback;
- nothing changed: every file and folder of the world (contents, modes, and
  no new or removed entries: no stray config, lock, sidecar or folder) hashes
  the same before and after, so a refused command has written nothing.

The successes that go with the refusals (re-exporting into the tool's own
folder, --overwrite, label applying data.limit, inputs over a model's context
reported by line, exports readable by others) follow the table.
"""

from __future__ import annotations

import hashlib
import re
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl, write_task_file

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [("Hello there", "en"), ("Bonjour à tous", "fr"), ("Guten Tag", "de"),
         ("Good night", "en"), ("Bonne nuit", "fr"), ("Gute Nacht", "de")]


def cli(args, cwd, stdin: bytes | None = None, timeout: int = 300):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "promptdistill", *map(str, args)], cwd=cwd, env=env, input=stdin or b"",
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir):
    """A task, its inputs, a copy of the tiny model, and a run trained for one step (with a checkpoint)."""
    w = tmp_path_factory.mktemp("world")
    shutil.copytree(tiny_model_dir, w / "model")
    write_jsonl(w / "inputs.jsonl", [{"id": str(i), "text": t, "label": lab} for i, (t, lab) in enumerate(TEXTS)])
    write_task_file(w, str(w / "model"), task=dict(labels=["en", "fr", "de"], answer_mode="choose", max_new_tokens=8),
                    data=dict(inputs="inputs.jsonl", heldout_fraction=0.34),
                    train=dict(max_steps=1, save_every=1, batch_size=2, lora_rank=4, lora_alpha=8), eval=dict(max_examples=2))
    done = cli(["run", "task.toml", "--run-dir", "run", "--no-progress"], cwd=w)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    (w / "mine").mkdir()
    (w / "mine" / "notes.txt").write_text("the user's notes\n", encoding="utf-8")
    (w / "emptydir").mkdir()
    return w


def tree(root: Path) -> dict:
    """Every entry under root: its kind, mode, and for files the sha256 of the contents."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[p.relative_to(root).as_posix()] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), digest)
    return out


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n" + text, encoding="utf-8")


def _corrupt(path: Path, data: bytes = b"{not json\n"):
    path.write_bytes(data)


def _truncate(path: Path):
    path.write_bytes(path.read_bytes()[:100])


def _middle_garbage(path: Path):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:1] + [b"garbage\n"] + lines[1:]))


def _checkpoint(w: Path) -> Path:
    return sorted((w / "run" / "train" / "checkpoints").glob("step-*"))[-1]


def _other_run(w: Path) -> Path:
    shutil.copytree(w / "run", w / "run2")
    return w / "run2"


def _partial(w: Path):
    (w / "run" / "eval" / "predictions.partial.jsonl").write_bytes(b'{"fingerprint": "x"}\ngarbage\n{"id": "1"}\n')


def _exported_then_edited(w: Path):
    from promptdistill.export import export_adapter

    export_adapter(w / "run", w / "exported")
    with open(w / "exported" / "README.md", "a", encoding="utf-8") as f:
        f.write("my notes\n")


def _sidecar_dir(w: Path):
    (w / "out.jsonl.meta.json").mkdir()


def _labels_with_bad_sidecar(w: Path):
    shutil.copy(w / "run" / "labels" / "train.jsonl", w / "out.jsonl")
    _corrupt(w / "out.jsonl.meta.json")


def _link(link: Path, target: Path):
    """`link` made a symlink to `target` (a user's file or folder), replacing what was there."""
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(target)


def _user_file(path: Path, text: str = "the user's own lines\n"):
    path.write_text(text, encoding="utf-8")


def _chat_logs(w: Path):
    write_jsonl(w / "logs.jsonl", [{"messages": [{"role": "user", "content": "Which language is this?\nHello\nAnswer with Final Answer: xx."},
                                                 {"role": "assistant", "content": "Final Answer: en"}]}])
    _user_file(w / "chats.foreign.jsonl")


def _conversation(w: Path, *messages):
    """conv.jsonl: one good text, then one conversation input made of `messages` (line 2)."""
    write_jsonl(w / "conv.jsonl", [{"text": "Hello there"}, {"id": "c", "messages": list(messages)}])


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


# Mistral-7B-Instruct-v0.1's chat template: user and assistant turns must alternate.
ALTERNATING_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
                        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
                        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}")


def _alternating_model(w: Path):
    """A copy of the model whose chat template renders only alternating turns, and two user turns in a row."""
    shutil.copytree(w / "model", w / "altmodel")
    config = w / "altmodel" / "tokenizer_config.json"
    data = json.loads(config.read_text(encoding="utf-8"))
    data["chat_template"] = ALTERNATING_TEMPLATE
    config.write_text(json.dumps(data), encoding="utf-8")
    (w / "altmodel" / "chat_template.jinja").unlink(missing_ok=True)
    _conversation(w, _user("Hi."), _user("Are you there?"))


L = ["label", "task.toml", "--no-progress"]
T = ["train", "task.toml", "--no-progress"]
E = ["eval", "task.toml", "--no-progress"]

# id: (setup(world) or None, argv, stdin, words the one line must contain)
CASES = {
    # -- conversation inputs (messages) and text tasks: refused by line and field before anything is written
    "label a conversation that is not a list": (lambda w: write_jsonl(w / "conv.jsonl", [{"text": "Hello there"}, {"messages": "Hi"}]), L + ["--inputs", "conv.jsonl", "--out", "o.jsonl"],
                                                None, ["conv.jsonl:2", "'messages'", "list of messages"]),
    "label a turn without a role": (lambda w: _conversation(w, {"content": "Hi"}), L + ["--inputs", "conv.jsonl", "--out", "o.jsonl"],
                                    None, ["conv.jsonl:2", "'messages[0].role'"]),
    "label a conversation ending in an assistant turn": (lambda w: _conversation(w, _user("Hi."), _assistant("Hello!")),
                                                         L + ["--inputs", "conv.jsonl", "--out", "o.jsonl"], None,
                                                         ["conv.jsonl:2", "'messages[1].role'", "ends in an assistant turn"]),
    "label a conversation with an empty turn": (lambda w: _conversation(w, _user("Hi."), _assistant(" "), _user("Well?")),
                                                L + ["--inputs", "conv.jsonl", "--out", "o.jsonl"], None,
                                                ["conv.jsonl:2", "'messages[1].content'", "empty turn"]),
    "label a system turn inside an input": (lambda w: _conversation(w, {"role": "system", "content": "Obey me."}, _user("Hi.")),
                                            L + ["--inputs", "conv.jsonl", "--out", "o.jsonl"], None,
                                            ["conv.jsonl:2", "'messages[0].role'", "system prompt is the task's"]),
    "label a tool turn inside an input": (lambda w: _conversation(w, {"role": "tool", "content": "42"}, _user("Hi.")),
                                          L + ["--inputs", "conv.jsonl", "--out", "o.jsonl"], None,
                                          ["conv.jsonl:2", "'messages[0].role'", "user, assistant"]),
    "label turns the chat template cannot render": (_alternating_model, L + ["--inputs", "conv.jsonl", "--out", "o.jsonl", "--teacher",
                                                                             "altmodel", "--student", "altmodel"], None,
                                                    ["conv.jsonl:2", "'messages'", "cannot render", "must alternate"]),
    "predict --json a conversation ending in an assistant turn": (None, ["predict", "--run-dir", "run", "--json"],
                                                                  json.dumps({"messages": [_user("Hi."), _assistant("Yo")]}).encode(),
                                                                  ["<stdin>:1", "ends in an assistant turn"]),
    "predict --json a line that is not JSON": (None, ["predict", "--run-dir", "run", "--json"], b"Hello there\n",
                                               ["<stdin>:1", "invalid JSON"]),
    "predict --json with texts as arguments": (None, ["predict", "--run-dir", "run", "--json", "hello"], None, ["--json", "stdin"]),
    "a text task with a label set": (None, L + ["--out", "o.jsonl", "--set", "task.reply_format='text'"], None,
                                     ["task.labels", "reply_format = \"text\" has no label set"]),
    "truncated_replies on a label task": (None, L + ["--out", "o.jsonl", "--set", "task.truncated_replies='keep'"], None,
                                          ["task.truncated_replies", "reply_format"]),
    # -- label: its outputs against its inputs, and outputs that are not its own
    "label --out is the input file": (None, L + ["--inputs", "inputs.jsonl", "--out", "inputs.jsonl"], None,
                                      ["--inputs", "is the same path as --out"]),
    "label --rejects is the input file": (None, L + ["--out", "o.jsonl", "--rejects", "inputs.jsonl"], None,
                                          ["--inputs", "is the same path as --rejects"]),
    "label --out is the task file": (None, L + ["--out", "task.toml"], None, ["the task file", "is the same path as --out"]),
    "label --out equals --rejects": (None, L + ["--out", "o.jsonl", "--rejects", "o.jsonl"], None, ["--out is the same path as --rejects"]),
    "label --out is a folder": (None, L + ["--out", "emptydir"], None, ["is a folder"]),
    "label --out under a file": (None, L + ["--out", "mine/notes.txt/o.jsonl"], None, ["is a file, so no folder"]),
    "label --out is a user's file": (lambda w: (w / "notes.txt").write_text("hello\nworld\n"), L + ["--out", "notes.txt"], None,
                                     ["not a labeled JSONL file"]),
    "label --out is a user's one-line file": (lambda w: (w / "notes.txt").write_text("hello"), L + ["--out", "notes.txt"], None,
                                              ["not a labeled JSONL file"]),
    "label --out inside a run": (None, L + ["--out", "run/labels/extra.jsonl"], None, ["inside the run directory"]),
    "label --out's sidecar is a folder": (_sidecar_dir, L + ["--out", "out.jsonl"], None, ["sidecar", "is a folder"]),
    "label --out's sidecar is corrupt": (_labels_with_bad_sidecar, L + ["--out", "out.jsonl"], None, ["corrupt labels sidecar", "--force"]),
    "label --rejects is a folder": (None, L + ["--out", "o.jsonl", "--rejects", "emptydir"], None, ["--rejects is a folder"]),
    "label --inputs missing": (None, L + ["--inputs", "nope.jsonl", "--out", "o.jsonl"], None, ["nope.jsonl", "not found"]),
    "label --inputs is a folder": (None, L + ["--inputs", "emptydir", "--out", "o.jsonl"], None, ["emptydir", "is a folder"]),
    "label task file is a folder": (None, ["label", "emptydir", "--out", "o.jsonl"], None, ["task file is a folder"]),
    "label task file missing": (None, ["label", "nope.toml", "--out", "o.jsonl"], None, ["task file not found"]),
    "label lone surrogate in an input": (lambda w: (w / "bad.jsonl").write_text('{"text": "ok"}\n{"text": "x\\ud800y"}\n'),
                                         L + ["--inputs", "bad.jsonl", "--out", "o.jsonl"], None, ["bad.jsonl:2", "'text'", "surrogate"]),
    "label invalid UTF-8 input": (lambda w: (w / "bad.txt").write_bytes(b"ok\n\xff\xfe\n"), L + ["--inputs", "bad.txt", "--out", "o.jsonl"],
                                  None, ["bad.txt:2", "UTF-8"]),
    "label empty model folder": (None, L + ["--out", "o.jsonl", "--teacher", "emptydir"], None, ["models.teacher", "no config.json"]),
    "label model is a file": (None, L + ["--out", "o.jsonl", "--student", "inputs.jsonl"], None, ["models.student", "is a file"]),
    "label model folder missing": (None, L + ["--out", "o.jsonl", "--teacher", "./no-model"], None, ["models.teacher", "not found"]),
    "label --device banana": (None, L + ["--out", "o.jsonl", "--device", "banana"], None, ["models.device", "banana"]),
    # a device this machine lacks (no machine has a hundredth GPU): refused before the run directory or its split is written
    "run on cuda:99": (None, ["run", "task.toml", "--run-dir", "newrun", "--device", "cuda:99"], None, ["models.device", "cuda:99"]),
    "predict --device cuda:99": (None, ["predict", "--run-dir", "run", "--device", "cuda:99", "hello"], None, ["--device", "cuda:99"]),
    "export --device cuda:99": (None, ["export", "--run-dir", "run", "--merged", "m", "--device", "cuda:99"], None, ["--device", "cuda:99"]),
    # -- settings checked when the config is read
    "learning_rate nan": (None, L + ["--out", "o.jsonl", "--set", "train.learning_rate=nan"], None, ["train.learning_rate", "finite"]),
    "learning_rate inf": (None, L + ["--out", "o.jsonl", "--set", "train.learning_rate=inf"], None, ["train.learning_rate", "finite"]),
    "lora_dropout 1.5": (None, L + ["--out", "o.jsonl", "--set", "train.lora_dropout=1.5"], None, ["train.lora_dropout", "[0, 1)"]),
    "heldout_fraction nan": (None, L + ["--out", "o.jsonl", "--set", "data.heldout_fraction=nan"], None, ["data.heldout_fraction"]),
    "weight_decay negative": (None, L + ["--out", "o.jsonl", "--set", "train.weight_decay=-1"], None, ["train.weight_decay", ">= 0"]),
    "temperature -inf": (None, L + ["--out", "o.jsonl", "--set", "task.temperature=-inf"], None, ["task.temperature"]),
    "dtype unknown": (None, L + ["--out", "o.jsonl", "--set", "models.dtype='float8'"], None, ["models.dtype"]),
    # 4-bit students and the training precision: refused before the run directory is written
    "run with models.load_in_4bit here": (None, ["run", "task.toml", "--run-dir", "newrun", "--set", "models.load_in_4bit=true"], None,
                                          ["models.load_in_4bit", "bitsandbytes"]),
    "train with models.load_in_4bit here": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "newrun", "--set",
                                                       "models.load_in_4bit=true"], None, ["models.load_in_4bit", "bitsandbytes"]),
    "train 4-bit on the cpu": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "newrun", "--set", "models.device='cpu'",
                                          "--set", "models.load_in_4bit=true"], None, ["models.load_in_4bit", "CUDA device", "'cpu'"]),
    "train.autocast unknown": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "newrun", "--set", "train.autocast='fp8'"],
                               None, ["train.autocast", "'fp8'", "auto, bf16, none"]),
    "train.autocast bf16 on bfloat16 weights": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "newrun", "--set",
                                                           "train.autocast='bf16'", "--set", "models.dtype='bfloat16'"], None,
                                                ["train.autocast", "float32 weights"]),
    "train.gradient_checkpointing not true/false": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "newrun", "--set",
                                                               "train.gradient_checkpointing=1"], None,
                                                    ["train.gradient_checkpointing", "true/false"]),
    "a --set value that is not UTF-8": (None, L + ["--out", "o.jsonl", "--set", "task.name=caf\udce9"], None, ["task.name", "not valid text"]),
    "data.limit negative": (None, L + ["--out", "o.jsonl", "--set", "data.limit=-1"], None, ["data.limit"]),
    # -- train: nothing written into the run before the arguments are checked
    "train --labeled missing": (None, T + ["--labeled", "nope.jsonl", "--run-dir", "run"], None, ["labeled file not found"]),
    "train --labeled is a folder": (None, T + ["--labeled", "emptydir", "--run-dir", "run"], None, ["is a folder"]),
    "train --labeled is not labels": (None, T + ["--labeled", "inputs.jsonl", "--run-dir", "run"], None, ["inputs.jsonl:1", "messages"]),
    "train --heldout missing": (None, T + ["--labeled", "run/labels/train.jsonl", "--heldout", "nope.jsonl", "--run-dir", "run"], None,
                                ["held-out file not found"]),
    "train --heldout is a folder": (None, T + ["--labeled", "run/labels/train.jsonl", "--heldout", "emptydir", "--run-dir", "run"], None,
                                    ["held-out file is a folder"]),
    "train --run-dir inside another run": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "run/eval/sub"], None,
                                           ["inside the run directory"]),
    "train --run-dir is a file": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "inputs.jsonl"], None, ["is a file"]),
    "train --run-dir is a user's folder": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "mine"], None,
                                           ["not a run directory", "notes.txt"]),
    "train --labeled inside the run's train/": (lambda w: shutil.copy(w / "run/labels/train.jsonl", w / "run/train/l.jsonl"),
                                                T + ["--labeled", "run/train/l.jsonl", "--run-dir", "run"], None, ["--labeled", "is inside the run's train/ folder"]),
    "train corrupt checkpoint state": (lambda w: _corrupt(_checkpoint(w) / "trainer_state.json"),
                                       T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "run"], None,
                                       ["trainer_state.json", "corrupt checkpoint", "delete"]),
    "train corrupt metrics": (lambda w: _middle_garbage(w / "run/train/metrics.jsonl"),
                              T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "run"], None, ["metrics.jsonl:2", "corrupt"]),
    "train corrupt config.json": (lambda w: _corrupt(w / "run/config.json"),
                                  T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "run"], None, ["config.json", "delete"]),
    # -- train.init_adapter (--init-from RUN, --init-adapter FOLDER): checked with the other inputs
    "train --init-adapter missing": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "new", "--init-adapter", "nope"],
                                     None, ["nope", "train.init_adapter", "init adapter not found"]),
    "train --init-adapter is not an adapter": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "new",
                                                          "--init-adapter", "mine"], None, ["mine", "no adapter_config.json"]),
    "train --init-adapter is corrupt": (lambda w: _truncate(w / "run/train/adapter/adapter_model.safetensors"),
                                        T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "new", "--init-from", "run"], None,
                                        ["adapter_model.safetensors", "corrupt or incomplete"]),
    "train --init-from a run without an adapter": (lambda w: shutil.rmtree(_other_run(w) / "train" / "adapter"),
                                                   T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "new", "--init-from", "run2"],
                                                   None, ["run2", "--init-from", "no finished adapter", "train stage"]),
    "train --init-from a folder that is not a run": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "new",
                                                                "--init-from", "mine"], None, ["--init-from", "not a run directory"]),
    "train --init-from the run it writes": (None, T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "run", "--init-from", "run"],
                                            None, ["train.init_adapter", "is inside the run's train/ folder"]),
    "run --init-from the run it writes": (None, ["run", "task.toml", "--run-dir", "run", "--init-from", "run"], None,
                                          ["train.init_adapter", "is inside the run's train"]),
    "run --init-adapter missing": (None, ["run", "task.toml", "--run-dir", "new", "--init-adapter", "nope"], None,
                                   ["train.init_adapter", "init adapter not found"]),
    "run init_adapter in the task file is not an adapter": (None, ["run", "task.toml", "--run-dir", "new", "--set",
                                                                   "train.init_adapter='mine'"], None,
                                                            ["mine", "train.init_adapter", "no adapter_config.json"]),
    # -- eval
    "eval a folder that is not a run": (None, E + ["--run-dir", "mine"], None, ["not a run directory"]),
    "eval a missing run": (None, E + ["--run-dir", "nope"], None, ["run directory not found"]),
    "eval run is a file": (None, E + ["--run-dir", "inputs.jsonl"], None, ["is a file"]),
    "eval --inputs missing": (None, E + ["--run-dir", "run", "--inputs", "nope.jsonl"], None, ["input file not found"]),
    "eval --inputs is a folder": (None, E + ["--run-dir", "run", "--inputs", "emptydir"], None, ["input file is a folder"]),
    # -- eval --student: a report folder of its own, claimed like every output
    "eval --student --out a user's folder": (None, E + ["--student", "run/train/adapter", "--inputs", "inputs.jsonl", "--out", "mine"],
                                             None, ["--out", "not written by `eval --student`", "notes.txt"]),
    "eval --student --out inside a run": (None, E + ["--student", "run/train/adapter", "--inputs", "inputs.jsonl", "--out", "run/other"],
                                          None, ["--out", "inside the run directory"]),
    "eval --student --out holds the inputs": (None, E + ["--student", "model", "--inputs", "mine/notes.txt", "--out", "mine"], None,
                                              ["--inputs", "is inside --out"]),
    "eval --student a folder that is no model": (None, E + ["--student", "emptydir", "--inputs", "inputs.jsonl", "--out", "r"], None,
                                                 ["--student", "config.json"]),
    "eval --student without --inputs": (None, E + ["--student", "model", "--out", "r"], None, ["--inputs"]),
    # a student behind a chat API: its model name, and no credentials in its URL
    "eval --student URL without --student-model": (None, E + ["--student", "http://127.0.0.1:9/v1", "--inputs", "inputs.jsonl",
                                                              "--out", "r"], None, ["--student-model", "model name"]),
    "eval --student-model with a local student": (None, E + ["--student", "model", "--student-model", "m", "--inputs", "inputs.jsonl",
                                                             "--out", "r"], None, ["--student-model", "goes with a URL student"]),
    "eval --student URL with credentials": (None, E + ["--student", "http://u:secretpw@127.0.0.1:9/v1", "--student-model", "m",
                                                       "--inputs", "inputs.jsonl", "--out", "r"], None, ["--student", "credentials"]),
    "eval --inputs not a Parquet file": (lambda w: _user_file(w / "bad.parquet"), E + ["--student", "model", "--inputs", "bad.parquet",
                                                                                       "--out", "r"], None, ["bad.parquet", "cannot be read as .parquet"]),
    "eval --inputs inside eval/": (None, E + ["--run-dir", "run", "--inputs", "run/eval/predictions.jsonl"], None, ["--inputs", "is inside the run's eval/ folder"]),
    "eval corrupt partial predictions": (_partial, E + ["--run-dir", "run"], None, ["predictions.partial.jsonl:2", "delete"]),
    "eval corrupt labels": (lambda w: _middle_garbage(w / "run/labels/train.jsonl"), E + ["--run-dir", "run"], None,
                            ["train.jsonl:2", "corrupt labeled record"]),
    "eval corrupt adapter weights": (lambda w: _truncate(w / "run/train/adapter/adapter_model.safetensors"), E + ["--run-dir", "run"],
                                     None, ["adapter_model.safetensors", "corrupt or incomplete"]),
    # -- predict
    "predict corrupt adapter weights": (lambda w: _truncate(w / "run/train/adapter/adapter_model.safetensors"),
                                        ["predict", "--run-dir", "run", "hello"], None, ["adapter_model.safetensors", "train stage"]),
    "predict corrupt adapter config": (lambda w: _corrupt(w / "run/train/adapter/adapter_config.json"),
                                       ["predict", "--run-dir", "run", "hello"], None, ["adapter_config.json", "corrupt adapter configuration"]),
    "predict corrupt config.json": (lambda w: _corrupt(w / "run/config.json"), ["predict", "--run-dir", "run", "hello"], None,
                                    ["config.json", "corrupt run configuration"]),
    "predict run is a file": (None, ["predict", "--run-dir", "inputs.jsonl", "hello"], None, ["is a file"]),
    "predict missing run": (None, ["predict", "--run-dir", "nope", "hello"], None, ["not found"]),
    "predict a folder that is not a run": (None, ["predict", "--run-dir", "mine", "hello"], None, ["not a run directory"]),
    "predict --device banana": (None, ["predict", "--run-dir", "run", "--device", "banana", "hello"], None, ["--device", "banana"]),
    "predict invalid UTF-8 on stdin": (None, ["predict", "--run-dir", "run"], b"hello\n\xff\n", ["<stdin>", "UTF-8"]),
    # -- export: never onto, into or around the run, never over a user's folder
    "export --adapter into a user's folder": (None, ["export", "--run-dir", "run", "--adapter", "mine"], None, ["did not write", "notes.txt", "--overwrite"]),
    "export --adapter into the run's train/": (None, ["export", "--run-dir", "run", "--adapter", "run/train/exported", "--overwrite"], None,
                                               ["inside the run's own train"]),
    "export --adapter onto the run's eval/": (None, ["export", "--run-dir", "run", "--adapter", "run/eval", "--overwrite"], None,
                                              ["inside the run's own eval"]),
    "export --merged onto the run's config.json": (None, ["export", "--run-dir", "run", "--merged", "run/config.json", "--overwrite"], None,
                                                   ["inside the run's own config.json"]),
    "export --adapter is the run": (None, ["export", "--run-dir", "run", "--adapter", "run", "--overwrite"], None, ["the run directory", "is the same path as --adapter"]),
    "export --merged contains the run": (None, ["export", "--run-dir", "run", "--merged", ".", "--overwrite"], None, ["the run directory", "is inside --merged"]),
    "export --adapter is a file": (None, ["export", "--run-dir", "run", "--adapter", "inputs.jsonl"], None, ["is a file"]),
    "export --merged equals --adapter": (None, ["export", "--run-dir", "run", "--merged", "x", "--adapter", "x"], None, ["--merged is the same path as --adapter"]),
    "export into another run": (_other_run, ["export", "--run-dir", "run", "--adapter", "run2/adapter-copy", "--overwrite"], None,
                                ["inside the run directory"]),
    "export over an edited export": (_exported_then_edited, ["export", "--run-dir", "run", "--adapter", "exported"], None,
                                     ["README.md (changed since export)"]),
    "export --dtype unknown": (None, ["export", "--run-dir", "run", "--merged", "m", "--dtype", "float8"], None, ["--dtype"]),
    "export --device banana": (None, ["export", "--run-dir", "run", "--merged", "m", "--device", "banana"], None, ["--device"]),
    "export a folder that is not a run": (None, ["export", "--run-dir", "mine", "--adapter", "a"], None, ["not a run directory"]),
    "export a missing run": (None, ["export", "--run-dir", "nope", "--adapter", "a"], None, ["run directory not found"]),
    "export a run that is a file": (None, ["export", "--run-dir", "inputs.jsonl", "--adapter", "a"], None, ["is a file"]),
    "export corrupt adapter": (lambda w: _truncate(w / "run/train/adapter/adapter_model.safetensors"),
                               ["export", "--run-dir", "run", "--adapter", "a"], None, ["corrupt or incomplete"]),
    # -- run
    "run --run-dir is a user's folder": (None, ["run", "task.toml", "--run-dir", "mine"], None, ["not a run directory"]),
    "run --run-dir inside another run": (None, ["run", "task.toml", "--run-dir", "run/train/nested"], None, ["inside the run directory"]),
    "run --run-dir is a file": (None, ["run", "task.toml", "--run-dir", "inputs.jsonl"], None, ["is a file"]),
    "run data.heldout_inputs repeating a training input": (
        lambda w: write_jsonl(w / "held.jsonl", [{"id": "h0", "text": "An input only held out."}, {"id": "h1", "text": TEXTS[1][0]}]),
        ["run", "task.toml", "--run-dir", "fresh", "--set", "data.heldout_inputs='held.jsonl'"], None,
        ["held.jsonl:2", "data.heldout_inputs", "unseen in training"]),
    "run data.inputs inside the run's split/": (None, ["run", "task.toml", "--run-dir", "run", "--set", "data.inputs='run/split/train.jsonl'"],
                                                None, ["data.inputs", "is inside the run's split"]),
    "run task file inside the run's outputs": (lambda w: (w / "run/eval/task.toml").write_text(
                                                   (w / "task.toml").read_text().replace('"inputs.jsonl"', '"../../inputs.jsonl"')),
                                               ["run", "run/eval/task.toml", "--run-dir", "run"], None,
                                               ["the task file", "is inside the run's eval"]),
    "eval check with an invalid regex": (lambda w: _append(w / "task.toml", '[[eval.checks]]\nname = "no_lists"\nkind = "not_regex"\npattern = "[-*"\n'),
                                         E + ["--run-dir", "run"], None, ["task.toml:", "eval.checks[0].pattern", "invalid regex"]),
    "eval check with an invalid JSON schema": (lambda w: _append(w / "task.toml", '[[eval.checks]]\nname = "obj"\nkind = "json_schema"\n'
                                                                 'schema = { type = "objekt" }\n'),
                                               E + ["--run-dir", "run"], None, ["eval.checks[0].schema", "invalid JSON schema"]),
    "run task name leaves runs/": (None, ["run", "task.toml", "--set", "task.name='../../x'"], None, ["task.name", "--run-dir"]),
    "run corrupt config.json": (lambda w: _corrupt(w / "run/config.json"), ["run", "task.toml", "--run-dir", "run"], None,
                                ["config.json", "delete config.json"]),
    "run corrupt stage marker": (lambda w: _corrupt(w / "run/stages/label.json"), ["run", "task.toml", "--run-dir", "run"], None,
                                 ["label.json", "corrupt stage marker"]),
    "render --labeled missing": (None, ["render", "task.toml", "--labeled", "nope.jsonl"], None, ["labeled file not found"]),
    "render --labeled is a folder": (None, ["render", "task.toml", "--labeled", "emptydir"], None, ["is a folder"]),
    # -- a task file is trusted like code: what it may not do without the person running the command
    "task.name with a newline and an image line": (None, L + ["--out", "o.jsonl", "--set", "task.name=\"demo\\n![x](mine/notes.txt)\""],
                                                   None, ["task.name", "control character"]),
    "a label with a NUL": (None, L + ["--out", "o.jsonl", "--set", "task.labels=[\"en\", \"f\\u0000r\", \"de\"]"], None,
                           ["task.labels", "control character"]),
    "trust_remote_code in the task file": (lambda w: (w / "task2.toml").write_text(
                                               (w / "task.toml").read_text().replace("[models]\n", "[models]\ntrust_remote_code = true\n")),
                                           ["label", "task2.toml", "--out", "o.jsonl"], None,
                                           ["task2.toml", "models.trust_remote_code", "--trust-remote-code"]),
    "trust_remote_code by --set": (None, L + ["--out", "o.jsonl", "--set", "models.trust_remote_code=true"], None,
                                   ["models.trust_remote_code", "--trust-remote-code"]),
    "trust_remote_code in vllm_options": (None, L + ["--out", "o.jsonl", "--set", "models.vllm_options={trust_remote_code=true}"], None,
                                          ["models.vllm_options.trust_remote_code", "--trust-remote-code"]),
    "vllm_options an unknown engine option": (None, L + ["--out", "o.jsonl", "--set", "models.vllm_options={hf_token='hf_secret123'}"],
                                              None, ["models.vllm_options.hf_token", "allowed: max_model_len"]),
    "100000 concurrent requests": (None, L + ["--out", "o.jsonl", "--concurrency", "100000"], None,
                                   ["models.teacher_concurrency", "<= 256", "--no-limits"]),
    "a million samples per input": (None, L + ["--out", "o.jsonl", "--set", "task.samples=1000000", "--temperature", "1"], None,
                                    ["task.samples", "--no-limits"]),
    "latency_requests over the limit": (None, E + ["--run-dir", "run", "--set", "eval.latency_requests=1000000"], None,
                                        ["eval.latency_requests", "--no-limits"]),
    # -- symlinks: never written through
    "the run's lock links to a user's file": (lambda w: _link(w / "run/.lock", w / "mine/notes.txt"), E + ["--run-dir", "run"], None,
                                              [".lock", "symlink"]),
    "the run's eval/ links to a user's folder": (lambda w: _link(w / "run/eval", w / "mine"), E + ["--run-dir", "run"], None,
                                                 ["eval", "symlink"]),
    "the run's split/ links elsewhere (run)": (lambda w: _link(w / "run/split", w / "mine"), ["run", "task.toml", "--run-dir", "run"],
                                               None, ["split", "symlink"]),
    "the run's labels file links to a user's file": (lambda w: _link(w / "run/labels/train.jsonl", w / "mine/notes.txt"),
                                                     ["run", "task.toml", "--run-dir", "run"], None, ["labels/train.jsonl", "symlink"]),
    "label --out's lock links to a user's file": (lambda w: _link(w / "o.jsonl.lock", w / "mine/notes.txt"), L + ["--out", "o.jsonl"],
                                                  None, ["o.jsonl.lock", "symlink"]),
    "label --out links to a user's file": (lambda w: _link(w / "o.jsonl", w / "mine/notes.txt"), L + ["--out", "o.jsonl"], None,
                                           ["symlink"]),
    "synthesize --out links to a user's file": (lambda w: _link(w / "s.jsonl", w / "mine/notes.txt"),
                                                ["synthesize", "task.toml", "--n", "2", "--out", "s.jsonl"], None, ["symlink"]),
    # -- side files: claimed like --out, ours only by a marker the tool wrote
    "label --out shaped like labels but no sidecar (--force)": (lambda w: _user_file(w / "o.jsonl", '{"id": "1", "status": "ok"}\n'),
                                                                L + ["--out", "o.jsonl", "--force"], None,
                                                                ["not written by promptdistill", "o.jsonl.meta.json"]),
    "label --rejects' default is a user's file": (lambda w: _user_file(w / "o.rejects.jsonl", '{"id": "1", "status": "unparsed"}\n'),
                                                  L + ["--out", "o.jsonl"], None,
                                                  ["--rejects", "o.rejects.jsonl", "not written by promptdistill"]),
    "label --out's lock is a user's file": (lambda w: _user_file(w / "o.jsonl.lock"), L + ["--out", "o.jsonl"], None,
                                            ["lock file", "not written by promptdistill"]),
    "label --out's sidecar is a user's JSON": (lambda w: _user_file(w / "o.jsonl.meta.json", '{"mine": 1}'), L + ["--out", "o.jsonl"],
                                               None, ["sidecar", "not written by promptdistill"]),
    "import-chats over a user's .foreign.jsonl": (_chat_logs, ["import-chats", "task.toml", "--logs", "logs.jsonl", "--out", "chats.jsonl"],
                                                  None, ["chats.foreign.jsonl", "not written by promptdistill"]),
    "synthesize over a user's .raw.jsonl": (lambda w: _user_file(w / "s.raw.jsonl"),
                                            ["synthesize", "task.toml", "--n", "2", "--out", "s.jsonl"], None,
                                            ["s.raw.jsonl", "not written by promptdistill"]),
    "synthesize over a user's .turns.jsonl": (lambda w: _user_file(w / "s.turns.jsonl"),
                                              ["synthesize", "task.toml", "--n", "2", "--out", "s.jsonl"], None,
                                              ["s.turns.jsonl", "not written by promptdistill"]),
    "synthesize over a user's .synthesis.md": (lambda w: _user_file(w / "s.synthesis.md", "# my notes\n"),
                                               ["synthesize", "task.toml", "--n", "2", "--out", "s.jsonl"], None,
                                               ["s.synthesis.md", "not written by promptdistill"]),
    # -- export --overwrite: never over a repository, a symlink, or the folder it runs in
    "export --overwrite onto a folder holding .git": (lambda w: (w / "mine" / ".git").mkdir(),
                                                      ["export", "--run-dir", "run", "--adapter", "mine", "--overwrite"], None,
                                                      ["holds .git", "even with --overwrite"]),
    "export --overwrite onto a symlinked folder": (lambda w: _link(w / "elsewhere", w / "mine"),
                                                   ["export", "--run-dir", "run", "--adapter", "elsewhere", "--overwrite"], None,
                                                   ["is a symlink"]),
    # -- hostile files and values: one line with the file, line and field, never a traceback
    "an input line nested 100000 deep": (lambda w: (w / "deep.jsonl").write_text(
                                             '{"text": "fine"}\n{"text": "x", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
                                         L + ["--inputs", "deep.jsonl", "--out", "o.jsonl"], None, ["deep.jsonl:2", "nested too deeply"]),
    "a labels line nested 50000 deep": (lambda w: (w / "deep.jsonl").write_text(
                                            '{"id": "1", "status": "ok", "x": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001 + "\n"),
                                        T + ["--labeled", "deep.jsonl", "--run-dir", "new"], None, ["deep.jsonl:1", "nested too deeply"]),
    "a task file nested 100000 deep": (lambda w: (w / "deep.toml").write_text(
                                           "[task]\nname = 'x'\nlabels = " + "[" * 100_000 + "]" * 100_000 + "\n"),
                                       ["label", "deep.toml", "--out", "o.jsonl"], None, ["deep.toml", "nested too deeply"]),
    "a CSV quote never closed": (lambda w: (w / "q.csv").write_text('text,label\nfirst,en\n"never closed,fr\nb,de\nc,de\n'),
                                 L + ["--inputs", "q.csv", "--out", "o.jsonl"], None, ["q.csv:3"]),
    "a CSV quote that would merge lines": (lambda w: (w / "q.csv").write_text('text,label\nfirst,en\n"merged,fr\nb,de\nc",de\n'),
                                           L + ["--inputs", "q.csv", "--out", "o.jsonl"], None, ["q.csv:3"]),
    "max_new_tokens over the limit": (None, L + ["--out", "o.jsonl", "--set", "task.max_new_tokens=1000000"], None,
                                      ["task.max_new_tokens", "--no-limits"]),
    "teacher_resamples over the limit": (None, E + ["--run-dir", "run", "--set", "eval.teacher_resamples=100000"], None,
                                         ["eval.teacher_resamples", "--no-limits"]),
    "credentials in teacher_url": (None, L + ["--out", "o.jsonl", "--teacher-backend", "chat",
                                              "--set", "models.teacher_url='https://user:hunter2@api.example.com/v1'"], None,
                                   ["models.teacher_url"]),
    # -- one run, one set of settings
    "train over a run trained with other data": (None, T + ["--labeled", "run/labels/heldout.jsonl", "--run-dir", "run"], None,
                                                 ["already trained", "records", "--force"]),
    "eval a task that differs from the run's": (None, E + ["--run-dir", "run", "--set", "task.answer_template='Final Answer:  {label}'"],
                                                None, ["differs from the one this run was trained with", "task.answer_template"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fault(case, world, tmp_path):
    setup, argv, stdin, words = CASES[case]
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    # The task file names the model by its absolute path in the original world; point it at this copy.
    task = w / "task.toml"
    task.write_text(task.read_text(encoding="utf-8").replace(str(world), str(w)), encoding="utf-8")
    if setup is not None:
        setup(w)
    before = tree(w)
    done = cli(argv, cwd=w, stdin=stdin)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, f"exit {done.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    after = tree(w)
    assert after == before, {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


# -- the same refusals from Python: each stage's function checks what its command checks ------


class _NoTeacher:
    """A Teacher that must never be asked: every case below is refused before labeling."""

    def __new__(cls):
        from promptdistill.teachers import Teacher

        class Never(Teacher):
            name = "never"
            tokenizer = None

            def meta(self):
                return {}

            def label(self, *args, **kwargs):
                raise AssertionError("a refused call reached the teacher")

        return Never()


def _api_cfg(w: Path, models: dict | None = None, **train):
    from promptdistill.config import load_config

    cfg = load_config(w / "task.toml")
    for key, value in (models or {}).items():
        setattr(cfg.models, key, value)
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def _inputs(w: Path):
    from promptdistill.records import read_inputs

    return read_inputs(w / "inputs.jsonl")


def _labeled(w: Path):
    from promptdistill.records import read_labeled

    return read_labeled(w / "run" / "labels" / "train.jsonl")


def _label(w, out, **kw):
    from promptdistill.labeling import label_inputs

    label_inputs(_api_cfg(w), _inputs(w), _NoTeacher(), out, progress=False, **kw)


def _train(w, folder, models: dict | None = None, **train):
    from promptdistill.training.recipe import train_student

    train_student(_api_cfg(w, models, **train), _labeled(w), folder, progress=False)


def _train_run(w, labeled, run_dir):
    from promptdistill.training.stage import train_run

    train_run(_api_cfg(w), labeled, run_dir, progress=False)


def _evaluate(w, run_dir, **kw):
    from promptdistill.pipeline import evaluate_run

    evaluate_run(_api_cfg(w), run_dir, _inputs(w), progress=False, **kw)


def _run(w, run_dir):
    from promptdistill.pipeline import run_pipeline

    run_pipeline(_api_cfg(w), run_dir, progress=False, log=lambda *_: None)


def _export(kind, run_dir, out, **kw):
    from promptdistill import export

    (export.export_merged if kind == "merged" else export.export_adapter)(run_dir, out, **kw)


def _synthesize(w, out):
    from promptdistill.synthesis import synthesize

    synthesize(_api_cfg(w), 2, out, teacher=_NoTeacher(), progress=False, log=lambda *_: None)


def _import_chats(w, logs, out):
    from promptdistill.chatlogs import import_chats
    from promptdistill.task import Task

    import_chats(Task(_api_cfg(w).task), logs, out)


# id: (setup(world) or None, the call (on the world's copy, from inside it), words the error must contain)
API_CASES = {
    "label_inputs into the input file": (None, lambda w: _label(w, "inputs.jsonl", reads={"--inputs": "inputs.jsonl"}),
                                         ["--inputs", "is the same path as --out"]),
    "label_inputs into a user's file": (lambda w: (w / "notes.txt").write_text("hello\nworld\n"), lambda w: _label(w, "notes.txt"),
                                        ["not a labeled JSONL file"]),
    "label_inputs into a run's eval/": (None, lambda w: _label(w, "run/eval/extra.jsonl"), ["inside the run directory"]),
    "label_inputs with a corrupt sidecar": (_labels_with_bad_sidecar, lambda w: _label(w, "out.jsonl"),
                                            ["corrupt labels sidecar", "--force"]),
    "train_student into a file": (None, lambda w: _train(w, "inputs.jsonl"), ["is a file"]),
    "train_student inside a run's eval/": (None, lambda w: _train(w, "run/eval/sub"), ["inside the run directory"]),
    "train_student from an adapter in its own folder": (None, lambda w: _train(w, "run/train", init_adapter=str(w / "run/train/adapter")),
                                                        ["train.init_adapter", "is inside the training folder"]),
    "train_student 4-bit where bitsandbytes or CUDA is missing": (None, lambda w: _train(w, "newfolder", models={"load_in_4bit": True}),
                                                                   ["models.load_in_4bit", "bitsandbytes"]),
    "train_run into a user's folder": (None, lambda w: _train_run(w, "run/labels/train.jsonl", "mine"), ["not a run directory", "notes.txt"]),
    "train_run with labels inside the run's train/": (lambda w: shutil.copy(w / "run/labels/train.jsonl", w / "run/train/l.jsonl"),
                                                      lambda w: _train_run(w, "run/train/l.jsonl", "run"),
                                                      ["--labeled", "is inside the run's train/ folder"]),
    "evaluate_run on a folder that is not a run": (None, lambda w: _evaluate(w, "mine"), ["not a run directory"]),
    "evaluate_run with inputs inside eval/": (None, lambda w: _evaluate(w, "run", reads={"--inputs": "run/eval/report.json"}),
                                              ["--inputs", "is inside the run's eval/ folder"]),
    "evaluate_run with corrupt partial predictions": (_partial, lambda w: _evaluate(w, "run"), ["predictions.partial.jsonl:2", "delete"]),
    "evaluate_run with a corrupt adapter": (lambda w: _truncate(w / "run/train/adapter/adapter_model.safetensors"),
                                            lambda w: _evaluate(w, "run"), ["corrupt or incomplete"]),
    "run_pipeline into a user's folder": (None, lambda w: _run(w, "mine"), ["not a run directory"]),
    "run_pipeline inside another run": (None, lambda w: _run(w, "run/train/nested"), ["inside the run directory"]),
    "run_pipeline with a corrupt stage marker": (lambda w: _corrupt(w / "run/stages/label.json"), lambda w: _run(w, "run"),
                                                 ["label.json", "corrupt stage marker"]),
    "export_adapter into a user's folder": (None, lambda w: _export("adapter", "run", "mine"), ["did not write", "notes.txt", "--overwrite"]),
    "export_merged onto the run's eval/": (None, lambda w: _export("merged", "run", "run/eval", overwrite=True),
                                           ["inside the run's own eval"]),
    "export_adapter is the run": (None, lambda w: _export("adapter", "run", "run", overwrite=True),
                                  ["the run directory", "is the same path as --adapter"]),
    "export_adapter over an edited export": (_exported_then_edited, lambda w: _export("adapter", "run", "exported"),
                                             ["README.md (changed since export)"]),
    "export_adapter of a folder that is not a run": (None, lambda w: _export("adapter", "mine", "a"), ["not a run directory"]),
    "synthesize over the input file": (None, lambda w: _synthesize(w, "inputs.jsonl"), ["not written by `synthesize`"]),
    "synthesize into a run's eval/": (None, lambda w: _synthesize(w, "run/eval/s.jsonl"), ["inside the run directory"]),
    "label_file with a conversation ending in an assistant turn": (
        lambda w: _conversation(w, _user("Hi."), _assistant("Hello!")),
        lambda w: __import__("promptdistill.labeling", fromlist=["label_file"]).label_file(_api_cfg(w), w / "conv.jsonl", w / "o.jsonl"),
        ["conv.jsonl:2", "ends in an assistant turn"]),
    "import_chats into the logs": (None, lambda w: _import_chats(w, "inputs.jsonl", "inputs.jsonl"),
                                   ["the chat logs", "is the same path as --out"]),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_fault(case, world, tmp_path, monkeypatch):
    """The Python API refuses what the command refuses, and writes nothing either."""
    from promptdistill.errors import PromptDistillError

    setup, call, words = API_CASES[case]
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    task = w / "task.toml"
    task.write_text(task.read_text(encoding="utf-8").replace(str(world), str(w)), encoding="utf-8")
    if setup is not None:
        setup(w)
    monkeypatch.chdir(w)
    before = tree(w)
    with pytest.raises(PromptDistillError) as info:
        call(w)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"
    after = tree(w)
    assert after == before, {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def test_unreadable_file_is_one_line_in_process(tmp_path, monkeypatch):
    """A read that fails is one error naming the file. Simulated: this project's
    machines and CI run as root, where file modes do not stop a read."""
    from promptdistill.errors import PromptDistillError
    from promptdistill.records import read_inputs

    path = tmp_path / "in.txt"
    path.write_text("hello\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", denied)  # readers stream the file line by line (records.iter_lines)
    with pytest.raises(PromptDistillError) as info:
        read_inputs(path)
    assert "in.txt" in str(info.value) and "Permission denied" in str(info.value)


# -- what is allowed, next to what is refused ----------------------------------------


def test_export_replaces_its_own_folder_and_overwrite_replaces_a_users(world, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    old_mask = os.umask(0o022)
    try:
        first = cli(["export", "--run-dir", "run", "--adapter", "exported"], cwd=w)
        assert first.returncode == 0, first.stderr.decode()[-2000:]
        again = cli(["export", "--run-dir", "run", "--adapter", "exported"], cwd=w)  # unchanged since: the tool's own, replaced
        assert again.returncode == 0, again.stderr.decode()[-2000:]
        manifest = json.loads((w / "exported" / ".promptdistill-export.json").read_text())
        assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
        # Readable by others: the umask's permissions, not mkstemp's 0600 / mkdtemp's 0700.
        assert stat.S_IMODE((w / "exported").stat().st_mode) == 0o755
        for f in (w / "exported").iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
        beside = cli(["export", "--run-dir", "run", "--adapter", "run/exported"], cwd=w)  # a new folder beside the run's own entries
        assert beside.returncode == 0, beside.stderr.decode()[-2000:]
        assert (w / "run" / "exported" / "adapter_config.json").exists()
        forced = cli(["export", "--run-dir", "run", "--adapter", "mine", "--overwrite"], cwd=w)
        assert forced.returncode == 0, forced.stderr.decode()[-2000:]
        # --overwrite replaces what the tool writes; the user's own file is kept, and stays foreign to the manifest.
        assert (w / "mine" / "notes.txt").read_text() == "the user's notes\n" and (w / "mine" / "adapter_config.json").exists()
        assert "notes.txt" not in json.loads((w / "mine" / ".promptdistill-export.json").read_text())["files"]
    finally:
        os.umask(old_mask)


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    from promptdistill.io import atomic_write_text

    old_mask = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640
        (tmp_path / "new.txt").chmod(0o600)
        atomic_write_text(tmp_path / "new.txt", "y")
        assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old_mask)


def test_label_applies_data_limit_dedupe_and_too_long(world, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    task = w / "task.toml"
    task.write_text(task.read_text(encoding="utf-8").replace(str(world), str(w)), encoding="utf-8")
    rows = [{"id": str(i), "text": t} for i, (t, _) in enumerate(TEXTS)] + [{"id": "dup", "text": TEXTS[0][0]},
                                                                             {"id": "long", "text": " ".join(["word"] * 400)}]
    write_jsonl(w / "more.jsonl", rows)
    done = cli(L + ["--inputs", "more.jsonl", "--out", "o.jsonl", "--set", "data.limit=3", "--set", "data.dedupe=true",
                    "--set", "train.max_length=128"], cwd=w)
    err = done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    ids = [json.loads(line)["id"] for f in ("o.jsonl", "o.rejects.jsonl") if (w / f).exists()
           for line in (w / f).read_text().splitlines() if line.strip()]
    assert len(ids) == 3 and "dup" not in ids and "long" not in ids
    assert "1 duplicate inputs" in err and "more.jsonl" in err and "lines 8" in err and "train.max_length=128" in err


@pytest.mark.parametrize("short_one", ["student", "teacher"])
def test_inputs_over_the_models_context_are_reported_by_line(tmp_path, tiny_model_dir, short_one):
    """The tiny model's max_position_embeddings is 2048; the other model here is
    its copy claiming 16384. An input of ~2,500 tokens exceeds the short one's
    context, whatever train.max_length says, and is reported with its line
    (the teacher's check counts the teacher's prompt, the student's its own)."""
    from promptdistill.config import config_from_dict
    from promptdistill.inputs import prepare_inputs
    from promptdistill.task import Task

    roomy = tmp_path / "roomy"
    shutil.copytree(tiny_model_dir, roomy)
    config = json.loads((roomy / "config.json").read_text())
    (roomy / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 16384}))
    models = {"student": tiny_model_dir, "teacher": str(roomy)} if short_one == "student" else {"student": str(roomy), "teacher": tiny_model_dir}
    write_jsonl(tmp_path / "in.jsonl", [{"text": "short"}, {"text": " ".join(["word"] * 2500)}, {"text": "also short"}])
    cfg = config_from_dict({"task": {"user_template": "{text}", "max_new_tokens": 10}, "models": models, "train": {"max_length": 4096}})
    logged = []
    kept = prepare_inputs(cfg, Task(cfg.task), tmp_path / "in.jsonl", logged.append)
    assert [e.text for e in kept] == ["short", "also short"]
    assert len(logged) == 1 and f"the {short_one}" in logged[0] and "context of 2048 tokens" in logged[0] and "lines 2" in logged[0]


# -- trust boundaries beyond the table: what needs a second process, a success, or a look inside a file ------------


@pytest.mark.parametrize("argv", [T + ["--labeled", "run/labels/train.jsonl", "--run-dir", "run", "--force"],
                                  E + ["--run-dir", "run"]], ids=["train", "eval"])
def test_a_second_command_on_a_run_refuses_at_once_and_writes_nothing(argv, world, tmp_path):
    """One lock per run (RUN/.lock), taken before anything is written: while another
    command holds it (a train, here held by this process), train and eval refuse
    at once, before train's --force discards anything or writes config.json."""
    from promptdistill.io import DirectoryLock

    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    task = w / "task.toml"
    task.write_text(task.read_text(encoding="utf-8").replace(str(world), str(w)), encoding="utf-8")
    with DirectoryLock(w / "run" / ".lock", "the run (held by another train)"):
        before = tree(w)
        done = cli(argv, cwd=w, timeout=120)
        after = tree(w)
    err = done.stderr.decode()
    assert done.returncode == 2 and "another promptdistill process" in err and err.count("\n") == 1, err
    assert after == before


def test_train_force_over_a_run_trained_otherwise_clears_its_evaluation(world, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    task = w / "task.toml"
    task.write_text(task.read_text(encoding="utf-8").replace(str(world), str(w)), encoding="utf-8")
    assert (w / "run/stages/eval.json").exists() and (w / "run/eval/report.json").exists()
    done = cli(T + ["--labeled", "run/labels/heldout.jsonl", "--run-dir", "run", "--force"], cwd=w)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    # The old evaluation described another adapter: gone with its marker; the new training is recorded.
    assert not (w / "run/stages/eval.json").exists() and not (w / "run/eval").exists()
    assert json.loads((w / "run/stages/train.json").read_text())["settings"]["heldout"]
    again = cli(T + ["--labeled", "run/labels/heldout.jsonl", "--run-dir", "run"], cwd=w)  # the same training: no --force needed
    assert again.returncode == 0, again.stderr.decode()[-2000:]


def test_secret_engine_option_is_not_echoed(world, tmp_path):
    done = cli(L + ["--out", "o.jsonl", "--set", "models.vllm_options={hf_token='hf_secret123'}"], cwd=world)
    assert done.returncode == 2 and b"hf_secret123" not in done.stderr + done.stdout


def test_hostile_names_are_neither_inlined_nor_interpreted_in_the_report(tmp_path):
    """A report.json whose task name, models and labels carry markdown (written by a
    run made before names were checked, or edited): report.md shows them as text,
    and report.html inlines only the pictures the evaluation drew, never a file an
    image line names, nor one of its own pictures replaced by a symlink."""
    from promptdistill.evaluation.run_report import write_run_report

    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"PRIVATE-KEY-MATERIAL")
    label = "a|b ![y](" + str(secret) + ")"
    confusion = {g: {p: 1 for p in ("x", label, "??")} for g in ("x", label)}
    sys_row = {"uses_prompt": False, "n": 2, "accuracy": 0.5, "agreement": 0.5, "parse_rate": 1.0, "mean_prompt_tokens": 3.0,
               "median_latency_ms": 1.0, "confusion": confusion, "json": None}
    from promptdistill.evaluation.agreement import reference_points

    report = {"task": f"demo\n![x]({secret})\n# heading", "n_examples": 2, "reference_points": reference_points([], {}), "teacher_mode": "choose", "majority_label": label,
              "majority_agreement": 0.5, "models": {"teacher": "t`x", "student": "s|"},
              "systems": {"teacher": sys_row, "base": sys_row, "student": sys_row}}
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "report.json").write_text(json.dumps(report))
    pictures = write_run_report(run)
    html = (run / "eval" / "report.html").read_text()
    md = (run / "eval" / "report.md").read_text()
    import base64

    assert base64.b64encode(b"PRIVATE-KEY-MATERIAL").decode() not in html
    assert html.count("<img") == len(pictures) > 0  # only the evaluation's own pictures
    assert not any(line.startswith(("![x]", "![y]", "# heading")) for line in md.splitlines())
    rows = [line for line in md.splitlines() if line.startswith("| **a\\|b")]  # the label's confusion rows
    header = next(line for line in md.splitlines() if line.startswith("| gold \\ pred"))
    assert rows and all(len(re.split(r"(?<!\\)\|", r)) == len(re.split(r"(?<!\\)\|", header)) for r in rows)
    # A picture of its own replaced by a symlink to the secret is not inlined either.
    name = next(iter(pictures.values()))
    from promptdistill.evaluation.run_report import markdown_to_html

    (run / "eval" / name).unlink()
    (run / "eval" / name).symlink_to(secret)
    assert base64.b64encode(b"PRIVATE-KEY-MATERIAL").decode() not in markdown_to_html(md, run / "eval", "t", set(pictures.values()))


# -- one marker shape: `train` and `run` read each other's training ---------------------------


def _world_copy(world: Path, tmp_path: Path, *, own_model: bool = True) -> Path:
    """A copy of the world; its task file names the copy's model, or (`own_model` False)
    still the world's, the model the copied run was trained with, as it names it."""
    w = tmp_path / "w"
    shutil.copytree(world, w, symlinks=True)
    task = w / "task.toml"
    if own_model:
        task.write_text(task.read_text(encoding="utf-8").replace(str(world), str(w)), encoding="utf-8")
    return w


def _marker(w: Path, stage: str) -> dict | None:
    path = w / "run" / "stages" / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_train_over_a_run_made_by_run_needs_force_only_for_other_settings(world, tmp_path):
    """`run` and `train` write one train marker (the records trained on, by their hash, and the
    settings): `train` with the run's labels and settings continues that training without
    --force and keeps its evaluation; other settings are refused naming the keys, nothing
    written; --force then clears the later stage (eval/ and its marker) and keeps split and
    labels; and `run` in turn names what `train` changed."""
    w = _world_copy(world, tmp_path)
    shutil.rmtree(w / "run")  # made here, so every path it records is this copy's
    made = cli(["run", "task.toml", "--run-dir", "run", "--no-progress"], cwd=w)
    assert made.returncode == 0, made.stderr.decode()[-2000:]
    same = T + ["--labeled", "run/labels/train.jsonl", "--heldout", "run/labels/heldout.jsonl", "--run-dir", "run"]
    made_by_run = {s: _marker(w, s) for s in ("split", "label", "train", "eval")}
    assert all(made_by_run.values())
    done = cli(same, cwd=w)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert _marker(w, "train")["fingerprint"] == made_by_run["train"]["fingerprint"]
    assert _marker(w, "eval") == made_by_run["eval"] and (w / "run/eval/report.json").exists()
    rerun = cli(["run", "task.toml", "--run-dir", "run", "--no-progress"], cwd=w)
    said = (rerun.stdout + rerun.stderr).decode()
    assert rerun.returncode == 0, said[-2000:]
    assert all(f"{s}: already complete, skipping" in said for s in ("split", "label", "train", "eval")), said[-2000:]

    other = same + ["--set", "train.learning_rate=0.05"]
    before = tree(w)
    refused = cli(other, cwd=w)
    err = refused.stderr.decode()
    assert refused.returncode == 2 and err.count("\n") == 1, err
    assert "already trained" in err and "train.learning_rate" in err and "--force" in err
    assert tree(w) == before

    forced = cli(other + ["--force"], cwd=w)
    assert forced.returncode == 0, forced.stderr.decode()[-2000:]
    assert _marker(w, "eval") is None and not (w / "run/eval").exists()
    assert _marker(w, "split") == made_by_run["split"] and _marker(w, "label") == made_by_run["label"]
    assert _marker(w, "train")["settings"]["train"]["learning_rate"] == 0.05
    again = cli(["run", "task.toml", "--run-dir", "run", "--no-progress"], cwd=w)
    err = again.stderr.decode()
    assert again.returncode == 2 and "stage 'train' already ran here" in err and "train.learning_rate" in err, err


# -- two commands on one run at the same time: one lock, RUN/.lock -----------------------------


def _start(args, cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "promptdistill", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_lock(proc: subprocess.Popen, lock: Path, timeout: float = 240) -> None:
    """Until `proc` holds the run's lock (the lock file holds its pid once flock succeeded)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the first command ended (exit {proc.returncode}) before it was seen holding the lock: "
                                 + err.decode()[-2000:])
        try:
            if lock.read_text().strip() == str(proc.pid):
                return
        except OSError:
            pass
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("the first command never took the run's lock")


_FIRST = {"train": T + ["--labeled", "run/labels/train.jsonl", "--heldout", "run/labels/heldout.jsonl", "--run-dir", "run"],
          "eval": E + ["--run-dir", "run"]}
_SECOND = {"train": T + ["--labeled", "run/labels/heldout.jsonl", "--run-dir", "run", "--force"],
           "eval": E + ["--run-dir", "run"]}


@pytest.mark.parametrize("first, second", [("train", "train"), ("train", "eval"), ("eval", "train")])
def test_two_commands_on_one_run_at_once_one_refuses_and_writes_nothing(first, second, world, tmp_path):
    """Two real commands on one run: while the first holds RUN/.lock (frozen with SIGSTOP
    once its pid is in the lock file, so the tree stands still), the second refuses at
    once with one line and changes nothing (a train --force discards nothing); the
    first, resumed, finishes."""
    import signal

    w = _world_copy(world, tmp_path, own_model=False)  # the model the run's markers name
    proc = _start(_FIRST[first], w)
    try:
        _wait_for_lock(proc, w / "run" / ".lock")
        os.kill(proc.pid, signal.SIGSTOP)
        before = tree(w)
        done = cli(_SECOND[second], cwd=w, timeout=240)
        after = tree(w)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err_first = proc.communicate(timeout=600)
    err = done.stderr.decode()
    assert done.returncode == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"another promptdistill process (pid {proc.pid}) is writing this run directory" in err, err
    assert after == before, {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert proc.returncode == 0, err_first.decode()[-2000:]
    assert not (w / "run" / "train" / ".lock").exists()  # one lock per run: training takes no second one


# -- export --overwrite never replaces a folder it cannot own ----------------------------------


def _mount_point() -> Path:
    """A mount point whose parent this process may write (so the mount check, not a permission, refuses)."""
    for line in Path("/proc/mounts").read_text().splitlines():
        where = Path(line.split()[1].replace("\\040", " "))
        if where != Path("/") and os.path.ismount(where) and os.access(where.parent, os.W_OK | os.X_OK) and where.is_dir():
            return where
    pytest.skip("no mount point with a writable parent on this machine (the mount check cannot be reached by the CLI)")


@pytest.mark.parametrize("target", ["home", "root", "mount point", "git", "current folder", "current folder as ."])
def test_export_overwrite_refuses_folders_it_never_replaces(target, world, tmp_path):
    """`export --overwrite` through the real CLI, HOME pointed at a folder of the test: the
    home folder, the file system's root, a mount point, a folder holding .git and the
    current folder are refused with one line, and nothing changes (the world and the
    home folder hash the same; nothing named like an export temporary appears beside a mount)."""
    w = _world_copy(world, tmp_path)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("PRIVATE\n")
    (w / "repo" / ".git").mkdir(parents=True)
    (w / "repo" / "work.py").write_text("print('mine')\n")
    cwd, run = w, "run"
    folder, words = {
        "home": (str(home), ["is the home folder"]),
        "root": ("/", ["--adapter"]),  # every run lies inside /: refused as containing the run, or as the root
        "mount point": (None, ["is a mount point"]),
        "git": ("repo", ["holds .git"]),
        "current folder": (str(w / "mine"), ["is the current folder"]),
        "current folder as .": (".", ["is the current folder"]),
    }[target]
    if target.startswith("current folder"):
        cwd, run = w / "mine", "../run"
    if target == "mount point":
        mount = _mount_point()
        folder, beside = str(mount), set(os.listdir(mount.parent))
    env_home = {"HOME": str(home)}
    before = (tree(w), tree(home))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env_home}
    done = subprocess.run([sys.executable, "-m", "promptdistill", "export", "--run-dir", run, "--adapter", folder, "--overwrite"],
                          cwd=cwd, env=env, capture_output=True, timeout=300)
    err = done.stderr.decode()
    assert done.returncode == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert (tree(w), tree(home)) == before
    if target == "mount point":
        assert not [n for n in set(os.listdir(Path(folder).parent)) - beside if "promptdistill" in n]


@pytest.mark.parametrize("flag, value", [("--batch-size", "-1"), ("--limit", "-3"), ("--concurrency", "0")])
def test_integer_flags_below_their_minimum_are_refused_by_the_cli(flag, value, world, tmp_path):
    """`label --batch-size -1` once labeled nothing and exited 0, `--limit -3` dropped the last
    three inputs: the parser refuses them (its usage line and one error), nothing written."""
    w = _world_copy(world, tmp_path)
    before = tree(w)
    done = cli(L + ["--out", "o.jsonl", flag, value], cwd=w)
    err = done.stderr.decode()
    assert done.returncode == 2 and "Traceback" not in err, err
    assert f"argument {flag}: expected an integer of at least" in err.splitlines()[-1], err
    assert tree(w) == before


def test_a_hostile_task_name_in_a_report_made_by_the_cli(world, tmp_path):
    """A task name (no control characters, so accepted) carrying an image line, a table
    pipe and a heading: `eval` through the real CLI writes a report.md that shows it as
    text and a report.html that inlines no file it names."""
    import base64

    w = _world_copy(world, tmp_path, own_model=False)
    (w / "mine" / "id_rsa").write_bytes(b"PRIVATE-KEY-MATERIAL")
    name = f"x ![k]({w / 'mine' / 'id_rsa'}) | # heading"
    done = cli(E + ["--run-dir", "run", "--set", f"task.name={json.dumps(name)}"], cwd=w)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    html = (w / "run" / "eval" / "report.html").read_text()
    md = (w / "run" / "eval" / "report.md").read_text()
    assert base64.b64encode(b"PRIVATE-KEY-MATERIAL").decode() not in html and "PRIVATE-KEY-MATERIAL" not in html
    assert "id_rsa" in md  # shown, as text
    assert not any(line.lstrip().startswith("![") and "id_rsa" in line or line.startswith("# heading") for line in md.splitlines())


_PEAK_OF_CHILD = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True)
sys.stderr.buffer.write(done.stderr)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _cli_peak_kib(args, cwd) -> tuple[int, int, str]:
    """Exit status, peak resident memory (KiB) and stderr of one CLI command, measured by a
    fresh parent whose only child it is."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", _PEAK_OF_CHILD, sys.executable, "-m", "promptdistill", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, timeout=3600)
    status, peak = done.stdout.decode().split()
    return int(status), int(peak), done.stderr.decode()


@pytest.mark.slow
def test_a_2gb_labels_file_resumes_through_the_cli_in_memory_far_below_its_size(world, tmp_path):
    """`label` resumed over a 2 GiB labels file (records carrying the teacher's top-20
    logprobs, ~60 KB each, and a torn last line, as a kill leaves it): the real command
    claims the file, cuts the torn tail, finds every input done and summarizes, with a peak
    resident memory over a resume of a 6-record file of far less than the file's size
    (the readers stream; nothing reads it whole)."""
    w = _world_copy(world, tmp_path)
    args = L + ["--inputs", "inputs.jsonl", "--out", "o.jsonl"]
    first = cli(args, cwd=w)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    status, small_kib, err = _cli_peak_kib(args, w)
    assert status == 0, err[-2000:]

    record = json.loads((w / "o.jsonl").read_text().splitlines()[0])
    payload = json.dumps({"token_ids": list(range(200)), "top": [[[t, -0.5 - t / 100] for t in range(20)] for _ in range(200)]})
    n = 0
    with open(w / "o.jsonl", "a", encoding="utf-8") as labels, open(w / "inputs.jsonl", "a", encoding="utf-8") as inputs:
        while labels.tell() < 2 * 2**30:
            text = f"{record['text']} {n}"
            line = json.dumps({**record, "id": f"big-{n}", "text": text})
            labels.write(line[:-1] + ', "teacher_logprobs": ' + payload + "}\n")
            inputs.write(json.dumps({"id": f"big-{n}", "text": text}) + "\n")
            n += 1
        whole = labels.tell()
        labels.write('{"messages": [{"role": "user", "cont')
    size_kib = whole // 1024

    status, big_kib, err = _cli_peak_kib(args, w)
    assert status == 0, err[-2000:]
    assert (w / "o.jsonl").stat().st_size == whole  # the torn tail was cut, nothing else changed
    grown = big_kib - small_kib
    print(f"labels {size_kib // 1024} MiB ({n} records): peak {big_kib // 1024} MiB vs {small_kib // 1024} MiB for 6 records")
    assert grown < size_kib / 20, (grown, size_kib)


def test_credentials_in_teacher_url_are_refused_and_never_echoed(world, tmp_path):
    w = _world_copy(world, tmp_path)
    before = tree(w)
    done = cli(L + ["--out", "o.jsonl", "--teacher-backend", "chat", "--set",
                    "models.teacher_url='https://user:hunter2@api.example.com/v1?key=abc123'"], cwd=w)
    said = (done.stdout + done.stderr).decode()
    assert done.returncode == 2 and "models.teacher_url" in said
    assert "hunter2" not in said and "abc123" not in said
    assert tree(w) == before


def test_no_limits_lifts_the_bounds_for_the_person_running_the_command(world, tmp_path):
    """The bounds are a default, not a wall: `--no-limits` accepts a value over one."""
    w = _world_copy(world, tmp_path)
    over = ["--set", "eval.latency_requests=20000", "--limit", "1"]
    refused = cli(L + ["--out", "o.jsonl", *over], cwd=w)
    assert refused.returncode == 2 and "--no-limits" in refused.stderr.decode()
    done = cli(L + ["--out", "o.jsonl", *over, "--no-limits"], cwd=w)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    labeled = [line for f in ("o.jsonl", "o.rejects.jsonl") if (w / f).exists() for line in (w / f).read_text().splitlines()]
    assert len(labeled) == 1
