"""Reply checks ([[eval.checks]], replychecks.py): each kind passes and fails on
hand-written replies; a task file's bad check is refused when the file is read,
with file, line and field; pass rates per system come with Wilson intervals."""

from __future__ import annotations

import pytest

from promptdistill.config import load_config
from promptdistill.errors import PromptDistillError
from promptdistill.evaluation.agreement import wilson_interval
from promptdistill.evaluation.checks import ALL, checks_section
from promptdistill.replychecks import count_sentences, count_words, detect_language, parse_checks


def one(table: dict):
    (check,) = parse_checks([{"name": "c", **table}])
    return check


@pytest.mark.parametrize(
    "table, passing, failing",
    [
        ({"kind": "max_words", "max": 3}, "one two three", "one two three four"),
        ({"kind": "min_words", "min": 3}, "one two three", "one two"),
        ({"kind": "max_sentences", "max": 2}, "Hi there. How are you?", "Hi. Yes! Why?"),
        ({"kind": "min_sentences", "min": 2}, "Hi. Bye.", "Just one sentence here."),
        ({"kind": "regex", "pattern": r"\bcat\b"}, "a cat sat", "a category"),
        ({"kind": "regex", "pattern": "cat", "ignore_case": True}, "CAT!", "dog"),
        ({"kind": "not_regex", "pattern": r"(?m)^\s*(\d+[.)]|[-*])\s"}, "Just one line, 1. inline.", "Tips:\n1. Rest\n2. Drink"),
        ({"kind": "starts_with", "text": "Ahoy"}, "Ahoy, matey!", "ahoy, matey!"),
        ({"kind": "starts_with", "text": "Ahoy", "ignore_case": True}, "AHOY there", "Hello, ahoy"),
        ({"kind": "ends_with", "text": "Cheers!"}, "Done. Cheers!", "Cheers! Done."),
        ({"kind": "ends_with", "text": "cheers!", "ignore_case": True}, "Done. CHEERS!", "Done."),
        ({"kind": "ends_with_question"}, "Anything else?", "Anything else? No."),
        ({"kind": "asks_question"}, "Sure. Which size do you need? I can check.", "Sure, size 4 is in stock."),
        ({"kind": "json"}, '{"answer": 4}', "{answer: 4}"),
        ({"kind": "json_schema", "schema": {"type": "object", "required": ["answer"],
                                            "properties": {"answer": {"type": "integer"}}}},
         '{"answer": 4}', '{"answer": "four"}'),
        ({"kind": "language", "language": "fr"}, "Je pense que la réponse est dans le livre, pas dans le film.",
         "I think the answer is in the book, not in the film."),
        ({"kind": "language", "language": "en"}, "Yes, you can return it within a month.", "Sí, puedes devolverlo en un mes."),
        ({"kind": "language", "language": "ru"}, "Да, вы можете вернуть его в течение месяца.", "Yes, you can."),
    ],
)
def test_each_check_passes_and_fails(table, passing, failing):
    check = one(table)
    assert check(passing) is True
    assert check(failing) is False


def test_a_check_reads_the_answer_without_thinking_or_surrounding_whitespace():
    assert one({"kind": "ends_with_question"})("Why?\n\n") is True
    assert one({"kind": "starts_with", "text": "Hi"})("  Hi") is True
    assert one({"kind": "max_words", "max": 2})("<think>long long long deliberation here</think>Two words") is True


def test_word_and_sentence_counting_rules():
    assert count_words("  a\tb\nc  ") == 3
    assert count_sentences("Pi is 3.14 exactly. Yes!") == 2  # no split inside a number
    assert count_sentences("") == 0


def test_language_heuristic_names_scripts_and_refuses_nothing_to_go_on():
    assert detect_language("これは日本語の文です。") == "ja"
    assert detect_language("这是中文句子。") == "zh"
    assert detect_language("12345 !!!") is None


def write_task(tmp_path, checks: str, extra: str = "") -> str:
    path = tmp_path / "task.toml"
    path.write_text('[task]\nsystem_prompt = "Be brief."\n' + extra + "\n" + checks, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "checks, field, words",
    [
        ('[[eval.checks]]\nname = "a"\nkind = "max_words"\nmax = 5\n\n[[eval.checks]]\nname = "b"\nkind = "regex"\npattern = "(x"\n',
         "eval.checks[1].pattern", "invalid regex"),
        ('[[eval.checks]]\nname = "a"\nkind = "json_schema"\nschema = { type = "nonsense" }\n', "eval.checks[0].schema",
         "invalid JSON schema"),
        ('[[eval.checks]]\nname = "a"\nkind = "language"\nlanguage = "klingon"\n', "eval.checks[0].language", "knows"),
        ('[[eval.checks]]\nname = "a"\nkind = "shout"\n', "eval.checks[0].kind", "unknown kind"),
        ('[[eval.checks]]\nname = "a"\nkind = "max_words"\n', "eval.checks[0].max", "needs 'max'"),
        ('[[eval.checks]]\nname = "a"\nkind = "json"\n\n[[eval.checks]]\nname = "a"\nkind = "json"\n', "eval.checks[1].name",
         "duplicate"),
    ],
)
def test_a_bad_check_in_the_task_file_is_refused_when_read(tmp_path, checks, field, words):
    path = write_task(tmp_path, checks)
    with pytest.raises(PromptDistillError) as info:
        load_config(path)
    e = info.value
    assert e.path == path and e.field == field and words in e.message and "\n" not in str(e)
    header_lines = [n for n, line in enumerate(open(path).read().splitlines(), 1) if line.startswith("[[eval.checks]]")]
    assert e.line == header_lines[int(field.split("[")[1][0])]


def test_judge_settings_are_checked(tmp_path):
    with pytest.raises(PromptDistillError, match="one of teacher, off"):
        load_config(write_task(tmp_path, "", '[eval]\njudge = "gpt"'))
    # a label task has no free text to judge
    with pytest.raises(PromptDistillError) as info:
        load_config(write_task(tmp_path, "", '[eval]\njudge = "teacher"'))
    assert info.value.field == "eval.judge"
    with pytest.raises(PromptDistillError) as info:
        load_config(write_task(tmp_path, "", '[eval]\njudge_model = "other"'))
    assert info.value.field == "eval.judge_model"


def test_the_judge_is_on_by_default_for_text_tasks_only(tmp_path):
    from promptdistill.config import judge_enabled

    text = load_config(write_task(tmp_path, "", 'reply_format = "text"'))
    assert judge_enabled(text.eval, "text") and not judge_enabled(load_config(write_task(tmp_path, "")).eval, "label")
    off = load_config(write_task(tmp_path, "", 'reply_format = "text"\n[eval]\njudge = "off"'))
    assert not judge_enabled(off.eval, "text")
    other = load_config(write_task(tmp_path, "", 'reply_format = "text"\n[eval]\njudge_model = "another"'))
    assert other.eval.judge_model == "another"


def test_valid_checks_load_and_keep_their_tables(tmp_path):
    cfg = load_config(write_task(tmp_path, '[[eval.checks]]\nname = "short"\nkind = "max_words"\nmax = 25\n'))
    assert cfg.eval.checks == [{"name": "short", "kind": "max_words", "max": 25}]


def test_pass_rates_per_system_with_wilson_intervals():
    tables = [{"name": "short", "kind": "max_words", "max": 2}, {"name": "asks", "kind": "ends_with_question"}]
    replies = {"teacher": ["Why?", "Why not?", "No.", "Three words here?"],
               "base": ["Long reply with words.", "Why?", "Yes.", "Nope."]}
    section, vectors = checks_section(tables, replies)
    rows = {row["name"]: row["systems"] for row in section["checks"]}
    assert section["n"] == 4 and list(rows) == ["short", "asks", ALL]
    assert vectors["short"]["teacher"] == [True, True, True, False]
    assert vectors[ALL]["base"] == [False, True, False, False]
    assert rows["short"]["teacher"]["successes"] == 3 and rows["asks"]["base"]["successes"] == 1
    assert rows[ALL]["teacher"]["successes"] == 2 and rows[ALL]["base"]["successes"] == 1
    assert (rows["asks"]["base"]["low"], rows["asks"]["base"]["high"]) == wilson_interval(1, 4)
