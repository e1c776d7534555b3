"""Production chat logs become labeled records: the teacher has already answered.

Many users already run the long prompt in production, so the teacher's
answers exist in their logs. Re-running the teacher on those inputs would
pay again for answers that are on disk (and, with sampling, might not even
reproduce them). `import_chats` reads the logs and writes the same labeled
records `label` writes, so `train` and `eval` use them as if the teacher had
been run: the record is built by teachers/records.py's `make_record`, the
one place that decides status, label and the student's conversation.

Accepted layouts, one JSON object per line:

- the OpenAI fine-tuning layout `{"messages": [system, user, assistant]}`,
  or `[user, assistant]` with the prompt inside the user turn for tasks
  with `user_template`;
- a logging-proxy layout: the request's messages under `messages`,
  `request.messages`, `input` or `request.input`, and the reply under
  `choices[0].message` or `response.choices[0].message`;
- OpenAI's stored completions (chat completions created with `store=true`),
  exported one per line: the `ChatCompletion` object that
  `GET /v1/chat/completions/{completion_id}` returns (`id`, `model`,
  `choices[].message`, `metadata`, ...) with the request's messages from
  `GET /v1/chat/completions/{completion_id}/messages` beside it under
  `messages` or `input`. Those stored messages
  (`ChatCompletionStoreMessage`: `id`, `role`, `content`, `content_parts`)
  may carry `content: null` and the text in `content_parts`, read the same
  as a list `content` (OpenAI API reference, "Chat Completions": "Get chat
  messages" and "Get chat completion");
- Anthropic's Messages API layout: the system prompt beside the messages
  (`{"system": "...", "messages": [...]}`, `system` a string or a list of
  text blocks), the reply as the last message or as the API response under
  `response` (`{"role": "assistant", "content": [blocks]}`).

A message's `content` is a string or a list of parts: OpenAI's
`{"type": "text", "text": ...}` (also `input_text` / `output_text`) and
Anthropic's text blocks are joined with newlines (as vLLM's chat server
renders text-only parts); a reply's reasoning (a `thinking` block, or a
`reasoning_content` field beside `content`) is kept in the record's reply as
a `<think>` block, which parsing drops (reasoning.py). The `developer` role
(OpenAI's name for system instructions to reasoning models) counts as
`system`.

Every record's prompt must be the task's prompt, exactly (surrounding
whitespace aside): a log usually mixes several prompts and prompt versions,
and training one student on answers to another prompt would distil a
mixture. Records the student cannot learn from as one exchange are written
aside to `<out>.foreign.jsonl` with their line number, the reason and (where
it helps) a detail naming the message, and counted by reason, never mixed in:

- `other_prompt`: another system prompt or user template than the task's;
- `no_system_prompt`: the task has a system prompt and the log none;
- `no_reply` / `no_input`: the conversation ends without an assistant
  reply, or has no user turn;
- `reply_not_after_user`: the last reply does not answer a user turn (two
  assistant turns in a row at the end);
- `empty_turn`: an earlier turn of a multi-turn conversation is empty;
- `several_system_messages`: more than one system (or developer) message,
  or one after the conversation started;
- `tool_use`: tool or function messages, or a reply that calls a tool;
- `non_text_content`: an image, audio, file or other non-text part;
- `empty_input`: the input is empty once the prompt is taken off.

Lines that are not JSON objects with messages stop the import with file and
line, as every reader here does.
"""

from __future__ import annotations

from pathlib import Path

from .errors import PromptDistillError
from .io import DirectoryLock, atomic_write_json, atomic_write_jsonl, check_file
from .labeling import check_label_outputs
from .reasoning import with_reasoning
from .records import Example, iter_jsonl
from .task import Task
from .teachers.records import make_record

__all__ = ["import_chats", "parse_chat"]


# Part types that hold text: OpenAI chat (`text`), OpenAI Responses (`input_text`,
# `output_text`), Anthropic (`text`).
TEXT_PARTS = ("text", "input_text", "output_text")
# Anthropic's reasoning blocks in a reply (`redacted_thinking` holds no readable text).
THINKING_PARTS = {"thinking": "thinking", "redacted_thinking": None}
CONVERSATION_ROLES = ("system", "user", "assistant")


class SetAside(Exception):
    """A log record that is well formed but not one exchange the student can learn."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _dict(value) -> dict | None:
    return value if isinstance(value, dict) else None


def _messages(obj: dict, path, line: int) -> list[dict]:
    """The conversation of one log record as [{"role", "content"}] with string
    content: request messages (with a separate system prompt first) plus the
    reply, if separate. Malformed records stop the import; unusable ones raise
    SetAside."""
    request = _dict(obj.get("request")) or obj
    messages = request.get("messages", request.get("input"))
    if messages is None:
        raise PromptDistillError("no conversation: expected 'messages' (or 'request.messages', 'input')", path=path,
                                 line=line, field="messages")
    if isinstance(messages, str):  # the Responses API's plain-text input
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list):
        raise PromptDistillError(f"expected a list, got {type(messages).__name__}", path=path, line=line, field="messages")
    named = [(m, f"messages[{i}]") for i, m in enumerate(messages)]
    if request.get("system") is not None:
        named.insert(0, ({"role": "system", "content": request["system"]}, "system"))
    response = _dict(obj.get("response")) or obj
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict) and isinstance(choices[0].get("message"), dict):
        named.append((choices[0]["message"], "choices[0].message"))
    elif response is not obj and response.get("role") == "assistant" and "content" in response:  # Anthropic's reply
        named.append((response, "response"))
    return [_message(m, path, line, field) for m, field in named]


def _message(m, path, line: int, field: str) -> dict:
    if not (isinstance(m, dict) and isinstance(m.get("role"), str)):
        raise PromptDistillError("each message needs string 'role' and 'content'", path=path, line=line, field=field)
    role = "system" if m["role"] == "developer" else m["role"]
    if role not in CONVERSATION_ROLES or m.get("tool_calls") or m.get("function_call"):
        raise SetAside("tool_use", f"{field} is a {m['role']!r} message" if role not in CONVERSATION_ROLES
                       else f"{field} calls a tool")
    content = m.get("content")
    if content is None and isinstance(m.get("content_parts"), list):  # OpenAI's stored messages
        content = m["content_parts"]
    if not isinstance(content, (str, list)):
        raise PromptDistillError("each message needs string 'role' and 'content' (a string or a list of parts)", path=path,
                                 line=line, field=field)
    text, reasoning = _content_text(content, path, line, field)
    if role == "assistant":
        extra = m.get("reasoning_content")
        reasoning = "\n".join(r for r in (extra if isinstance(extra, str) else "", reasoning) if r)
        text = with_reasoning(text, reasoning)
    return {"role": role, "content": text}


def _content_text(content, path, line: int, field: str) -> tuple[str, str]:
    """(text, reasoning) of a message's content: a string, or a list of parts
    whose text parts are joined with newlines; any other part sets the record aside."""
    if isinstance(content, str):
        return content, ""
    texts, thoughts = [], []
    for j, part in enumerate(content):
        where = f"{field}.content[{j}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise PromptDistillError("each content part needs a string 'type'", path=path, line=line, field=where)
        if kind in TEXT_PARTS:
            if not isinstance(part.get("text"), str):
                raise PromptDistillError(f"a {kind!r} part needs a string 'text'", path=path, line=line, field=where)
            texts.append(part["text"])
        elif kind in THINKING_PARTS:
            key = THINKING_PARTS[kind]
            if key and isinstance(part.get(key), str):
                thoughts.append(part[key])
        else:
            reason = "tool_use" if kind in ("tool_use", "tool_result", "function_call") else "non_text_content"
            raise SetAside(reason, f"{where} is a {kind!r} part")
    return "\n".join(texts), "\n".join(thoughts)


def _shape(task: Task, roles: list[str]) -> str:
    """Why a conversation with these roles is not an input plus its reply under the
    task's prompt ("" if it is): at most one system message, first; user and
    assistant turns after it, ending in the reply to a user turn."""
    if not roles or roles[-1] != "assistant":
        return "no_reply"
    turns = [r for r in roles if r != "system"]
    if "user" not in turns:
        return "no_input"
    if turns[-2:] != ["user", "assistant"]:
        return "reply_not_after_user"
    if roles.count("system") > 1 or (roles.count("system") and roles[0] != "system"):
        return "several_system_messages"
    if task.config.system_prompt is not None and roles[0] != "system":
        return "no_system_prompt"
    if task.config.system_prompt is None and roles[0] == "system":
        return "other_prompt"  # the task's prompt sits in the user turn; this log has another setup
    return ""


def parse_chat(task: Task, messages: list[dict]) -> tuple[str | None, str | None, str, list[dict] | None]:
    """(input text, teacher reply, "", earlier turns) for an exchange under the task's
    prompt, else (None, None, why it is set aside, None). The input text is the last
    user turn (with a user template, what sits where {text} does in it); the
    earlier turns are the history before it ([] for a single exchange), which
    becomes the input's conversation. `messages` are role/content pairs with
    string content (what `_messages` makes of a log record)."""
    why = _shape(task, [m["role"] for m in messages])
    if why:
        return None, None, why, None
    c = task.config
    turns = [m for m in messages if m["role"] != "system"]
    history, content, reply = turns[:-2], turns[-2]["content"], turns[-1]["content"]
    if any(not m["content"].strip() for m in history):
        return None, None, "empty_turn", None
    if c.system_prompt is not None:
        if messages[0]["content"].strip() != c.system_prompt.strip():
            return None, None, "other_prompt", None
        return content.strip(), reply, "", history
    # The prompt is around the input in the last user turn: the text is what sits where {text} does.
    before, _, after = c.user_template.partition("{text}")
    if not (content.startswith(before) and content.endswith(after)) or len(content) < len(before) + len(after):
        # Whitespace at the template's ends is often trimmed by whoever logged it.
        if not (content.strip().startswith(before.strip()) and content.strip().endswith(after.strip())):
            return None, None, "other_prompt", None
        content, before, after = content.strip(), before.strip(), after.strip()
        if len(content) < len(before) + len(after):
            return None, None, "other_prompt", None
    return content[len(before): len(content) - len(after)].strip(), reply, "", history


def import_chats(task: Task, logs_path, out_path, rejects_path=None, *, source_model: str | None = None,
                 reads: dict | None = None) -> dict:
    """Read chat logs, keep the exchanges under `task`'s prompt, parse their replies with
    the task's rules and write labeled records (`out_path`), unparsable replies
    (`rejects_path`, default `<out>.rejects.jsonl`) and set-aside records
    (`<out>.foreign.jsonl`); return the counts. The logs are checked and the
    outputs claimed as `label` claims its own (`labeling.check_label_outputs`:
    apart from the logs and `reads`, outside any run, new or labeled records)
    before anything is written."""
    logs_path = check_file(logs_path, "chat log file")
    foreign_path = Path(out_path).with_name(Path(out_path).stem + ".foreign.jsonl")
    out_path, rejects_path = check_label_outputs(out_path, rejects_path, reads={"the chat logs": logs_path, **(reads or {})},
                                                 more_writes={"the set-aside records": foreign_path})
    with DirectoryLock(out_path.with_name(out_path.name + ".lock"), str(out_path)):
        return _import(task, logs_path, out_path, rejects_path, foreign_path, source_model)


def _import(task: Task, logs_path: Path, out_path: Path, rejects_path: Path, foreign_path: Path, source_model: str | None) -> dict:
    good, bad, aside = [], [], []
    set_aside: dict[str, int] = {}
    seen: set[str] = set()
    for n, obj in iter_jsonl(logs_path):
        detail = ""
        try:
            text_in, reply, why, history = parse_chat(task, _messages(obj, logs_path, n))
        except SetAside as e:
            why, detail = e.reason, e.detail
        if why == "" and not text_in:
            why = "empty_input"
        if why:
            set_aside[why] = set_aside.get(why, 0) + 1
            aside.append({"line": n, "reason": why, **({"detail": detail} if detail else {}), "record": obj})
            continue
        ident = obj.get("id")
        ident = str(ident) if isinstance(ident, (str, int)) and not isinstance(ident, bool) else f"chat-{n}"
        if ident in seen:  # logs repeat ids (retries); the line number keeps records apart
            ident = f"{ident}@{n}"
        seen.add(ident)
        model = next((d["model"] for d in (obj, _dict(obj.get("response")), _dict(obj.get("request")))
                      if d is not None and isinstance(d.get("model"), str)), None)
        meta = {"source": {"strategy": "import-chats", "file": str(logs_path), "line": n,
                           **({"model": model} if model else {})}}
        conversation = history + [{"role": "user", "content": text_in}] if history else None
        record = make_record(task, Example(id=ident, text=text_in, meta=meta, line=n, messages=conversation), reply)
        (good if record.trainable else bad).append(record.to_json())
    # The sidecar `label` writes, before any output: a later `label --out` on this file sees what made it,
    # and a rerun knows the three files as its own (it names the rejects and set-aside files).
    atomic_write_json(out_path.with_name(out_path.name + ".meta.json"), {
        "teacher": f"imported:{source_model or logs_path.name}", "task_fingerprint": task.fingerprint(),
        "answer_mode": "imported", "source": str(logs_path), "rejects": rejects_path.name, "foreign": foreign_path.name,
    })
    atomic_write_jsonl(out_path, good)
    atomic_write_jsonl(rejects_path, bad)
    atomic_write_jsonl(foreign_path, aside)
    by_status: dict[str, int] = {}
    for r in good + bad:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    return {"read": len(good) + len(bad) + len(aside), "labeled": len(good), "rejected": len(bad),
            "set_aside": sum(set_aside.values()), "set_aside_by_reason": set_aside, "by_status": by_status,
            "output": str(out_path), "rejects": str(rejects_path), "foreign": str(foreign_path)}
