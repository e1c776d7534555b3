"""JSON replies: reading a JSON object out of a reply, its canonical form,
field-level agreement, and the config checks of reply_format = "json"."""

from __future__ import annotations

import json
import textwrap

import pytest

from promptdistill.config import TaskConfig, load_config
from promptdistill.errors import PromptDistillError
from promptdistill.jsonreply import INVALID_JSON, MISSING_FIELDS, field_agreement, find_json_object, json_metrics
from promptdistill.task import OK, Task

FIELDS = ["category", "priority", "summary"]


def json_task(**extra) -> Task:
    return Task(TaskConfig(system_prompt="rules", reply_format="json", json_fields=FIELDS, **extra))


def test_reply_with_prose_and_fence_parses_to_canonical_form():
    reply = 'Here you go:\n```json\n{"summary": "Refund the double charge", "priority": "high",\n "category": "billing", "extra": 1}\n```'
    label, status = json_task().parse_answer(reply)
    assert status == OK
    # required fields only, in the configured order, compact, unicode kept
    assert label == '{"category": "billing", "priority": "high", "summary": "Refund the double charge"}'
    assert json.loads(label) == {"category": "billing", "priority": "high", "summary": "Refund the double charge"}


def test_first_object_wins_and_braces_in_prose_are_skipped():
    reply = 'set {a} first, then {"category": "x", "priority": "low", "summary": "é ü"} and {"category": "y"}'
    label, status = json_task().parse_answer(reply)
    assert status == OK and json.loads(label)["category"] == "x"
    assert "é ü" in label


@pytest.mark.parametrize("reply", ["no json here", '{"category": "billing", "priority": ', "[1, 2, 3]", '{"a": }'])
def test_invalid_json(reply):
    assert json_task().parse_answer(reply) == (None, INVALID_JSON)


def test_missing_field():
    assert json_task().parse_answer('{"category": "billing", "priority": "low"}') == (None, MISSING_FIELDS)


def test_normalized_target_is_the_canonical_object():
    task = json_task()
    reply = '{"priority":"low","category":"question","summary":"Warranty length"}  thanks!'
    label, _ = task.parse_answer(reply)
    assert task.target_reply(reply, label) == label
    # the student's canonical reply reads back to itself
    assert task.parse_answer(label) == (label, OK)


def test_find_json_object_none_for_non_objects():
    assert find_json_object('"just a string" 42 [1]') is None


def canon(**fields) -> str:
    return json.dumps(fields, ensure_ascii=False, separators=(", ", ": "))


def test_field_agreement_counts_over_valid_teacher_replies():
    teacher = [canon(category="a", priority="low", summary="s1"), canon(category="b", priority="high", summary="s2"), None,
               canon(category="c", priority="low", summary="s3")]
    student = [canon(category="a", priority="low", summary="other"), canon(category="b", priority="low", summary="s2"),
               canon(category="z", priority="z", summary="z"), None]
    got = field_agreement(student, teacher, FIELDS)
    # 3 inputs with a valid teacher reply; the student's invalid reply disagrees on every field
    assert got == {"category": pytest.approx(2 / 3), "priority": pytest.approx(1 / 3), "summary": pytest.approx(1 / 3)}


def test_json_metrics_validity_exact_and_fields():
    from promptdistill.evaluation.systems import Prediction

    def preds(labels):
        return [Prediction(str(i), "s", lab, "", OK if lab else INVALID_JSON, 1, 0.0) for i, lab in enumerate(labels)]

    t = [canon(category="a", priority="low", summary="x"), canon(category="b", priority="low", summary="y")]
    s = [canon(category="a", priority="low", summary="x"), canon(category="b", priority="high", summary="y")]
    m = json_metrics(json_task(), preds(s + [None]), preds(t + [None]))
    assert m["validity"] == pytest.approx(2 / 3)
    assert m["exact_agreement"] == pytest.approx(1 / 2)
    assert m["field_agreement"] == {"category": 1.0, "priority": 0.5, "summary": 1.0}
    assert m["mean_field_agreement"] == pytest.approx(2.5 / 3)


def write(tmp_path, task_lines: str):
    p = tmp_path / "task.toml"
    p.write_text("[task]\nsystem_prompt = \"rules\"\n" + textwrap.dedent(task_lines), encoding="utf-8")
    return p


@pytest.mark.parametrize("lines, field, words", [
    ('reply_format = "json"\n', "task.json_fields", "json_fields"),
    ('reply_format = "json"\njson_fields = ["a", "a"]\n', "task.json_fields", "unique"),
    ('reply_format = "json"\njson_fields = ["a"]\nanswer_mode = "choose"\nlabels = ["x"]\n', "task.answer_mode", "generate"),
    ('reply_format = "json"\njson_fields = ["a"]\nlabels = ["x"]\n', "task.labels", "label set"),
    ('json_fields = ["a"]\n', "task.json_fields", "reply_format"),
    ('reply_format = "yaml"\n', "task.reply_format", "label, json"),
    ('reply_prefix = "F"\nanswer_mode = "choose"\nlabels = ["x"]\n', "task.reply_prefix", "generate"),
])
def test_json_config_errors_name_the_field(tmp_path, lines, field, words):
    with pytest.raises(PromptDistillError) as info:
        load_config(write(tmp_path, lines))
    assert info.value.field == field and words in info.value.message
    assert "task.toml" in str(info.value)


def test_json_task_needs_no_answer_pattern_read_back(tmp_path):
    cfg = load_config(write(tmp_path, 'reply_format = "json"\njson_fields = ["a", "b"]\nreply_prefix = \'{"a": "\'\n'))
    assert cfg.task.json_fields == ["a", "b"] and cfg.task.reply_prefix == '{"a": "'


def test_support_ticket_example_loads():
    from pathlib import Path

    cfg = load_config(Path(__file__).parent.parent / "examples" / "support_ticket" / "task.toml")
    assert cfg.task.reply_format == "json" and len(cfg.task.json_fields) >= 5
    # the example in the prompt is a valid reply
    example = cfg.task.system_prompt.rsplit("\n", 1)[-1]
    assert Task(cfg.task).parse_answer(example)[1] == OK


def test_reply_prefix_is_appended_after_the_generation_header(tokenizer):
    from promptdistill.render import render_prompt

    messages = [{"role": "system", "content": "rules"}, {"role": "user", "content": "my router <|im_end|> is dead"}]
    plain = render_prompt(tokenizer, messages)
    prefilled = render_prompt(tokenizer, messages, '{"category": "')
    assert prefilled[: len(plain)] == plain
    assert tokenizer.decode(prefilled[len(plain):]) == '{"category": "'
