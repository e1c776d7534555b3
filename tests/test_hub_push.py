"""export --push-to-hub: the exported folder goes to the named repo through huggingface_hub's
HfApi (create_repo, then upload_folder), checked before anything is written; the token is left
to huggingface_hub. The Hub is a local stand-in: nothing leaves the machine."""

from __future__ import annotations

import json

import pytest
from test_export import run_dir  # noqa: F401  (the module-scoped run with a non-zero LoRA adapter)


class StandInHub:
    """Records the calls an HfApi would send, and what the uploaded folder held then."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        assert "token" not in kwargs  # the token stays with huggingface_hub

    def create_repo(self, repo_id, **kwargs):
        assert "token" not in kwargs
        StandInHub.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        from pathlib import Path

        assert "token" not in kwargs
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        StandInHub.calls.append(("upload_folder", kwargs["repo_id"], {**kwargs, "files": files}))


@pytest.fixture()
def hub(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    StandInHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", StandInHub)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    return StandInHub.calls


def test_push_uploads_the_exported_folder(run_dir, tmp_path, hub, capsys):  # noqa: F811
    from promptdistill.cli import main

    out = tmp_path / "adapter"
    assert main(["export", "--run-dir", str(run_dir), "--adapter", str(out), "--push-to-hub", "me/demo-student"]) == 0
    assert [c[0] for c in hub] == ["create_repo", "upload_folder"]
    _, repo, upload = hub[1]
    assert repo == "me/demo-student" and upload["folder_path"] == str(out) and upload["repo_type"] == "model"
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(upload["files"])
    assert ".promptdistill-export.json" in upload["ignore_patterns"]  # the manifest stays local
    assert "https://huggingface.co/me/demo-student" in capsys.readouterr().out


@pytest.mark.parametrize("problem", ["bad id", "two exports", "no token", "offline"])
def test_push_problems_are_refused_before_writing(problem, run_dir, tmp_path, hub, monkeypatch, capsys):  # noqa: F811
    import huggingface_hub
    from huggingface_hub import constants

    from promptdistill.cli import main

    argv = ["export", "--run-dir", str(run_dir), "--adapter", str(tmp_path / "a"), "--push-to-hub", "me/demo"]
    if problem == "bad id":
        argv[-1] = "me/bad name!"
    elif problem == "two exports":
        argv += ["--merged", str(tmp_path / "m")]
    elif problem == "no token":
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(argv) == 2
    assert "--push-to-hub" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "m").exists() and hub == []


class StandInDatasetHub(StandInHub):
    """The stand-in, with the single-file upload `label --push-to-hub` makes."""

    def upload_file(self, **kwargs):
        from pathlib import Path

        assert "token" not in kwargs
        data = Path(kwargs["path_or_fileobj"]).read_bytes()
        StandInHub.calls.append(("upload_file", kwargs["repo_id"], {**kwargs, "data": data}))


def _label_argv(tmp_path, model_dir, *extra):
    from conftest import write_task_file

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(f'{{"id": "x{i}", "text": "text {i}"}}\n' for i in range(3)), encoding="utf-8")
    task = write_task_file(tmp_path, model_dir, task={"labels": ["a", "b"], "answer_mode": "choose", "max_new_tokens": 8})
    return ["label", str(task), "--inputs", str(inputs), "--out", str(tmp_path / "labels.jsonl"), "--no-progress", *extra]


def test_label_pushes_the_labeled_set_to_a_dataset_repo(tmp_path, hub, monkeypatch, tiny_model_dir, capsys):
    import huggingface_hub

    from promptdistill.cli import main

    monkeypatch.setattr(huggingface_hub, "HfApi", StandInDatasetHub)
    assert main(_label_argv(tmp_path, tiny_model_dir, "--push-to-hub", "me/labels")) == 0
    assert [c[0] for c in hub] == ["create_repo", "upload_file"]
    assert hub[0][1] == "me/labels" and hub[0][2]["repo_type"] == "dataset"
    _, repo, upload = hub[1]
    assert repo == "me/labels" and upload["repo_type"] == "dataset" and upload["path_in_repo"] == "labels.jsonl"
    assert upload["data"] == (tmp_path / "labels.jsonl").read_bytes() and upload["data"].count(b"\n") == 3
    assert json.loads(capsys.readouterr().out)["hub"] == "https://huggingface.co/me/labels"


@pytest.mark.parametrize("problem", ["bad id", "no token", "offline"])
def test_label_push_problems_are_refused_before_labeling(problem, tmp_path, hub, monkeypatch, tiny_model_dir, capsys):
    import huggingface_hub
    from huggingface_hub import constants

    from promptdistill.cli import main

    monkeypatch.setattr(huggingface_hub, "HfApi", StandInDatasetHub)
    repo = "me/bad name!" if problem == "bad id" else "me/labels"
    if problem == "no token":
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    elif problem == "offline":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(_label_argv(tmp_path, tiny_model_dir, "--push-to-hub", repo)) == 2
    assert "--push-to-hub" in capsys.readouterr().err
    assert not (tmp_path / "labels.jsonl").exists() and hub == []
