"""Reasoning teachers: the thinking is kept in the record, never parsed or learned."""

from __future__ import annotations

import pytest

from conftest import make_task, read_jsonl
from promptdistill.config import Config, DataConfig, TaskConfig, validate_config
from promptdistill.errors import PromptDistillError
from promptdistill.labeling import label_inputs
from promptdistill.reasoning import split_reasoning, with_reasoning
from promptdistill.records import Example
from promptdistill.task import NO_MATCH, OK, Task
from promptdistill.teachers.local import LocalTeacher
from promptdistill.teachers.records import make_record


@pytest.mark.parametrize("reply, reasoning, answer", [
    ("Final Answer: en", "", "Final Answer: en"),                                   # no reasoning: unchanged
    ("  Final Answer: en \n", "", "  Final Answer: en \n"),
    ("<think>fr? Final Answer: fr</think>\n\nFinal Answer: en", "<think>fr? Final Answer: fr</think>", "Final Answer: en"),
    ("<think>\nstill thinking, maybe Final Answer: fr", "<think>\nstill thinking, maybe Final Answer: fr", ""),  # cut short
    ("opened in the prompt... fr?</think>\nFinal Answer: en", "opened in the prompt... fr?</think>", "Final Answer: en"),
    ("<thinking>a</thinking>x<REASONING>b</REASONING> Final Answer: en", "<thinking>a</thinking><REASONING>b</REASONING>",
     "x Final Answer: en"),
    ("<think>a</thinking> Final Answer: en", "<think>a</thinking>", "Final Answer: en"),  # mismatched: the close wins
    ("if a < b then Final Answer: en", "", "if a < b then Final Answer: en"),
])
def test_split_reasoning(reply, reasoning, answer):
    assert split_reasoning(reply) == (reasoning, answer)


def test_with_reasoning_joins_an_api_reasoning_field():
    assert with_reasoning("Final Answer: en", None) == "Final Answer: en"
    assert with_reasoning(None, None) == ""
    joined = with_reasoning("Final Answer: en", "fr? no")
    assert split_reasoning(joined) == ("<think>\nfr? no\n</think>", "Final Answer: en")


def test_parse_answer_drops_the_reasoning_and_reads_the_last_answer():
    task = make_task()
    assert task.parse_answer("<think>Final Answer: fr</think>Final Answer: en") == ("en", OK)
    assert task.parse_answer("<think>Final Answer: fr ... and then the limit") == (None, NO_MATCH)
    assert task.parse_answer("Final Answer: fr. Wait, no. Final Answer: en") == ("en", OK)  # the last one counts
    assert task.parse_answer("Final Answer: de") == ("de", OK)
    js = make_task(reply_format="json", json_fields=["lang"], labels=[], answer_pattern=r"(.*)", answer_template="{label}")
    assert js.parse_answer('<think>maybe {"lang": "fr"}</think>\n{"lang": "en"}') == ('{"lang": "en"}', OK)


@pytest.mark.parametrize("target", ["normalized", "teacher_reply"])
def test_the_record_keeps_the_reasoning_and_the_student_never_sees_it(target):
    task = make_task(student_target=target)
    reply = "<think>Is it French? Final Answer: fr? No.</think>\n\nFinal Answer: en"
    logprobs = {"token_ids": [1, 2], "top": [[[1, -0.1]], [[2, -0.2]]]}
    r = make_record(task, Example(id="a", text="Hello"), reply, teacher_logprobs=logprobs)
    assert (r.label, r.status, r.teacher_reply) == ("en", OK, reply)
    assert r.messages == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Final Answer: en"}]
    assert r.teacher_logprobs is None  # they cover the thinking, which the student never writes
    plain = make_record(task, Example(id="b", text="Hello"), "Final Answer: en", teacher_logprobs=logprobs)
    assert plain.teacher_logprobs == logprobs


def test_teacher_max_new_tokens_defaults_to_max_new_tokens_and_enters_the_fingerprint():
    base = make_task(max_new_tokens=16)
    assert base.teacher_max_new_tokens == 16
    same = make_task(max_new_tokens=16, teacher_max_new_tokens=16)
    longer = make_task(max_new_tokens=16, teacher_max_new_tokens=512)
    assert longer.teacher_max_new_tokens == 512
    assert same.fingerprint() == base.fingerprint()  # nothing changes, nothing to relabel
    assert longer.fingerprint() != base.fingerprint()
    assert make_task(max_new_tokens=16, teacher_max_new_tokens=256).fingerprint() != longer.fingerprint()
    bad = Config(task=TaskConfig(user_template="{text}", teacher_max_new_tokens=0))
    with pytest.raises(PromptDistillError, match="task.teacher_max_new_tokens"):
        validate_config(bad)


PREFIX = "<think>\nHmm. Final Answer: thinking\n</think>\nFinal Answer: "


@pytest.mark.parametrize("target", ["normalized", "teacher_reply"])
def test_a_local_reasoning_teacher_is_labeled_right_and_trains_no_thinking(varied_model, tmp_path, target):
    """The tiny random model's reply starts inside a think block (the task's reply
    prefix plays the reasoning model): the label comes from after it, and the
    student's training conversation holds no trace of it."""
    cfg = Config(task=TaskConfig(user_template="Classify:\n{text}", answer_pattern=r"Final Answer:\s*(\S+)",
                                 answer_template="Final Answer: {label}", reply_prefix=PREFIX, max_new_tokens=4,
                                 student_target=target, top_logprobs=3), data=DataConfig(seed=0))
    examples = [Example(id=f"e{i}", text=t) for i, t in enumerate(["Hello there", "Bonjour", "x = {y}"])]
    out = tmp_path / "labels.jsonl"
    label_inputs(cfg, examples, LocalTeacher(varied_model), out, progress=False)
    records = read_jsonl(out) + read_jsonl(tmp_path / "labels.rejects.jsonl")
    assert len(records) == 3
    for r in records:
        assert r["teacher_reply"].startswith(PREFIX)  # kept whole for inspection
        answer = r["teacher_reply"][len(PREFIX) - len("Final Answer: "):]
        assert r["label"] != "thinking"
        assert r["label"] == Task(cfg.task).parse_answer(answer)[0]
        assert "think" not in str(r["messages"]).lower() and "Hmm" not in str(r["messages"])
        assert r.get("teacher_logprobs") is None  # they would cover the thinking
    assert any(r["status"] == OK for r in records)


def test_the_local_teacher_replies_up_to_teacher_max_new_tokens(varied_model, tmp_path):
    def reply_tokens(**task) -> list[int]:
        cfg = Config(task=TaskConfig(user_template="Classify:\n{text}", answer_pattern=r"^\s*(\S+)", answer_template="{label}",
                                     top_logprobs=1, **task), data=DataConfig(seed=0))
        out = tmp_path / f"labels-{len(list(tmp_path.iterdir()))}.jsonl"
        label_inputs(cfg, [Example(id=f"e{i}", text=t) for i, t in enumerate(["Hello there", "Bonjour"])],
                     LocalTeacher(varied_model), out, progress=False)
        rows = read_jsonl(out) + read_jsonl(out.with_name(out.stem + ".rejects.jsonl"))
        return [len(r["teacher_logprobs"]["token_ids"]) for r in rows]

    assert reply_tokens(max_new_tokens=2) == [2, 2]
    longer = reply_tokens(max_new_tokens=2, teacher_max_new_tokens=6)
    assert max(longer) > 2 and all(n <= 6 for n in longer)
