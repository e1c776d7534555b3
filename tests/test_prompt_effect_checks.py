"""benchmarks/prompt_effect.py: its checks file is read with the package's rules
(replychecks.py; each rule's behaviour is tests/test_checks.py's), bad checks
and conversation files are refused with one line naming file and check (or
line) before any model loads, and batched left-padded decoding gives the same
replies as one conversation at a time."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from promptdistill.errors import PromptDistillError

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("prompt_effect", ROOT / "benchmarks" / "prompt_effect.py")
pe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pe)


def write_checks(tmp_path, body: str) -> Path:
    path = tmp_path / "checks.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_example_checks_file_loads():
    checks = pe.load_checks(ROOT / "examples" / "concise_chat" / "checks.toml")
    assert [c.kind for c in checks] == ["max_words", "max_sentences", "not_regex"]
    no_list = checks[2]
    assert no_list("• first\n• second") is False
    assert no_list("A plain sentence.") is True


def test_invalid_regex_is_refused_with_file_and_check(tmp_path):
    path = write_checks(tmp_path, '[[eval.checks]]\nname = "ok"\nkind = "max_words"\nmax = 5\n\n[[eval.checks]]\nname = "broken"\nkind = "regex"\npattern = "(unclosed"\n')
    with pytest.raises(PromptDistillError) as info:
        pe.load_checks(path)
    message = str(info.value)
    assert "\n" not in message
    assert f"{path}:6" in message and "eval.checks[1].pattern" in message and "broken" in message and "invalid regex" in message


@pytest.mark.parametrize(
    "body, words",
    [
        ('name = "c"\nkind = "shout"', "unknown kind"),
        ('name = "c"\nkind = "max_words"', "needs 'max'"),
        ('name = "c"\nkind = "max_words"\nmax = "ten"', r"eval.checks\[0\].max'.*must be a non-negative integer"),
        ('name = "c"\nkind = "max_words"\nmax = -1', r"eval.checks\[0\].max'.*must be a non-negative integer"),
        ('name = "c"\nkind = "json"\npattern = "x"', r"eval.checks\[0\].pattern'.*not a parameter"),
        ('kind = "json"', "'name'"),
    ],
)
def test_bad_check_tables_are_refused(tmp_path, body, words):
    with pytest.raises(PromptDistillError, match=words):
        pe.load_checks(write_checks(tmp_path, "[[eval.checks]]\n" + body + "\n"))


def test_checks_file_without_checks_is_refused(tmp_path):
    with pytest.raises(PromptDistillError, match="eval.checks"):
        pe.load_checks(write_checks(tmp_path, "[eval]\n"))


def test_conversations_must_end_in_a_user_turn(tmp_path):
    path = tmp_path / "inputs.jsonl"
    rows = [
        {"id": "a", "messages": [{"role": "user", "content": "hi"}]},
        {"id": "b", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(PromptDistillError) as info:
        pe.load_conversations(path)
    assert f"{path}:2" in str(info.value) and "user turn" in str(info.value)


def test_example_conversations_are_valid():
    conversations = pe.load_conversations(ROOT / "examples" / "concise_chat" / "inputs.jsonl")
    assert len(conversations) == 182
    assert sum(len(c["messages"]) > 1 for c in conversations) == 40
    last = [c["messages"][-1]["content"].strip().casefold() for c in conversations]
    assert len(set(last)) == len(last)  # no question twice


def test_example_training_conversations_are_valid_and_apart_from_the_held_out_ones():
    train = pe.load_conversations(ROOT / "examples" / "concise_chat" / "train.jsonl")
    held = pe.load_conversations(ROOT / "examples" / "concise_chat" / "inputs.jsonl")
    assert len(train) == 295 and sum(len(c["messages"]) > 1 for c in train) == 77
    last = [c["messages"][-1]["content"].strip().casefold() for c in train]
    assert len(set(last)) == len(last)  # no question twice
    assert not set(last) & {c["messages"][-1]["content"].strip().casefold() for c in held}
    assert not {c["id"] for c in train} & {c["id"] for c in held}


def test_bad_regex_stops_the_script_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import promptdistill.models

    def no_loading(*args, **kwargs):
        raise AssertionError("model loaded despite a bad checks file")

    monkeypatch.setattr(promptdistill.models, "load_model", no_loading)
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Be brief.")
    checks = write_checks(tmp_path, '[[eval.checks]]\nname = "broken"\nkind = "not_regex"\npattern = "[a-"\n')
    code = pe.main(["--prompt", str(prompt), "--inputs", str(ROOT / "examples" / "concise_chat" / "inputs.jsonl"), "--checks", str(checks)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "broken" in err and str(checks) in err


def test_report_counts_passes_per_check_and_overall(tmp_path):
    checks = pe.load_checks(write_checks(tmp_path, '[[eval.checks]]\nname = "short"\nkind = "max_words"\nmax = 2\n\n[[eval.checks]]\nname = "asks"\nkind = "ends_with_question"\n'))
    conversations = [{"id": i, "messages": [{"role": "user", "content": "x"}]} for i in "abcd"]
    with_replies = {"a": "Why?", "b": "Why not?", "c": "No.", "d": "Three words here?"}
    without_replies = {"a": "Long reply with words.", "b": "Why?", "c": "Yes.", "d": "Nope."}
    lines = pe.report_lines(checks, conversations, with_replies, without_replies)
    short, asks, every = lines[1], lines[2], lines[3]
    assert "3/4" in short and "+0.0" in short  # with: a b c; without: b c d
    assert "3/4" in asks and "1/4" in asks and "+50.0" in asks
    assert every.startswith("ALL CHECKS") and "2/4" in every and "1/4" in every and "+25.0" in every


def test_batched_left_padded_replies_equal_single_replies(tiny):
    conversations = [
        {"id": "a", "messages": [{"role": "user", "content": "hi"}]},
        {"id": "b", "messages": [{"role": "user", "content": "tell me something much longer about the sea and ships"}]},
        {"id": "c", "messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}, {"role": "user", "content": "three?"}]},
    ]
    batched, _ = pe.generate_replies(tiny, "Be brief.", conversations, max_new_tokens=6, batch_size=3)
    for conversation in conversations:
        single, _ = pe.generate_replies(tiny, "Be brief.", [conversation], max_new_tokens=6, batch_size=1)
        assert single[conversation["id"]] == batched[conversation["id"]]


def test_each_reply_goes_to_its_own_conversation(tiny, monkeypatch):
    """Batches run sorted by length; every reply must still land on its own id."""
    from promptdistill import engine
    from promptdistill.render import render_prompt

    tok = tiny.tokenizer

    def length_as_reply(model, prompts, **kwargs):
        return [tok(str(len(p)), add_special_tokens=False)["input_ids"] for p in prompts]

    monkeypatch.setattr(engine, "generate", length_as_reply)
    conversations = [{"id": f"c{i}", "messages": [{"role": "user", "content": "word " * (7 - i)}]} for i in range(7)]
    replies, _ = pe.generate_replies(tiny, "Be brief.", conversations, max_new_tokens=4, batch_size=3)
    for c in conversations:
        expected = len(render_prompt(tok, [{"role": "system", "content": "Be brief."}] + c["messages"]))
        assert replies[c["id"]] == str(expected)


def test_judge_line_asks_both_orders_and_resumes(tiny, tmp_path):
    conversations = [
        {"id": "a", "messages": [{"role": "user", "content": "hi"}]},
        {"id": "b", "messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}, {"role": "user", "content": "three?"}]},
    ]
    with_replies, without_replies = {"a": "Hello.", "b": "Four."}, {"a": "Hello! How can I help you today?", "b": "Four."}
    line = pe.judge_lines(tiny, "Be brief.", conversations, with_replies, without_replies, tmp_path)
    assert "n=2 (1 identical)" in line and "reliability" in line
    stored = (tmp_path / "judge.jsonl").read_text().splitlines()
    assert len(stored) == 1 + 2  # the settings, then one pair in both orders
    assert pe.judge_lines(tiny, "Be brief.", conversations, with_replies, without_replies, tmp_path).split(";")[:3] == line.split(";")[:3]
    assert len((tmp_path / "judge.jsonl").read_text().splitlines()) == 3  # nothing asked again
