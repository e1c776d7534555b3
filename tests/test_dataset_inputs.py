"""Inputs from Parquet and Arrow files, `datasets.save_to_disk` folders, hf://datasets/
addresses and `datasets.Dataset` objects (dataset_inputs.py): the same Examples as the
JSONL reader gives, the same per-record checks with the row number, and the
data.*_column mappings. Tiny local data only; the Hub is never reached."""

from __future__ import annotations

import json

# The datasets extra, which `make setup` installs with the test extra: these tests fail, never skip, without it.
import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from promptdistill.errors import PromptDistillError
from promptdistill.records import read_inputs

ROWS = [{"id": "a1", "text": "bonjour", "label": "fr"}, {"id": "a2", "text": "hello", "label": "en"},
        {"id": "a3", "text": "hola", "label": None}]


def _jsonl(tmp_path, rows=ROWS):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _parquet(tmp_path, rows=ROWS, name="in.parquet"):
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _arrow(tmp_path, rows=ROWS, layout="stream"):
    path = tmp_path / f"in-{layout}.arrow"
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink:
        writer = pa.ipc.new_stream(sink, table.schema) if layout == "stream" else pa.ipc.new_file(sink, table.schema)
        writer.write_table(table)
        writer.close()
    return path


def _saved(tmp_path, rows=ROWS, split=None):
    path = tmp_path / "saved"
    ds = datasets.Dataset.from_list(rows)
    (datasets.DatasetDict({split: ds}) if split else ds).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("kind", ["parquet", "arrow-stream", "arrow-file", "save_to_disk", "save_to_disk-dict", "object"])
def test_every_format_reads_as_the_jsonl_would(kind, tmp_path):
    expected = read_inputs(_jsonl(tmp_path))
    source = {"parquet": lambda: _parquet(tmp_path), "arrow-stream": lambda: _arrow(tmp_path, layout="stream"),
              "arrow-file": lambda: _arrow(tmp_path, layout="file"), "save_to_disk": lambda: _saved(tmp_path),
              "save_to_disk-dict": lambda: _saved(tmp_path, split="test"),
              "object": lambda: datasets.Dataset.from_list(ROWS)}[kind]()
    got = read_inputs(source)
    assert [(e.id, e.text, e.gold_label, e.meta, e.line) for e in got] == \
        [(e.id, e.text, e.gold_label, e.meta, e.line) for e in expected]


def test_columns_are_mapped_and_other_columns_kept(tmp_path):
    rows = [{"question": "bonjour", "key": 7, "gold": "fr", "text": "not the input", "topic": "greeting"}]
    columns = {"text": "question", "id": "key", "label": "gold"}
    for source in (_parquet(tmp_path, rows), _jsonl(tmp_path, rows)):
        (e,) = read_inputs(source, columns)
        assert (e.id, e.text, e.gold_label) == ("7", "bonjour", "fr")
        assert e.meta == {"source_text": "not the input", "topic": "greeting"}


def test_a_bad_row_is_named_by_its_number(tmp_path):
    rows = ROWS[:1] + [{"id": "a2", "text": "   ", "label": "en"}]
    with pytest.raises(PromptDistillError) as e:
        read_inputs(_parquet(tmp_path, rows))
    assert str(e.value) == f"{tmp_path / 'in.parquet'}:2 field 'text': empty text"
    with pytest.raises(PromptDistillError, match="duplicate id 'a1'"):
        read_inputs(_parquet(tmp_path, [ROWS[0], ROWS[0]], name="dup.parquet"))


def test_a_missing_column_names_the_setting_and_the_columns(tmp_path):
    path = _parquet(tmp_path, [{"question": "bonjour"}])
    with pytest.raises(PromptDistillError, match="no 'text' or 'messages' column .*columns: question.*data.text_column"):
        read_inputs(path)
    with pytest.raises(PromptDistillError) as e:
        read_inputs(path, {"text": "prompt"})
    assert e.value.field == "data.text_column" and "columns are: question" in e.value.message


def test_cells_that_json_cannot_hold_become_text(tmp_path):
    import datetime

    rows = [{"text": "hello", "when": datetime.date(2026, 1, 2), "blob": b"ab"}]
    (e,) = read_inputs(_parquet(tmp_path, rows))
    assert e.meta == {"when": "2026-01-02", "blob": "ab"}
    json.dumps(e.to_json())


def test_not_a_dataset(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(PromptDistillError, match="cannot be read as .parquet"):
        read_inputs(bad)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(PromptDistillError, match="save_to_disk"):
        read_inputs(folder)
    two = tmp_path / "two"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(two))
    with pytest.raises(PromptDistillError, match="splits train, test: pass the folder of one split"):
        read_inputs(two)


def test_hub_address_reads_the_split_through_load_dataset(monkeypatch):
    calls = []

    def load_dataset(name, split=None):
        calls.append((name, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert [e.id for e in read_inputs("hf://datasets/org/name:validation")] == ["a1", "a2", "a3"]
    assert [e.id for e in read_inputs("hf://datasets/org/name")] == ["a1", "a2", "a3"]
    assert calls == [("org/name", "validation"), ("org/name", "train")]


@pytest.mark.parametrize("address", ["hf://datasets/name-only", "hf://datasets/a/b/c", "hf://datasets/org/na me"])
def test_a_malformed_hub_address(address):
    with pytest.raises(PromptDistillError, match="expected hf://datasets/ORG/NAME"):
        read_inputs(address)


def test_offline_and_not_cached_is_one_line(tmp_path, monkeypatch):
    """The real load_dataset, offline, with an empty cache: refused in one line, nothing downloaded."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets", raising=False)
    with pytest.raises(PromptDistillError) as e:
        read_inputs("hf://datasets/promptdistill-tests/never-cached:test")
    assert "not in the local cache and HF_HUB_OFFLINE is set" in str(e.value) and "\n" not in str(e.value)


def test_label_and_run_read_a_parquet_task_input(tmp_path, tiny_model_dir, capsys):
    """data.inputs = a Parquet file with its own column names, through the commands."""
    from conftest import write_task_file

    from promptdistill.cli import main

    rows = [{"q": f"text number {i}", "k": f"id{i}", "g": "ab"[i % 2]} for i in range(8)]
    _parquet(tmp_path, rows, name="inputs.parquet")
    task = write_task_file(tmp_path, tiny_model_dir, task={"labels": ["a", "b"], "answer_mode": "choose", "max_new_tokens": 8},
                           data={"inputs": "inputs.parquet", "text_column": "q", "id_column": "k", "label_column": "g"})
    out = tmp_path / "labels.jsonl"
    assert main(["label", str(task), "--out", str(out), "--no-progress"]) == 0
    labeled = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in labeled) == sorted(r["k"] for r in rows)
    assert {r["id"]: (r["text"], r["gold_label"]) for r in labeled} == {r["k"]: (r["q"], r["g"]) for r in rows}
    # a wrong column is refused before anything is written
    out2 = tmp_path / "labels2.jsonl"
    assert main(["label", str(task), "--out", str(out2), "--set", "data.text_column=question"]) == 2
    assert "data.text_column" in capsys.readouterr().err and not out2.exists()


def test_run_splits_a_save_to_disk_folder(tmp_path, tiny_model_dir):
    """data.inputs = a datasets folder through `run`'s preflight and split (a folder is refused as an input file otherwise)."""
    from conftest import write_task_file

    from promptdistill.cli import main

    rows = [{"sentence": f"text number {i}", "g": "ab"[i % 2]} for i in range(8)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "inputs"))
    task = write_task_file(tmp_path, tiny_model_dir, task={"labels": ["a", "b"], "answer_mode": "choose", "max_new_tokens": 8},
                           data={"inputs": "inputs", "text_column": "sentence", "label_column": "g", "heldout_fraction": 0.25},
                           train={"max_steps": 1, "batch_size": 2, "lora_rank": 4, "lora_alpha": 8},
                           eval={"max_examples": 2, "general_ability": False})
    assert main(["run", str(task), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    split = [json.loads(line) for side in ("train", "heldout")
             for line in (tmp_path / "run" / "split" / f"{side}.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["text"], r["label"]) for r in split) == sorted((str(i + 1), r["sentence"], r["g"]) for i, r in enumerate(rows))


def test_a_messages_column_is_a_conversation_input(tmp_path):
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "how are you?"}]
    path = _parquet(tmp_path, [{"conv": conversation, "key": "c1"}])
    (e,) = read_inputs(path, {"messages": "conv", "id": "key"})
    expected = read_inputs(_jsonl(tmp_path, [{"id": "c1", "messages": conversation}]))[0]
    assert (e.id, e.text, e.messages, e.meta) == (expected.id, expected.text, expected.messages, expected.meta)
    assert e.text == "how are you?" and e.messages == conversation
