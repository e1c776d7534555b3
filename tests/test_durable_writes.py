"""Writes survive a power cut and an interruption leaves nothing that stays; models
load what their name pins and never unpickle unless the person running allows it.

- every atomic write fsyncs the folder after its rename;
- temporaries are named `.NAME.promptdistill-tmp-HOST-PID-...`; the next write into
  the folder removes those of dead processes on this machine, and only those;
- an exported adapter names a hub id (with its revision) or the built-in model's
  name, never this machine's cache path;
- `org/name@REVISION` pins a hub model (from_pretrained's revision), and the name
  (revision included) is what fingerprints record;
- a model with only pickled `.bin` weights is refused unless
  PROMPTDISTILL_ALLOW_PICKLE_WEIGHTS=1.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from promptdistill import io as pd_io
from promptdistill.errors import PromptDistillError
from promptdistill.io import atomic_directory, atomic_write_text, sweep_stale_temporaries, temp_prefix


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_writes_fsync_the_folder_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file", os.path.exists(tmp_path / "a.txt")))
        real_fsync(fd)

    monkeypatch.setattr(pd_io.os, "fsync", fsync)
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert ("file", False) in synced and ("dir", True) in synced  # the file before the rename, the folder after
    synced.clear()
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "w.bin").write_text("x")
    kinds = [k for k, _ in synced]
    assert kinds.count("file") >= 1 and kinds[-1] == "dir"


def test_temporaries_carry_the_marker(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(pd_io.os, "replace", lambda a, b: (seen.append(os.path.basename(a)), real(a, b)))
    atomic_write_text(tmp_path / "a.txt", "x")
    assert seen[0].startswith(temp_prefix(tmp_path / "a.txt")) and seen[0].endswith(".tmp")
    assert f".promptdistill-tmp-" in seen[0] and f"-{os.getpid()}-" in seen[0]


def test_stale_temporaries_of_dead_processes_are_swept_and_nothing_else(tmp_path):
    dead = _dead_pid()
    host = pd_io._host()
    stale_dir = tmp_path / f".merged.promptdistill-tmp-{host}-{dead}-abc"
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "model.safetensors").write_bytes(b"0" * 1000)
    stale_file = tmp_path / f".config.json.promptdistill-tmp-{host}-{dead}-xyz.tmp"
    stale_file.write_text("{")
    live = tmp_path / f".merged.promptdistill-tmp-{host}-{os.getppid()}-def"  # our parent is alive
    live.mkdir()
    other_host = tmp_path / f".merged.promptdistill-tmp-otherbox-{dead}-ghi"  # a shared folder's other machine
    other_host.mkdir()
    users = [tmp_path / ".merged.backup", tmp_path / f".merged.{dead}", tmp_path / "merged.promptdistill-tmp-x-1-y"]
    for p in users:
        p.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())

    atomic_write_text(tmp_path / "unrelated.txt", "a write into the folder sweeps it")

    after = sorted(p.name for p in tmp_path.iterdir())
    assert set(before) - set(after) == {stale_dir.name, stale_file.name}
    assert set(after) - set(before) == {"unrelated.txt"}


def test_a_folder_moved_aside_by_a_killed_replace_is_put_back(tmp_path):
    # killed between moving the old export aside and renaming the new one in
    dead = _dead_pid()
    aside = tmp_path / f".merged.promptdistill-tmp-{pd_io._host()}-{dead}-old-abc"
    (aside / "x").mkdir(parents=True)
    (aside / "x" / "config.json").write_text("{}")
    sweep_stale_temporaries(tmp_path)
    assert (tmp_path / "merged" / "config.json").read_text() == "{}"
    assert not aside.exists()


def test_exported_adapter_names_no_cache_path(tmp_path):
    from promptdistill.export import exported_base

    assert exported_base("smollm2-135m-instruct") == ("smollm2-135m-instruct", None)
    assert exported_base("HuggingFaceTB/SmolLM2-360M-Instruct@0123abc") == ("HuggingFaceTB/SmolLM2-360M-Instruct", "0123abc")
    assert exported_base("HuggingFaceTB/SmolLM2-360M-Instruct") == ("HuggingFaceTB/SmolLM2-360M-Instruct", None)
    folder = tmp_path / "my@model"
    folder.mkdir()
    assert exported_base(str(folder)) == (str(folder), None)


def test_revision_pins_a_hub_model_and_is_in_the_fingerprints(tmp_path):
    from promptdistill.config import config_from_dict
    from promptdistill.models import load_options, model_path, split_revision
    from promptdistill.pipeline import stage_settings

    assert split_revision("org/model@v1.2") == ("org/model", "v1.2")
    assert load_options("org/model@0123abc") == {"revision": "0123abc"} and model_path("org/model@0123abc") == "org/model"
    assert load_options("org/model") == {} and split_revision("./folder@x") == ("./folder@x", None)
    def settings(student, teacher):
        return stage_settings(config_from_dict({"task": {"user_template": "{text}"},
                                                "models": {"student": student, "teacher": teacher}}))

    a, b, c = settings("org/model@aaa", "org/big@bbb"), settings("org/model@ccc", "org/big@bbb"), settings("org/model@aaa", "org/big@ddd")
    assert a["train"] != b["train"] and a["label"]["teacher"] == b["label"]["teacher"]
    assert a["label"] != c["label"]


def test_revision_reaches_from_pretrained(tiny_model_dir, monkeypatch):
    import transformers

    from promptdistill import models

    calls = []
    real = transformers.AutoTokenizer.from_pretrained

    def spy(path, **kw):
        calls.append(kw.get("revision"))
        return real(tiny_model_dir)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy)
    models.load_tokenizer("org/model@0123abc")
    assert calls == ["0123abc"]


def test_pickled_weights_load_only_when_allowed(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from promptdistill.models import ALLOW_PICKLE_ENV, load_model

    import shutil

    import torch

    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict(), folder / "pytorch_model.bin")
    shutil.copy(os.path.join(tiny_model_dir, "config.json"), folder / "config.json")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    assert (folder / "pytorch_model.bin").exists() and not (folder / "model.safetensors").exists()
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    with pytest.raises(PromptDistillError) as err:
        load_model(str(folder), device="cpu", dtype="float32")
    assert ALLOW_PICKLE_ENV in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    assert load_model(str(folder), device="cpu", dtype="float32").model is not None


@pytest.mark.parametrize("code", ["ENOLCK", "ENOSYS", "EOPNOTSUPP"])
def test_a_file_system_without_flock_is_one_line(tmp_path, monkeypatch, code):
    import errno
    import fcntl

    from promptdistill.io import DirectoryLock

    def no_flock(f, how):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(PromptDistillError) as err:
        with DirectoryLock(tmp_path / ".lock", "this run"):
            pass
    assert "does not support flock" in str(err.value) and "\n" not in str(err.value)


def _run_with_adapter(folder, tiny_model_dir, student: str):
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = {"task": {"name": "demo", "system_prompt": "Answer."},
              "models": {"teacher": tiny_model_dir, "student": student, "device": "cpu", "dtype": "float32"}}
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(folder / "train" / "adapter")
    return folder


@pytest.mark.parametrize("student", ["tiny", "smollm2-135m-instruct"])
def test_export_sweeps_an_interrupted_export_and_names_its_base(tmp_path, tiny_model_dir, student):
    import json

    from promptdistill.cli import main

    run = _run_with_adapter(tmp_path / "run", tiny_model_dir, tiny_model_dir if student == "tiny" else student)
    stale = tmp_path / f".merged.promptdistill-tmp-{pd_io._host()}-{_dead_pid()}-abc"  # a killed `export --merged`
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"0" * 4096)
    mine = tmp_path / ".merged.mine"
    mine.mkdir()
    assert main(["export", "--run-dir", str(run), "--adapter", str(tmp_path / "adapter")]) == 0
    assert not stale.exists() and mine.exists()
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cache = os.environ.get("PROMPTDISTILL_CACHE", os.path.expanduser("~/.cache/promptdistill"))
    assert not cfg["base_model_name_or_path"].startswith(cache)
    if student == "tiny":
        assert cfg["base_model_name_or_path"] == tiny_model_dir
    else:
        assert cfg["base_model_name_or_path"] == "smollm2-135m-instruct"
        assert "dequantised" in (tmp_path / "adapter" / "README.md").read_text()


def test_model_card_links_a_pinned_base_by_its_hub_id():
    from promptdistill.model_card import base_model_hub_id

    assert base_model_hub_id("HuggingFaceTB/SmolLM2-360M-Instruct@0123abc") == "HuggingFaceTB/SmolLM2-360M-Instruct"
