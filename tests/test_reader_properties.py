"""Property tests: every reader either reads its input or names the line that is wrong.

Random bytes and random JSON go to the input readers (text, JSONL, CSV), the
labeled-file reader and the task-file reader. The only acceptable failure is a
PromptDistillError naming the file (and the line, for a problem inside it);
anything that reads must round-trip.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptdistill.config import load_config
from promptdistill.errors import PromptDistillError
from promptdistill.records import Example, read_inputs, read_labeled, write_examples

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Errors about the file as a whole carry no line.
FILE_LEVEL = ("no inputs found", "input file not found", "labeled file not found")


def _check_error(err: PromptDistillError, path) -> None:
    assert str(path) in str(err)
    if not any(m in err.message for m in FILE_LEVEL):
        assert err.line is not None and err.line >= 1, str(err)


@SETTINGS
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".txt", ".jsonl", ".csv"]))
def test_random_bytes_to_input_readers(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes") / f"inputs{suffix}"
    path.write_bytes(data)
    try:
        examples = read_inputs(path)
    except PromptDistillError as err:
        _check_error(err, path)
        return
    assert examples and all(isinstance(e, Example) and e.text.strip() for e in examples)
    assert len({e.id for e in examples}) == len(examples)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
records = st.fixed_dictionaries({}, optional={"text": json_values, "label": json_values, "id": json_values, "kind": json_values})


@SETTINGS
@given(lines=st.lists(records | json_values, min_size=1, max_size=8))
def test_random_json_lines(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("json") / "inputs.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    try:
        examples = read_inputs(path)
    except PromptDistillError as err:
        _check_error(err, path)
        return
    # every line was a valid record: the texts come back in order, stripped
    assert [e.text for e in examples] == [x["text"].strip() for x in lines]
    assert [e.gold_label for e in examples] == [x.get("label") for x in lines]


texts = st.text(min_size=1, max_size=60).filter(lambda t: t.strip())


@SETTINGS
@given(items=st.lists(st.tuples(texts, st.none() | st.sampled_from(["a", "b", "ot"])), min_size=1, max_size=10))
def test_written_examples_round_trip(tmp_path_factory, items):
    path = tmp_path_factory.mktemp("rt") / "examples.jsonl"
    original = [Example(id=str(i), text=t.strip(), gold_label=label) for i, (t, label) in enumerate(items)]
    write_examples(path, original)
    back = read_inputs(path)
    assert [(e.id, e.text, e.gold_label) for e in back] == [(e.id, e.text, e.gold_label) for e in original]


@SETTINGS
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(lambda s: s.encode("utf-8")))
def test_random_labeled_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("lab") / "labels.jsonl"
    path.write_bytes(data)
    try:
        read_labeled(path)
    except PromptDistillError as err:
        _check_error(err, path)


toml_keys = st.sampled_from(["task", "data", "models", "train", "eval", "tsk", "user_template", "labels", "lerning_rate"])


@SETTINGS
@given(data=st.binary(max_size=200) | st.lists(st.tuples(toml_keys, st.text(max_size=10)), max_size=4).map(
    lambda kv: "\n".join(f'[{k}]\nname = "{v}"' if i % 2 else f"{k} = {json.dumps(v)}" for i, (k, v) in enumerate(kv)).encode()))
def test_random_task_files(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("toml") / "task.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except PromptDistillError as err:
        assert str(path) in str(err)
