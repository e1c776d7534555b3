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
    assert s["set_aside_by_reason"] == {"other_prompt": 1, "no_system_prompt": 1}
    records = read_labeled(out)  # what train reads
    assert [(r.id, r.text, r.label) for r in records] == [("a1", "Hello world", "en"), ("chat-2", "Bonjour", "fr"),
                                                          ("chat-7", "Guten Tag", "de")]
    assert records[0].messages == [{"role": "user", "content": "Hello world"}, {"role": "assistant", "content": "Final Answer: en"}]
    assert records[0].meta["source"] == {"strategy": "import-chats", "file": str(logs), "line": 1, "model": "gpt-x"}
    rejects = read_jsonl(tmp_path / "labeled.rejects.jsonl")
    assert [r["status"] for r in rejects] == ["no_match", "not_in_label_set"]
    foreign = read_jsonl(tmp_path / "labeled.foreign.jsonl")
    assert [(f["line"], f["reason"]) for f in foreign] == [(5, "other_prompt"), (6, "no_system_prompt")]
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


def _import(tmp_path, records, task=None):
    logs = write_jsonl(tmp_path / "logs.jsonl", records)
    s = import_chats(task or make_task(system_prompt=SYSTEM), logs, tmp_path / "out.jsonl")
    return s, read_labeled(tmp_path / "out.jsonl"), read_jsonl(tmp_path / "out.foreign.jsonl")


def test_content_as_a_list_of_parts_and_the_developer_role(tmp_path):
    parts = lambda *texts: [{"type": "text", "text": t} for t in texts]  # noqa: E731
    s, records, foreign = _import(tmp_path, [
        # OpenAI-style parts everywhere, text parts joined with newlines
        {"messages": [{"role": "system", "content": parts(SYSTEM)},
                      {"role": "user", "content": parts("Hello", "world")},
                      {"role": "assistant", "content": parts("Final Answer: en")}]},
        # `developer` is OpenAI's system role for reasoning models
        {"messages": [{"role": "developer", "content": SYSTEM}, {"role": "user", "content": "Bonjour"},
                      {"role": "assistant", "content": "Final Answer: fr"}]},
        # an image part: set aside with the line and the part named, never half-read
        {"messages": [{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                      {"role": "assistant", "content": "Final Answer: en"}]},
        {"messages": [{"role": "system", "content": SYSTEM},
                      {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]},
                      {"role": "assistant", "content": "Final Answer: en"}]},
    ])
    assert [(r.text, r.label) for r in records] == [("Hello\nworld", "en"), ("Bonjour", "fr")]
    assert s["set_aside_by_reason"] == {"non_text_content": 2}
    assert [(f["line"], f["reason"], f["detail"]) for f in foreign] == [
        (3, "non_text_content", "messages[1].content[1] is a 'image_url' part"),
        (4, "non_text_content", "messages[1].content[0] is a 'input_audio' part")]


def test_anthropic_records_system_beside_messages(tmp_path):
    s, records, foreign = _import(tmp_path, [
        # the reply as the last message, content as blocks
        {"system": SYSTEM, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]},
                                        {"role": "assistant", "content": [{"type": "text", "text": "Final Answer: en"}]}]},
        # request/response as logged around the Messages API; system as a list of blocks (prompt caching)
        {"request": {"model": "claude-x", "system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
                     "messages": [{"role": "user", "content": "Bonjour"}]},
         "response": {"id": "msg_1", "type": "message", "role": "assistant",
                      "content": [{"type": "thinking", "thinking": "French? Final Answer: en no"},
                                  {"type": "text", "text": "Final Answer: fr"}]}},
        # a tool call in the reply: not an answer
        {"system": SYSTEM, "messages": [{"role": "user", "content": "Hallo"}],
         "response": {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "lookup", "input": {}}]}},
        # a system prompt other than the task's: set aside, as with every layout
        {"system": "You are a pirate.", "messages": [{"role": "user", "content": "Ahoy"},
                                                      {"role": "assistant", "content": "Final Answer: en"}]},
    ])
    assert [(r.text, r.label) for r in records] == [("Hello", "en"), ("Bonjour", "fr")]
    # the reasoning is kept in the record's reply for inspection, never in what the student learns
    assert "French?" in records[1].teacher_reply and "<think>" in records[1].teacher_reply
    assert records[1].messages[-1] == {"role": "assistant", "content": "Final Answer: fr"}
    assert records[1].meta["source"]["model"] == "claude-x"
    assert [(f["line"], f["reason"]) for f in foreign] == [(3, "tool_use"), (4, "other_prompt")]


def test_openai_stored_completions_export(tmp_path):
    """A stored completion (GET /v1/chat/completions/{id}) with its request messages
    (GET .../{id}/messages: ChatCompletionStoreMessage, text in content_parts)."""
    def stored(ident, user, reply, **message):
        return {"id": ident, "object": "chat.completion", "created": 1733000000, "model": "gpt-4o-mini-2024-07-18",
                "metadata": {"app": "support"}, "request_id": "req_1",
                "input": [{"id": f"{ident}-0", "role": "developer", "content": SYSTEM, "content_parts": None},
                          {"id": f"{ident}-1", "role": "user", "content": None,
                           "content_parts": [{"type": "text", "text": user}]}],
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": reply, "refusal": None, **message}}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}}
    s, records, foreign = _import(tmp_path, [
        stored("chatcmpl-1", "Hello", "Final Answer: en"),
        stored("chatcmpl-2", "Bonjour", "Final Answer: fr", reasoning_content="Could be en. Final Answer: en? No."),
        stored("chatcmpl-3", "Hallo", None, tool_calls=[{"id": "c", "type": "function",
                                                        "function": {"name": "f", "arguments": "{}"}}]),
    ])
    assert [(r.id, r.text, r.label) for r in records] == [("chatcmpl-1", "Hello", "en"), ("chatcmpl-2", "Bonjour", "fr")]
    assert records[0].meta["source"]["model"] == "gpt-4o-mini-2024-07-18"
    assert "Could be en" in records[1].teacher_reply
    assert "Could be en" not in json.dumps(records[1].messages)
    assert [(f["line"], f["reason"], f["detail"]) for f in foreign] == [(3, "tool_use", "choices[0].message calls a tool")]


def test_multi_turn_logs_are_kept_as_conversations_and_other_shapes_set_aside(tmp_path):
    u, a = (lambda t: {"role": "user", "content": t}), (lambda t: {"role": "assistant", "content": t})  # noqa: E731
    sys = {"role": "system", "content": SYSTEM}
    s, records, foreign = _import(tmp_path, [
        {"messages": [sys, u("Hello"), a("Final Answer: en"), u("And this?"), a("Final Answer: fr")]},
        {"messages": [sys, u("Hello")]},
        {"messages": [sys, a("Final Answer: en")]},
        {"messages": [sys, sys, u("Hello"), a("Final Answer: en")]},
        {"messages": [sys, u("Hello"), {"role": "tool", "content": "42", "tool_call_id": "c"}, a("Final Answer: en")]},
        {"messages": [sys, u("   "), a("Final Answer: en")]},
        {"messages": [sys, u("Hello"), a("Final Answer: en")]},
        {"messages": [sys, u("Hello"), a("Final Answer: en"), a("Final Answer: fr")]},
        {"messages": [sys, u("Hello"), a(" "), u("Again"), a("Final Answer: fr")]},
    ])
    assert [r.text for r in records] == ["And this?", "Hello"]
    # The multi-turn log is one input: its history, then the reply to its last user turn, trained alone.
    assert records[0].messages == [u("Hello"), a("Final Answer: en"), u("And this?"), a("Final Answer: fr")]
    assert records[0].conversation() == records[0].messages[:3] and records[0].label == "fr"
    assert records[1].messages == [u("Hello"), a("Final Answer: en")]
    assert [(f["line"], f["reason"]) for f in foreign] == [
        (2, "no_reply"), (3, "no_input"), (4, "several_system_messages"), (5, "tool_use"),
        (6, "empty_input"), (8, "reply_not_after_user"), (9, "empty_turn")]


@pytest.mark.parametrize("message, error", [
    ({"role": "user", "content": [{"text": "no type"}]}, "field 'messages[1].content[0]': each content part needs a string 'type'"),
    ({"role": "user", "content": [{"type": "text"}]}, "field 'messages[1].content[0]': a 'text' part needs a string 'text'"),
    ({"role": "user", "content": 7}, "field 'messages[1]': each message needs string 'role' and 'content'"),
])
def test_malformed_parts_are_one_line_errors(tmp_path, message, error):
    logs = write_jsonl(tmp_path / "logs.jsonl", [{"messages": [{"role": "system", "content": SYSTEM}, message,
                                                               {"role": "assistant", "content": "Final Answer: en"}]}])
    with pytest.raises(PromptDistillError) as err:
        import_chats(make_task(system_prompt=SYSTEM), logs, tmp_path / "out.jsonl")
    assert "logs.jsonl:1" in str(err.value) and error in str(err.value) and "\n" not in str(err.value)
