"""import-chats: production logs become the labeled records `label` would write."""

from __future__ import annotations

import json

import pytest

from conftest import make_task, read_jsonl, write_jsonl, write_task_file
from promptdistill.chatlogs import import_chats
from promptdistill.cli import main
from promptdistill.errors import PromptDistillError
from promptdistill.records import read_labeled

SYSTEM = "Which language is this? Answer with Final Answer: xx."


def chat(text, reply, system=SYSTEM, **extra):
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": text},
                         {"role": "assistant", "content": reply}], **extra}


def test_happy_path_foreign_prompts_set_aside_and_rejects(tmp_path):
    task = make_task(system_prompt=SYSTEM)
    logs = write_jsonl(tmp_path / "logs.jsonl", [
        chat("Hello world", "Final Answer: en", id="a1", model="gpt-x"),
        chat("Bonjour", "Final Answer: fr"),
        chat("Hallo", "I am not sure"),                                   # no answer: a reject
        chat("Hola", "Final Answer: es"),                                 # outside the label set: a reject
        chat("Ciao", "Final Answer: it", system="Another prompt."),       # foreign: set aside
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Final Answer: en"}]},
        # stored-completion layout: request messages + response choices
        {"request": {"messages": chat("Guten Tag", "")["messages"][:2]},
         "response": {"choices": [{"message": {"role": "assistant", "content": "Final Answer: de"}}]}},
    ])
    out = tmp_path / "labeled.jsonl"
    s = import_chats(task, logs, out)
    assert (s["read"], s["labeled"], s["rejected"], s["set_aside"]) == (7, 3, 2, 2)
    assert s["set_aside_by_reason"] == {"other_prompt": 1, "not_single_exchange": 1}
    records = read_labeled(out)  # what train reads
    assert [(r.id, r.text, r.label) for r in records] == [("a1", "Hello world", "en"), ("chat-2", "Bonjour", "fr"),
                                                          ("chat-7", "Guten Tag", "de")]
    assert records[0].messages == [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": "Final Answer: en"}]
    assert records[0].meta["source"] == {"strategy": "import-chats", "file": str(logs), "line": 1, "model": "gpt-x"}
    rejects = read_jsonl(tmp_path / "labeled.rejects.jsonl")
    assert [r["status"] for r in rejects] == ["no_match", "not_in_label_set"]
    foreign = read_jsonl(tmp_path / "labeled.foreign.jsonl")
    assert [(f["line"], f["reason"]) for f in foreign] == [(5, "other_prompt"), (6, "not_single_exchange")]
    assert "Ciao" not in out.read_text()


def test_user_template_tasks_read_the_input_out_of_the_template(tmp_path):
    task = make_task()  # user_template "Which language is this?\n{text}\nAnswer with Final Answer: xx."
    template = task.config.user_template
    logs = write_jsonl(tmp_path / "logs.jsonl", [
        {"messages": [{"role": "user", "content": template.replace("{text}", "Hello there")},
                      {"role": "assistant", "content": "Final Answer: en"}]},
        {"messages": [{"role": "user", "content": "Translate: Hello there"}, {"role": "assistant", "content": "Hallo"}]},
    ])
    s = import_chats(task, logs, tmp_path / "out.jsonl")
    assert (s["labeled"], s["set_aside"]) == (1, 1)
    assert read_labeled(tmp_path / "out.jsonl")[0].text == "Hello there"


@pytest.mark.parametrize("line, message", [
    ("{not json", "logs.jsonl:2: invalid JSON"),
    ('["a list"]', "logs.jsonl:2: expected a JSON object"),
    ('{"text": "no messages"}', "logs.jsonl:2 field 'messages': no conversation"),
    ('{"messages": [{"role": "user"}]}', "logs.jsonl:2 field 'messages[0]': each message needs"),
])
def test_malformed_lines_are_one_line_errors_with_file_and_line(tmp_path, line, message):
    logs = tmp_path / "logs.jsonl"
    logs.write_text(json.dumps(chat("Hello", "Final Answer: en")) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(PromptDistillError) as err:
        import_chats(make_task(system_prompt=SYSTEM), logs, tmp_path / "out.jsonl")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written


def test_cli(tmp_path, capsys):
    task_file = write_task_file(tmp_path, task=dict(system_prompt=SYSTEM, labels=["en", "fr", "de"]))
    logs = write_jsonl(tmp_path / "logs.jsonl", [chat("Hello", "Final Answer: en"), chat("x", "y", system="other")])
    assert main(["import-chats", str(task_file), "--logs", str(logs), "--out", str(tmp_path / "l.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["labeled"], summary["set_aside"]) == (1, 1)
    assert main(["import-chats", str(task_file), "--logs", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "l.jsonl")]) == 2
    assert "missing.jsonl: chat log file not found" in capsys.readouterr().err
