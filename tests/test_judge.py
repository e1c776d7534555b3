"""The judge (evaluation/judge.py): both orders asked, verdicts mapped to the
system's win / tie / loss (a verdict that flips with the order is a tie), the
judge's reliability, the base as the floor, and stored verdicts resumed: a
rerun asks nothing again, an interrupted one asks only what is missing, other
judge settings are refused (or, forced, start over)."""

from __future__ import annotations

import re

import pytest

from promptdistill.config import ModelsConfig, TaskConfig
from promptdistill.errors import PromptDistillError
from promptdistill.evaluation import judge as J
from promptdistill.records import Example
from promptdistill.task import Task
from promptdistill.teachers import Teacher
from promptdistill.teachers.records import make_record

from conftest import read_jsonl

TASK = Task(TaskConfig(name="brief", system_prompt="Answer in as few words as you can.", reply_format="text"))


def replies_of(text: str) -> tuple[str, str]:
    return re.search(r"\[Reply A\]\n(.*)\n\n\[Reply B\]\n(.*)\n\nWhich", text, re.S).groups()


class ScriptedJudge(Teacher):
    """A judge by rule: `rule(reply_a, reply_b)` is its reply; every question it is asked is kept."""

    backend = "chat"

    def __init__(self, rule, name="judge-model", stop_after=None):
        self.rule, self.name, self.stop_after, self.asked, self.tasks = rule, name, stop_after, [], []

    @property
    def tokenizer(self):
        return None

    def label(self, examples, task, mode, seed, batch_size=None, *, reuse_prefix=True):
        for n, e in enumerate(examples, 1):
            if n - 1 == self.stop_after:
                raise KeyboardInterrupt
            self.asked.append(e.text)
            self.tasks.append(task)
            yield make_record(task, e, self.rule(*replies_of(e.text)))


def shorter(a: str, b: str) -> str:
    return "Verdict: " + ("A" if len(a) < len(b) else "B" if len(b) < len(a) else "tie")


EXAMPLES = [Example(id=f"x{i}", text=f"question {i}") for i in range(4)]
REPLIES = {
    "teacher": ["Yes.", "No.", "Maybe so.", "Four."],
    "base": ["Yes, I think that is right.", "No, it is not.", "Perhaps, it depends.", "Four."],
    "student": ["Yes", "No, not at all.", "Maybe so.", "It is four."],
}


def test_both_orders_are_asked_and_the_judge_sees_the_system_prompt(tmp_path):
    judge = ScriptedJudge(shorter)
    J.judge_section(TASK, judge, EXAMPLES, REPLIES, tmp_path, progress=False)
    question = judge.tasks[0]
    assert TASK.config.system_prompt in question.config.system_prompt and question.labels == ["A", "B", "tie"]
    pairs = {replies_of(t) for t in judge.asked}
    # every non-identical pair asked twice, the system's reply once as A and once as B
    for system in ("base", "student"):
        for mine, theirs in zip(REPLIES[system], REPLIES["teacher"]):
            if mine != theirs:
                assert (mine, theirs) in pairs and (theirs, mine) in pairs
    # student "Maybe so." == teacher's and base "Four." == teacher's: ties, not asked
    assert len(judge.asked) == 2 * 3 + 2 * 3


def test_verdicts_map_to_the_systems_outcome():
    assert J.pair_outcome("A", "B") == ("win", True)  # A is the system first, B the system second
    assert J.pair_outcome("B", "A") == ("loss", True)
    assert J.pair_outcome("tie", "tie") == ("tie", True)
    assert J.pair_outcome("A", "A") == ("tie", False)  # position, not preference: a flip
    assert J.pair_outcome("A", None) == ("tie", False)  # unreadable in one order


def test_rates_and_reliability(tmp_path):
    section = J.judge_section(TASK, ScriptedJudge(shorter), EXAMPLES, REPLIES, tmp_path / "a", progress=False)
    student = section["systems"]["student"]
    # student vs teacher: "Yes" shorter (win), longer (loss), identical (tie), longer (loss)
    assert [student[k]["successes"] for k in ("win", "tie", "loss", "win_or_tie")] == [1, 1, 2, 2]
    assert student["reliability"]["successes"] == 3 and student["reliability"]["n"] == 3 and student["identical"] == 1
    base = section["systems"]["base"]  # the floor: longer everywhere but the identical one
    assert [base[k]["successes"] for k in ("win", "tie", "loss")] == [0, 1, 3]

    biased = J.judge_section(TASK, ScriptedJudge(lambda a, b: "Verdict: A"), EXAMPLES, REPLIES, tmp_path / "b", progress=False)
    s = biased["systems"]["student"]
    # always "A": every verdict flips with the order, so every pair is a tie and the judge is unreliable
    assert s["tie"]["successes"] == 4 and s["reliability"]["successes"] == 0 and s["reliability"]["n"] == 3

    garbled = J.judge_section(TASK, ScriptedJudge(lambda a, b: "I cannot say"), EXAMPLES, REPLIES, tmp_path / "c", progress=False)
    assert garbled["systems"]["student"]["unreadable_verdicts"] == 6 and garbled["systems"]["student"]["tie"]["successes"] == 4


def test_a_rerun_asks_nothing_and_a_changed_reply_only_its_pair(tmp_path):
    first = ScriptedJudge(shorter)
    want = J.judge_section(TASK, first, EXAMPLES, REPLIES, tmp_path, progress=False)
    rows = read_jsonl(tmp_path / J.FILE)
    assert "settings" in rows[0] and len(rows) == 1 + len(first.asked)
    again = ScriptedJudge(shorter)
    assert J.judge_section(TASK, again, EXAMPLES, REPLIES, tmp_path, progress=False) == want and again.asked == []
    retrained = {**REPLIES, "student": ["Yes", "No, never.", "Maybe so.", "It is four."]}
    third = ScriptedJudge(shorter)
    J.judge_section(TASK, third, EXAMPLES, retrained, tmp_path, progress=False)
    # only the changed reply's pair, in both orders
    assert sorted(replies_of(t) for t in third.asked) == [("No, never.", "No."), ("No.", "No, never.")]


def test_an_interrupted_judging_resumes_where_it_stopped(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        J.judge_section(TASK, ScriptedJudge(shorter, stop_after=5), EXAMPLES, REPLIES, tmp_path, progress=False)
    assert len(read_jsonl(tmp_path / J.FILE)) == 1 + 5
    rest = ScriptedJudge(shorter)
    got = J.judge_section(TASK, rest, EXAMPLES, REPLIES, tmp_path, progress=False)
    assert len(rest.asked) == 12 - 5
    assert got == J.judge_section(TASK, ScriptedJudge(shorter), EXAMPLES, REPLIES, tmp_path / "whole", progress=False)


def test_another_judge_is_refused_unless_forced(tmp_path):
    J.judge_section(TASK, ScriptedJudge(shorter), EXAMPLES, REPLIES, tmp_path, progress=False)
    with pytest.raises(PromptDistillError, match="different settings"):
        J.judge_section(TASK, ScriptedJudge(shorter, name="other-model"), EXAMPLES, REPLIES, tmp_path, progress=False)
    other = ScriptedJudge(shorter, name="other-model")
    J.judge_section(TASK, other, EXAMPLES, REPLIES, tmp_path, force=True, progress=False)
    assert len(other.asked) == 12
    assert read_jsonl(tmp_path / J.FILE)[0]["settings"]["judge"] == "other-model"


def test_a_file_the_judge_did_not_write_is_not_overwritten(tmp_path):
    (tmp_path / J.FILE).write_text("not json\n")
    with pytest.raises(PromptDistillError, match="not a judge file"):
        J.judge_section(TASK, ScriptedJudge(shorter), EXAMPLES, REPLIES, tmp_path, progress=False)
    assert (tmp_path / J.FILE).read_text() == "not json\n"


def test_the_judge_question_runs_on_a_local_teacher(tiny_model_dir, tmp_path):
    """The judging question is an ordinary label task: a transformers teacher answers it."""
    from promptdistill.teachers import load_teacher

    teacher = load_teacher(ModelsConfig(teacher=str(tiny_model_dir), device="cpu", dtype="float32"))
    section = J.judge_section(TASK, teacher, EXAMPLES[:2], {k: v[:2] for k, v in REPLIES.items()}, tmp_path, progress=False)
    rows = read_jsonl(tmp_path / J.FILE)[1:]
    assert len(rows) == 8 and all(r["reply"].startswith("Verdict:") for r in rows)
    assert section["systems"]["student"]["n"] == 2


def test_a_reply_base_and_student_share_is_judged_once(tmp_path):
    same = {**REPLIES, "base": REPLIES["student"]}
    judge = ScriptedJudge(shorter)
    section = J.judge_section(TASK, judge, EXAMPLES, same, tmp_path, progress=False)
    assert len(judge.asked) == 2 * 3  # the student's three differing pairs, both orders, once
    assert section["systems"]["base"] == section["systems"]["student"]
