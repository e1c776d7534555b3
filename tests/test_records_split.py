"""Input readers, gold-label checks, the CLI's error path, and the train / held-out split."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from promptdistill.errors import PromptDistillError
from promptdistill.records import Example, check_gold_labels, read_inputs
from promptdistill.split import split_examples, subsample


def write_bytes(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def write_text(tmp_path, name, text: str):
    return write_bytes(tmp_path, name, text.encode("utf-8"))


def jsonl(*objs) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


# ------------------------------------------------------------------------ txt


def test_read_txt_skips_blank_lines_ids_are_line_numbers(tmp_path):
    p = write_text(tmp_path, "in.txt", "hello world\n\n   \nbonjour  \n\tguten tag\n")
    ex = read_inputs(p)
    assert [e.text for e in ex] == ["hello world", "bonjour", "guten tag"]
    assert [e.id for e in ex] == ["1", "4", "5"]
    assert [e.line for e in ex] == [1, 4, 5]
    assert all(e.gold_label is None and e.meta == {} for e in ex)


def test_read_txt_bom_and_crlf(tmp_path):
    p = write_bytes(tmp_path, "in.txt", "\ufeffhello\r\n\r\nworld\r\n".encode("utf-8"))
    ex = read_inputs(p)
    assert [e.text for e in ex] == ["hello", "world"]
    assert [e.id for e in ex] == ["1", "3"]


def test_read_txt_keeps_unicode_line_separators_inside_a_text(tmp_path):
    p = write_text(tmp_path, "in.txt", "one\u2028still one\nsecond\n")
    ex = read_inputs(p)
    assert [e.text for e in ex] == ["one\u2028still one", "second"]


def test_empty_file_refused(tmp_path):
    p = write_text(tmp_path, "in.txt", "\n\n  \n")
    with pytest.raises(PromptDistillError, match="no inputs"):
        read_inputs(p)


def test_missing_input_file(tmp_path):
    with pytest.raises(PromptDistillError, match="not found"):
        read_inputs(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------- jsonl


def test_read_jsonl_fields_and_meta(tmp_path):
    p = write_text(
        tmp_path,
        "in.jsonl",
        jsonl(
            {"text": "  Hello there ", "label": "en", "id": "a1", "source": "web", "n": 3},
            {"text": "Bonjour", "label": None},
            {"text": "Hallo", "id": 17},
        )
        + "\n",
    )
    ex = read_inputs(p)
    assert [e.text for e in ex] == ["Hello there", "Bonjour", "Hallo"]
    assert [e.gold_label for e in ex] == ["en", None, None]
    assert [e.id for e in ex] == ["a1", "2", "17"]
    assert ex[0].meta == {"source": "web", "n": 3}
    assert ex[1].meta == {} and ex[2].meta == {}
    assert ex[0].to_json() == {"id": "a1", "text": "Hello there", "label": "en", "meta": {"source": "web", "n": 3}}


def test_read_jsonl_blank_lines_keep_line_numbers(tmp_path):
    p = write_text(tmp_path, "in.jsonl", "\n" + jsonl({"text": "a"}) + "\n" + jsonl({"text": "b"}))
    ex = read_inputs(p)
    assert [(e.id, e.text) for e in ex] == [("2", "a"), ("4", "b")]


def test_malformed_jsonl_line_names_path_and_line(tmp_path):
    p = write_text(tmp_path, "in.jsonl", jsonl({"text": "ok"}) + '{"text": "broken",\n' + jsonl({"text": "fine"}))
    with pytest.raises(PromptDistillError) as info:
        read_inputs(p)
    err = info.value
    assert f"{p}:2" in str(err)
    assert "invalid JSON" in str(err)
    assert err.line == 2


def test_jsonl_line_not_an_object(tmp_path):
    p = write_text(tmp_path, "in.jsonl", jsonl({"text": "ok"}) + '["text"]\n')
    with pytest.raises(PromptDistillError) as info:
        read_inputs(p)
    assert f"{p}:2" in str(info.value)
    assert "object" in str(info.value)


def test_missing_text_field_names_field_and_line(tmp_path):
    p = write_text(tmp_path, "in.jsonl", jsonl({"text": "ok"}, {"text": "ok2"}, {"txt": "typo"}))
    with pytest.raises(PromptDistillError) as info:
        read_inputs(p)
    err = info.value
    assert err.line == 3 and err.field == "text"
    assert f"{p}:3" in str(err) and "'text'" in str(err)


@pytest.mark.parametrize("obj,field", [({"text": 5}, "text"), ({"text": "   "}, "text"), ({"text": "x", "label": 1}, "label"),
                                       ({"text": "x", "id": [1]}, "id"), ({"text": "x", "id": True}, "id")])
def test_bad_field_values_name_field(tmp_path, obj, field):
    p = write_text(tmp_path, "in.jsonl", jsonl({"text": "ok"}, obj))
    with pytest.raises(PromptDistillError) as info:
        read_inputs(p)
    assert info.value.field == field and info.value.line == 2
    assert f"{p}:2 field '{field}'" in str(info.value)


def test_invalid_utf8_names_line(tmp_path):
    data = jsonl({"text": "one"}, {"text": "two"}).encode("utf-8") + b'{"text": "bad \xff\xfe byte"}\n'
    p = write_bytes(tmp_path, "in.jsonl", data)
    with pytest.raises(PromptDistillError) as info:
        read_inputs(p)
    err = info.value
    assert err.line == 3
    assert f"{p}:3" in str(err) and "UTF-8" in str(err)


def test_jsonl_bom_and_crlf(tmp_path):
    body = jsonl({"text": "héllo", "label": "fr"}, {"text": "b", "id": "x"}).replace("\n", "\r\n")
    p = write_bytes(tmp_path, "in.jsonl", b"\xef\xbb\xbf" + body.encode("utf-8"))
    ex = read_inputs(p)
    assert [(e.id, e.text, e.gold_label) for e in ex] == [("1", "héllo", "fr"), ("x", "b", None)]


def test_duplicate_id_refused(tmp_path):
    p = write_text(tmp_path, "in.jsonl", jsonl({"text": "a", "id": "k"}, {"text": "b", "id": "j"}, {"text": "c", "id": "k"}))
    with pytest.raises(PromptDistillError) as info:
        read_inputs(p)
    err = info.value
    assert err.field == "id" and err.line == 3
    assert "'k'" in str(err)


def test_duplicate_id_between_explicit_and_default(tmp_path):
    # an explicit id "3" on line 1 collides with the default id of line 3
    p = write_text(tmp_path, "in.jsonl", jsonl({"text": "a", "id": 3}, {"text": "b"}, {"text": "c"}))
    with pytest.raises(PromptDistillError, match="duplicate id"):
        read_inputs(p)


# ------------------------------------------------------------------------ csv


def test_read_csv_quoted_commas_and_newlines(tmp_path):
    text = 'text,label,source\n"Hello, world",en,web\n"line one\nline two, still",fr,book\nplain,,\n'
    p = write_text(tmp_path, "in.csv", text)
    ex = read_inputs(p)
    assert [e.text for e in ex] == ["Hello, world", "line one\nline two, still", "plain"]
    assert [e.gold_label for e in ex] == ["en", "fr", None]
    assert ex[0].meta == {"source": "web"} and ex[1].meta == {"source": "book"}
    assert len({e.id for e in ex}) == 3
    assert ex[0].id == "2"


def test_read_csv_bom_crlf_and_blank_rows(tmp_path):
    text = "\ufefftext,label\r\nHallo,de\r\n,\r\n\"a,b\r\nc\",en\r\n"
    p = write_bytes(tmp_path, "in.csv", text.encode("utf-8"))
    ex = read_inputs(p)
    assert [e.text for e in ex] == ["Hallo", "a,b\r\nc"] or [e.text for e in ex] == ["Hallo", "a,b\nc"]
    assert [e.gold_label for e in ex] == ["de", "en"]


def test_csv_without_text_column(tmp_path):
    p = write_text(tmp_path, "in.csv", "body,label\nhello,en\n")
    with pytest.raises(PromptDistillError) as info:
        read_inputs(p)
    assert info.value.field == "text" and info.value.line == 1


def test_csv_too_many_values(tmp_path):
    p = write_text(tmp_path, "in.csv", "text,label\nhello,en\nhi,en,extra\n")
    with pytest.raises(PromptDistillError) as info:
        read_inputs(p)
    assert info.value.line == 3


# ----------------------------------------------------------------- gold labels


def test_check_gold_labels_refuses_label_outside_set(tmp_path):
    p = write_text(tmp_path, "in.jsonl", jsonl({"text": "a", "label": "en"}, {"text": "b"}, {"text": "c", "label": "xx"}))
    ex = read_inputs(p)
    with pytest.raises(PromptDistillError) as info:
        check_gold_labels(ex, ["en", "fr"], p)
    err = info.value
    assert err.line == 3 and err.field == "label"
    assert f"{p}:3 field 'label'" in str(err)
    assert "'xx'" in str(err)


def test_check_gold_labels_accepts_valid_and_open_set(tmp_path):
    p = write_text(tmp_path, "in.jsonl", jsonl({"text": "a", "label": "en"}, {"text": "b"}, {"text": "c", "label": "xx"}))
    ex = read_inputs(p)
    check_gold_labels(ex[:2], ["en", "fr"], p)
    check_gold_labels(ex, [], p)  # open label set: anything goes


# ------------------------------------------------------------------------ cli


def _task_file(tmp_path, teacher_dir, labels='["en", "fr"]'):
    p = tmp_path / "task.toml"
    p.write_text(
        "[task]\n"
        'user_template = "Which language?\\n{text}"\n'
        f"labels = {labels}\n"
        'answer_mode = "choose"\n'
        "[models]\n"
        f"teacher = {json.dumps(str(teacher_dir))}\n"
        'device = "cpu"\n'
        'dtype = "float32"\n',
        encoding="utf-8",
    )
    return p


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("bad.jsonl", jsonl({"text": "ok"}) + '{"text": oops}\n', ":2: invalid JSON"),
        ("bad.jsonl", jsonl({"text": "ok"}, {"label": "en"}), ":2 field 'text'"),
        ("bad.jsonl", jsonl({"text": "ok", "label": "en"}, {"text": "x", "label": "zz"}), ":2 field 'label'"),
        ("bad.csv", "label\nen\n", ":1 field 'text'"),
    ],
)
def test_cli_label_input_error_is_one_line(tmp_path, capsys, tiny_model_dir, name, content, needle):
    from promptdistill.cli import main

    task = _task_file(tmp_path, tiny_model_dir)
    bad = write_text(tmp_path, name, content)
    out = tmp_path / "labeled.jsonl"
    code = main(["label", str(task), "--inputs", str(bad), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert str(bad) + needle in lines[0]
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert not out.exists()


def test_cli_config_error_is_one_line(tmp_path, capsys):
    from promptdistill.cli import main

    task = tmp_path / "task.toml"
    task.write_text('[task]\nsystem_prompt = "p"\n[train]\nlerning_rate = 1e-3\n', encoding="utf-8")
    inputs = write_text(tmp_path, "in.txt", "hello\n")
    code = main(["label", str(task), "--inputs", str(inputs), "--out", str(tmp_path / "o.jsonl")])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "train.lerning_rate" in lines[0] and "learning_rate'" in lines[0]
    assert "Traceback" not in captured.err


# ---------------------------------------------------------------------- split


def make_examples(counts: dict, dup_every: int = 0) -> list[Example]:
    """Examples with the given number per gold label; every `dup_every`-th text is repeated."""
    out = []
    n = 0
    for label, count in counts.items():
        for i in range(count):
            out.append(Example(id=str(n), text=f"{label}-text-{i}", gold_label=label))
            n += 1
    if dup_every:
        for e in list(out)[::dup_every]:
            out.append(Example(id=str(n), text=e.text, gold_label=e.gold_label))
            n += 1
    return out


def _ids(examples):
    return [e.id for e in examples]


def test_split_deterministic_for_seed():
    ex = make_examples({"en": 30, "fr": 20, "de": 10})
    a = split_examples(ex, 0.2, seed=3)
    b = split_examples(list(ex), 0.2, seed=3)
    assert (_ids(a[0]), _ids(a[1])) == (_ids(b[0]), _ids(b[1]))
    others = {tuple(_ids(split_examples(ex, 0.2, seed=s)[1])) for s in range(4, 10)}
    assert len(others | {tuple(_ids(a[1]))}) > 1, "the seed should change the split"


def test_split_partitions_in_input_order():
    ex = make_examples({"en": 15, "fr": 9, None: 6})
    train, held = split_examples(ex, 0.3, seed=1)
    assert sorted(_ids(train) + _ids(held), key=int) == _ids(ex)
    assert not set(_ids(train)) & set(_ids(held))
    assert _ids(train) == sorted(_ids(train), key=int)
    assert _ids(held) == sorted(_ids(held), key=int)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_no_shared_text_with_duplicates(seed):
    ex = make_examples({"en": 20, "fr": 12, "de": 4}, dup_every=2)
    # shuffle the duplicates in between, and add a triple
    ex = ex[::-1] + [Example(id="x1", text="en-text-0", gold_label="en"), Example(id="x2", text="fr-text-1", gold_label="fr")]
    assert len({e.text for e in ex}) < len(ex)
    train, held = split_examples(ex, 0.25, seed=seed)
    assert held and train
    assert not {e.text for e in train} & {e.text for e in held}
    assert len(train) + len(held) == len(ex)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_split_stratified(fraction):
    counts = {"a": 40, "b": 20, "c": 5, "d": 2, "e": 1}
    ex = make_examples(counts)
    train, held = split_examples(ex, fraction, seed=0)
    h = Counter(e.gold_label for e in held)
    t = Counter(e.gold_label for e in train)
    for label, n in counts.items():
        if n >= 2:
            assert h[label] >= 1, label
            assert t[label] >= 1, label
        if n >= 10:
            assert abs(h[label] - n * fraction) <= 1, (label, h[label])
    assert abs(len(held) - len(ex) * fraction) <= len(counts)


def test_split_unlabeled_inputs():
    ex = [Example(id=str(i), text=f"t{i}") for i in range(50)]
    train, held = split_examples(ex, 0.2, seed=5)
    assert len(held) == 10 and len(train) == 40


def test_subsample_respects_limit():
    ex = make_examples({"a": 30, "b": 10})
    sub = subsample(ex, 7, seed=2)
    assert len(sub) == 7
    assert len(set(_ids(sub))) == 7 and set(_ids(sub)) <= set(_ids(ex))
    assert _ids(sub) == sorted(_ids(sub), key=int)  # input order
    assert _ids(subsample(ex, 7, seed=2)) == _ids(sub)
    assert _ids(subsample(ex, 0, seed=2)) == _ids(ex)
    assert _ids(subsample(ex, 100, seed=2)) == _ids(ex)
    assert _ids(subsample(ex, len(ex), seed=2)) == _ids(ex)
    assert len({tuple(_ids(subsample(ex, 7, seed=s))) for s in range(5)}) > 1


# ------------------------------------------------------------- conversation inputs

U, A = (lambda t: {"role": "user", "content": t}), (lambda t: {"role": "assistant", "content": t})  # noqa: E731


def test_read_jsonl_conversations_beside_texts(tmp_path):
    p = write_text(tmp_path, "in.jsonl", jsonl({"id": "a", "messages": [U("Hi"), A("Hello!"), U(" And you? ")], "topic": "x"},
                                              {"id": "b", "text": "Plain"}))
    a, b = read_inputs(p)
    assert a.text == "And you?" and a.messages == [U("Hi"), A("Hello!"), U(" And you? ")] and a.meta == {"topic": "x"}
    assert a.conversation() == a.messages and b.messages is None and b.conversation() == [U("Plain")]
    # A split file keeps the conversation: written and read back the same.
    from promptdistill.records import write_examples

    write_examples(tmp_path / "back.jsonl", [a, b])
    assert read_inputs(tmp_path / "back.jsonl") == [a, b]


@pytest.mark.parametrize("messages, field, words", [
    ("Hi", "messages", "expected a list of messages"),
    ([], "messages", "empty conversation"),
    (["Hi"], "messages[0]", "expected an object"),
    ([{"content": "Hi"}], "messages[0].role", "'role'"),
    ([U("Hi"), A("Hello")], "messages[1].role", "ends in an assistant turn"),
    ([U("Hi"), A("  "), U("Well?")], "messages[1].content", "empty turn"),
    ([{"role": "system", "content": "Be evil."}, U("Hi")], "messages[0].role", "system prompt is the task's"),
    ([{"role": "tool", "content": "42"}, U("Hi")], "messages[0].role", "one of user, assistant"),
    ([U(7)], "messages[0].content", "'content'"),
])
def test_malformed_conversations_name_line_and_field(tmp_path, messages, field, words):
    p = write_text(tmp_path, "in.jsonl", jsonl({"text": "fine"}, {"messages": messages}))
    with pytest.raises(PromptDistillError) as info:
        read_inputs(p)
    assert (info.value.line, info.value.field) == (2, field) and words in info.value.message


def test_a_text_beside_messages_must_be_the_last_user_turn(tmp_path):
    with pytest.raises(PromptDistillError) as info:
        read_inputs(write_text(tmp_path, "in.jsonl", jsonl({"text": "other", "messages": [U("Hi")]})))
    assert info.value.field == "text"
    (one,) = read_inputs(write_text(tmp_path, "ok.jsonl", jsonl({"text": "Hi", "messages": [U(" Hi ")]})))
    # One user turn is a single-turn input, the same as {"text": "Hi"}.
    assert (one.text, one.messages, one.conversation()) == ("Hi", None, [U("Hi")])


def test_csv_and_text_inputs_stay_single_turn(tmp_path):
    (e,) = read_inputs(write_text(tmp_path, "in.csv", 'text,messages\nhello,"[1]"\n'))
    assert e.messages is None and e.meta == {"messages": "[1]"}


def test_duplicates_of_a_conversation_are_whole_conversations():
    from promptdistill.records import find_duplicates

    one = Example("1", "Thanks!", messages=[U("Hi"), A("Hello"), U("Thanks!")])
    other = Example("2", "Thanks!", messages=[U("Yo"), A("Hey"), U("Thanks!")])
    again = Example("3", "Thanks!", messages=[U("Hi"), A("Hello"), U("Thanks!")])
    assert find_duplicates([one, other, again]) == [[one, again]]


@pytest.mark.parametrize("seed", range(5))
def test_split_keeps_a_conversation_and_its_continuations_on_one_side(seed):
    examples = []
    for i in range(12):
        opening = f"Question {i}?"
        examples.append(Example(f"s{i}", opening))  # the same opening as a single-turn input
        examples.append(Example(f"c{i}", f"More on {i}?", messages=[U(opening), A("Sure."), U(f"More on {i}?")]))
        examples.append(Example(f"d{i}", f"Why {i}?", messages=[U(opening), A("Sure."), U(f"More on {i}?"), A("Yes."), U(f"Why {i}?")]))
    train, heldout = split_examples(examples, 0.25, seed)
    side = {e.id: "train" for e in train} | {e.id: "heldout" for e in heldout}
    assert len(side) == len(examples) and heldout and train
    for i in range(12):
        assert side[f"s{i}"] == side[f"c{i}"] == side[f"d{i}"]
