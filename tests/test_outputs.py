"""The output rule, in process (io.py, rundir.py, export.py, labeling.py): how paths relate (symlinks and hard links included),
which existing labels files and folders count as the tool's own, and that
replacing a folder never leaves nothing behind."""

from __future__ import annotations

import os

import pytest

from promptdistill.errors import PromptDistillError
from promptdistill.export import MANIFEST, claim_folder, foreign_entries, write_manifest
from promptdistill.io import check_paths, relation
from promptdistill.labeling import claim_labels_file
from promptdistill.rundir import claim_run_dir


def test_relation_sees_through_symlinks_and_hard_links(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    (tmp_path / "alias.jsonl").symlink_to(data)
    os.link(data, tmp_path / "hard.jsonl")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dirlink").symlink_to(tmp_path / "dir")
    assert relation(tmp_path / "alias.jsonl", data) == "is"
    assert relation(tmp_path / "hard.jsonl", data) == "is"
    assert relation(tmp_path / "dirlink" / "x", tmp_path / "dir") == "is inside"
    assert relation(tmp_path, data) == "contains"
    assert relation(tmp_path / "a", tmp_path / "b") is None
    with pytest.raises(PromptDistillError, match="is the same path as --out"):
        check_paths({"--inputs": data}, {"--out": tmp_path / "alias.jsonl"})


def test_labels_file_with_a_torn_last_record_is_ours_a_text_file_is_not(tmp_path):
    out = tmp_path / "labels.jsonl"
    out.write_text('{"id": "1", "status": "ok"}\n{"id": "2", "sta')
    # Shaped like labels but without the sidecar `label` writes first: not ours (--force would have deleted it).
    with pytest.raises(PromptDistillError, match="not written by promptdistill"):
        claim_labels_file(out, "--out")
    (tmp_path / "labels.jsonl.meta.json").write_text('{"task_fingerprint": "x"}')
    claim_labels_file(out, "--out")  # a record cut by a kill: resumable
    out.write_text("just some words")
    with pytest.raises(PromptDistillError, match="not a labeled JSONL file"):
        claim_labels_file(out, "--out")
    out.write_text('{"id": "1", "status": "ok"}\nnot json\n{"id": "3", "status": "ok"}\n')
    with pytest.raises(PromptDistillError, match="corrupt labeled record") as info:
        claim_labels_file(out, "--out")
    assert info.value.line == 2


def test_export_folder_is_ours_only_while_unchanged(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    assert foreign_entries(folder) == []  # empty: free to use
    (folder / "weights.bin").write_bytes(b"123")
    assert foreign_entries(folder) == ["weights.bin"]
    write_manifest(folder, "adapter")
    assert foreign_entries(folder) == []
    claim_folder(folder, "--adapter")
    (folder / "weights.bin").write_bytes(b"124")
    assert foreign_entries(folder) == ["weights.bin (changed since export)"]
    (folder / "sub").mkdir()
    assert "sub/" in foreign_entries(folder)
    with pytest.raises(PromptDistillError, match="--overwrite"):
        claim_folder(folder, "--adapter")
    claim_folder(folder, "--adapter", overwrite=True)
    (folder / MANIFEST).write_text("{broken")
    assert MANIFEST in foreign_entries(folder)


def test_run_dir_claim(tmp_path):
    claim_run_dir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    claim_run_dir(tmp_path / "empty")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("1")
    claim_run_dir(run)  # only a lock left by a command that stopped early
    (run / "config.json").write_text('{"task": {}, "train": {}}')
    claim_run_dir(run)
    (run / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')  # a model folder's config.json
    with pytest.raises(PromptDistillError, match="not a promptdistill configuration"):
        claim_run_dir(run)


def test_atomic_directory_restores_the_old_folder_when_the_new_one_cannot_take_its_place(tmp_path, monkeypatch):
    from pathlib import Path

    from promptdistill.io import atomic_directory

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename = Path.rename

    def failing_rename(self, dest):
        if Path(dest) == target and self.name.startswith(".out.") and ".old." not in self.name:
            raise OSError("disk trouble")
        return real_rename(self, dest)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError):
        with atomic_directory(target) as tmp:
            (tmp / "new.txt").write_text("new")
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    file_target = tmp_path / "a-file"
    file_target.write_text("keep me")
    with pytest.raises(PromptDistillError, match="is a file"):
        with atomic_directory(file_target):
            pass
    assert file_target.read_text() == "keep me"


def test_the_built_in_model_cache_gets_the_umask_modes(tmp_path, monkeypatch, tiny):
    """The converted SmolLM2 cache is built in a private (0700) temporary folder; once in
    place it is readable as the umask allows, like any other program's cache."""
    import transformers

    from promptdistill import models

    monkeypatch.setenv("PROMPTDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "find_smollm2_gguf", lambda: tmp_path / "model.gguf")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tiny.tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny.model)
    old = os.umask(0o022)
    try:
        target = models.ensure_smollm2_cache()
    finally:
        os.umask(old)
    assert (target / "config.json").exists()
    assert oct(target.stat().st_mode & 0o777) == oct(0o755)
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in target.iterdir())  # others may read every file


def test_resume_or_refuse_names_the_changed_keys_and_force_discards(tmp_path):
    from promptdistill.io import changed_settings, read_settings, resume_or_refuse

    old = {"teacher": "a", "train": {"lr": 1e-3, "rank": 8}, "fit": (1, 2), "gone": 1}
    new = {"teacher": "a", "train": {"lr": 2e-3, "rank": 8}, "fit": [1, 2], "url": "x"}
    assert changed_settings(old, new) == ["gone", "train.lr", "url"]  # both ways, nested as table.key; a tuple is its list
    discarded = []
    assert resume_or_refuse(old, dict(old), force=False, what="labels were made", discards="them",
                            discard=lambda: discarded.append(1)) == []
    assert resume_or_refuse(None, new, force=True, what="labels were made", discards="them", discard=lambda: discarded.append(1)) == []
    assert discarded == []  # the same settings, or nothing recorded: nothing discarded
    with pytest.raises(PromptDistillError) as info:
        resume_or_refuse(old, new, force=False, what="existing labels were made", discards="them, or write to another file",
                         discard=lambda: discarded.append(1), path=tmp_path / "out.jsonl")
    assert str(info.value) == (f"{tmp_path / 'out.jsonl'}: existing labels were made with different settings "
                               "(gone, train.lr, url); --force discards them, or write to another file")
    assert discarded == []
    assert resume_or_refuse(old, new, force=True, what="labels were made", discards="them",
                            discard=lambda: discarded.append(1)) == ["gone", "train.lr", "url"]
    assert discarded == [1]
    record = tmp_path / "marker.json"
    assert read_settings(record, key="settings", corrupt="corrupt") is None
    record.write_text('{"settings": {"a": 1}}')
    assert read_settings(record, key="settings", corrupt="corrupt") == {"a": 1}
    record.write_text("{torn")
    with pytest.raises(PromptDistillError, match="corrupt marker"):
        read_settings(record, key="settings", corrupt="corrupt marker")
