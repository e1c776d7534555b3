"""Pushing an export folder (a model repo) or a labeled set (a dataset repo) to the Hugging Face Hub.

Through huggingface_hub (`HfApi.create_repo`, then `upload_folder`), with the
token from huggingface_hub's usual places (HF_TOKEN, or the file `hf auth
login` writes): promptdistill never reads, stores or passes it on. Everything
that can be known before an export is written is checked first
(`check_push`): a valid repo id, a token present, the Hub not switched off
with HF_HUB_OFFLINE. The export's manifest (the record of what promptdistill
wrote, for its own overwrite rules) stays local.
"""

from __future__ import annotations

from pathlib import Path

from .errors import PromptDistillError

_LOCAL_ONLY = [".promptdistill-export.json"]


def check_push(repo_id: str) -> None:
    """Before anything is written: the repo id is one the Hub accepts, a token is there, the Hub is reachable in principle."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PromptDistillError(f"not a Hub repo id (ORG/NAME): {e}", field="--push-to-hub") from None
    if "/" not in repo_id:
        raise PromptDistillError(f"give the repo as ORG/NAME (or USER/NAME); got {repo_id!r}", field="--push-to-hub")
    if constants.HF_HUB_OFFLINE:
        raise PromptDistillError("HF_HUB_OFFLINE is set: the Hub cannot be reached; unset it to push", field="--push-to-hub")
    if get_token() is None:
        raise PromptDistillError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN", field="--push-to-hub")


def push_folder(folder, repo_id: str, *, private: bool = False) -> str:
    """Create the model repo if needed and upload `folder` into it as one commit; return the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(Path(folder)), ignore_patterns=_LOCAL_ONLY,
                      commit_message="Upload a promptdistill export")
    return str(url)


def push_file(path, repo_id: str, *, repo_type: str = "dataset", message: str, private: bool = False) -> str:
    """Create the repo if needed and upload the file `path` under its own name as one commit; return the repo's URL.
    `label --push-to-hub`: the labeled JSONL, in the conversation schema `datasets` and the trainers read."""
    from huggingface_hub import HfApi

    path = Path(path)
    api = HfApi()
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_file(path_or_fileobj=str(path), path_in_repo=path.name, repo_id=repo_id, repo_type=repo_type,
                    commit_message=message)
    return str(url)
