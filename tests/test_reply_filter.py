"""train.reply_filter = "checks": the student trains only on the teacher replies
that pass every [[eval.checks]] rule; the labeled file is untouched, the summary
counts what was left out, and the filter and its checks decide whether a
finished training or a checkpoint still stands."""

from __future__ import annotations

from dataclasses import replace

import pytest

import promptdistill.training.recipe as recipe
from conftest import make_task
from promptdistill.config import Config, EvalConfig, ModelsConfig, TrainConfig, load_config, training_settings
from promptdistill.errors import PromptDistillError
from promptdistill.records import LabeledExample
from promptdistill.replychecks import parse_checks
from promptdistill.training.checkpoint import checkpoint_settings
from promptdistill.training.data import FAILED_CHECKS, filter_by_checks

SHORT = {"name": "at_most_4_words", "kind": "max_words", "max": 4}
NO_LIST = {"name": "no_list", "kind": "not_regex", "pattern": r"(?m)^\s*- "}


def record(i: int, reply: str, status: str = "ok") -> LabeledExample:
    user = {"role": "user", "content": f"question {i}?"}
    messages = [user, {"role": "assistant", "content": reply}] if status == "ok" else [user]
    return LabeledExample(id=str(i), text=f"question {i}?", gold_label=None, teacher_reply=reply, label=reply,
                          status=status, messages=messages)


REPLIES = ["Yes, it is.", "It depends on many things, mostly the weather and the season.", "No.",
           "- one\n- two", "Paris.", "A long answer that keeps going well past four words."]


def records() -> list[LabeledExample]:
    return [record(i, r) for i, r in enumerate(REPLIES)] + [record(9, "", status="empty_reply")]


def test_filter_marks_every_reply_failing_a_check_and_nothing_else():
    checks = parse_checks([SHORT, NO_LIST])
    kept, failed = filter_by_checks(records(), checks)
    assert failed == ["1", "3", "5"]
    assert [r.status for r in kept] == ["ok", FAILED_CHECKS, "ok", FAILED_CHECKS, "ok", FAILED_CHECKS, "empty_reply"]
    assert [r.trainable for r in kept] == [True, False, True, False, True, False, False]
    assert [r.teacher_reply for r in kept] == REPLIES + [""]  # the records are the same otherwise
    assert [r.status for r in records()][:6] == ["ok"] * 6  # the caller's records are not changed


def _config(model_dir, **train) -> Config:
    task = make_task(system_prompt="Answer in at most four words.", labels=[], reply_format="text", max_new_tokens=16)
    return Config(task=task.config, eval=EvalConfig(checks=[SHORT, NO_LIST]),
                  train=TrainConfig(lora_rank=4, lora_alpha=8, max_steps=1, batch_size=4, save_every=100, seed=0, **train),
                  models=ModelsConfig(student=model_dir, teacher=model_dir, device="cpu", dtype="float32"))


def test_training_with_the_filter_trains_only_on_passing_replies(tmp_path, tiny_model_dir):
    cfg = _config(tiny_model_dir, reply_filter="checks")
    summary = recipe.train_student(cfg, records(), tmp_path / "filtered", progress=False)
    assert summary["train_examples"] == 3 and summary["failed_checks"] == 3
    plain = recipe.train_student(replace(cfg, train=replace(cfg.train, reply_filter="none")), records(), tmp_path / "all",
                                 progress=False)
    assert plain["train_examples"] == 6 and "failed_checks" not in plain


def test_nothing_passing_is_one_clear_error(tmp_path, tiny_model_dir):
    cfg = _config(tiny_model_dir, reply_filter="checks")
    with pytest.raises(PromptDistillError, match="failing the checks"):
        recipe.train_student(cfg, [record(1, REPLIES[1]), record(3, REPLIES[3])], tmp_path / "none", progress=False)


def test_the_filter_and_its_checks_decide_whether_a_training_stands(tiny_model_dir):
    from promptdistill.pipeline import stage_settings

    off = _config(tiny_model_dir)
    on = replace(off, train=replace(off.train, reply_filter="checks"))
    edited = replace(on, eval=replace(on.eval, checks=[{**SHORT, "max": 5}, NO_LIST]))
    # Off, the setting is not in the settings at all: trainings made before it existed stay valid,
    # and editing a check changes only the evaluation.
    assert "reply_filter" not in training_settings(off.train)
    edited_off = replace(off, eval=edited.eval)
    assert stage_settings(off)["train"] == stage_settings(edited_off)["train"]
    assert stage_settings(off)["eval"] != stage_settings(edited_off)["eval"]
    assert checkpoint_settings(records(), off) == checkpoint_settings(records(), edited_off)
    # On, the filter and every rule it applies are part of what the training is valid for.
    for a, b in ((off, on), (on, edited)):
        assert stage_settings(a)["train"] != stage_settings(b)["train"]
        assert checkpoint_settings(records(), a) != checkpoint_settings(records(), b)


TASK = '''[task]
name = "t"
system_prompt = "Be brief."
reply_format = "text"
'''


@pytest.mark.parametrize("extra, message", [
    ('[train]\nreply_filter = "checks"\n', 'declares none'),
    ('[train]\nreply_filter = "rules"\n', 'must be one of none, checks'),
    ('[train]\nreply_filter = "checks"\nloss = "on-policy"\n[[eval.checks]]\nname = "s"\nkind = "max_words"\nmax = 4\n',
     "student's own samples"),
])
def test_settings_that_cannot_filter_are_refused_naming_the_field(tmp_path, extra, message):
    path = tmp_path / "task.toml"
    path.write_text(TASK + extra)
    with pytest.raises(PromptDistillError, match=message) as e:
        load_config(path)
    assert e.value.field == "train.reply_filter" and str(e.value.path) == str(path)
