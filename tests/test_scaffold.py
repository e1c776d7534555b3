"""`promptdistill init`'s writer: the task file it writes loads and validates
as written, keeps the prompt and the labels exactly, reads its own replies
back, and nothing is written when anything is wrong or the file exists."""

from __future__ import annotations

import pytest

from promptdistill.config import load_config
from promptdistill.errors import PromptDistillError
from promptdistill.scaffold import write_task_file
from promptdistill.task import OK, Task

PROMPT = """You are a careful support triage assistant.
Decide whether the customer's message is about 'billing' or "shipping" (quotes kept: ''' too).
Backslashes stay: C:\\path\\to and \\d+ are text here.
"""


@pytest.fixture()
def prompt_file(tmp_path):
    p = tmp_path / "prompt.txt"
    p.write_text("\n" + PROMPT + "\n\n", encoding="utf-8")
    return p


def test_written_file_loads_validates_and_round_trips(tmp_path, prompt_file):
    inputs = tmp_path / "data" / "inputs.txt"
    inputs.parent.mkdir()
    inputs.write_text("my parcel is late\nI was charged twice\n", encoding="utf-8")
    path = tmp_path / "tasks" / "triage.toml"

    printed = write_task_file(path, prompt_file, labels="billing, shipping,pt-br", inputs=inputs)

    cfg = load_config(path)
    assert cfg.task.system_prompt == PROMPT.strip() and cfg.task.user_template is None
    assert cfg.task.labels == ["billing", "shipping", "pt-br"]
    assert cfg.task.name == "triage"
    assert cfg.resolve_path(cfg.data.inputs).resolve() == inputs.resolve()
    task = Task(cfg.task)
    for label in cfg.task.labels:  # the student's replies read back as their labels
        assert task.parse_answer(task.label_reply(label)) == (label, OK)
    assert task.parse_answer("Final Answer: pt") != ("pt", OK)  # a prefix of a label is not that label
    assert task.parse_answer("Final Answer: pt-br.")[0] == "pt-br"
    assert f"promptdistill run {path}" in printed and "synthesize" not in printed


def test_template_prompt_and_open_answers(tmp_path):
    prompt = tmp_path / "p.md"
    prompt.write_text("Translate to French, then end with 'Final Answer: <word count>'.\nText: {text}\n", encoding="utf-8")
    path = tmp_path / "open.toml"

    printed = write_task_file(path, prompt, name="fr_count")

    cfg = load_config(path)
    assert cfg.task.user_template == prompt.read_text(encoding="utf-8").strip() and cfg.task.system_prompt is None
    assert cfg.task.labels == [] and cfg.task.answer_mode == "generate" and cfg.data.inputs is None
    assert cfg.task.name == "fr_count"
    assert Task(cfg.task).parse_answer("... Final Answer: 12")[0] == "12"
    assert "promptdistill synthesize" in printed and "runs/fr_count" in printed


def test_existing_file_is_refused_and_left_byte_identical(tmp_path, prompt_file):
    path = tmp_path / "task.toml"
    path.write_bytes(b"# mine\n[task]\nsystem_prompt = 'x'\n")
    before = path.read_bytes()
    with pytest.raises(PromptDistillError, match="already exists") as info:
        write_task_file(path, prompt_file, labels=["a", "b"])
    assert info.value.path == str(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompt.txt", "task.toml"]


def test_a_file_written_by_init_is_not_replaced_either(tmp_path, prompt_file):
    path = tmp_path / "task.toml"
    write_task_file(path, prompt_file, labels=["a", "b"])
    before = path.read_bytes()
    with pytest.raises(PromptDistillError, match="already exists"):
        write_task_file(path, prompt_file, labels=["c", "d"])
    assert path.read_bytes() == before


@pytest.mark.parametrize("case, field_or_path", [
    ("missing prompt", "prompt"),
    ("empty prompt", "prompt"),
    ("prompt is a folder", "prompt"),
    ("prompt not utf-8", "prompt"),
    ("duplicate labels", "--labels"),
    ("empty label", "--labels"),
    ("label with a space", "--labels"),
    ("label with a quote", "--labels"),
    ("one label", "--labels"),
    ("bad name", "--name"),
    ("missing inputs", "inputs"),
    ("not toml", "task"),
])
def test_bad_input_is_refused_with_nothing_written(tmp_path, prompt_file, case, field_or_path):
    kwargs = {"labels": ["a", "b"]}
    prompt, path = prompt_file, tmp_path / "out" / "task.toml"
    if case == "missing prompt":
        prompt = tmp_path / "nope.txt"
    elif case == "empty prompt":
        prompt = tmp_path / "empty.txt"
        prompt.write_text(" \n\n", encoding="utf-8")
    elif case == "prompt is a folder":
        prompt = tmp_path
    elif case == "prompt not utf-8":
        prompt = tmp_path / "latin1.txt"
        prompt.write_bytes("Réponds.".encode("latin-1"))
    elif case == "duplicate labels":
        kwargs["labels"] = "a,b,a"
    elif case == "empty label":
        kwargs["labels"] = "a,,b"
    elif case == "label with a space":
        kwargs["labels"] = ["a b", "c"]
    elif case == "label with a quote":
        kwargs["labels"] = ["it's", "c"]
    elif case == "one label":
        kwargs["labels"] = ["a"]
    elif case == "bad name":
        kwargs["name"] = "my task/1"
    elif case == "missing inputs":
        kwargs["inputs"] = tmp_path / "inputs.jsonl"
    elif case == "not toml":
        path = tmp_path / "out" / "task.txt"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    with pytest.raises(PromptDistillError) as info:
        write_task_file(path, prompt, **kwargs)

    err = info.value
    assert "\n" not in str(err)
    if field_or_path == "prompt":
        assert err.path == str(prompt)
    elif field_or_path == "inputs":
        assert err.path == str(kwargs["inputs"])
    elif field_or_path == "task":
        assert err.path == str(path)
    else:
        assert err.field == field_or_path
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_dangling_link_at_the_path_is_refused_and_kept(tmp_path, prompt_file):
    path = tmp_path / "task.toml"
    path.symlink_to(tmp_path / "elsewhere.toml")
    with pytest.raises(PromptDistillError, match="already exists"):
        write_task_file(path, prompt_file)
    assert path.is_symlink() and not (tmp_path / "elsewhere.toml").exists()


def test_a_file_that_appears_while_writing_is_kept(tmp_path, prompt_file, monkeypatch):
    """The existence check and the write are not one step: the write itself refuses to replace."""
    import promptdistill.scaffold as scaffold

    path = tmp_path / "task.toml"
    real_write = scaffold.atomic_write_text

    def write_then_someone_else_writes(p, text):
        real_write(p, text)
        path.write_text("# theirs\n", encoding="utf-8")

    monkeypatch.setattr(scaffold, "atomic_write_text", write_then_someone_else_writes)
    with pytest.raises(PromptDistillError, match="appeared"):
        write_task_file(path, prompt_file, labels=["a", "b"])
    assert path.read_text(encoding="utf-8") == "# theirs\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompt.txt", "task.toml"]


def test_the_file_gets_the_umasks_mode(tmp_path, prompt_file):
    import os
    import stat

    mask = os.umask(0o027)
    try:
        write_task_file(tmp_path / "task.toml", prompt_file)
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "task.toml").stat().st_mode) == 0o640
