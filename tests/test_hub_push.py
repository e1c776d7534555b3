"""export --push-to-hub: the exported folder goes to the named repo through huggingface_hub's
HfApi (create_repo, then upload_folder), checked before anything is written; the token is left
to huggingface_hub. The Hub is a local stand-in: nothing leaves the machine."""

from __future__ import annotations

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
