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
- a stored completion / logging-proxy layout: the request's messages under
  `messages` or `request.messages`, and the reply under
  `choices[0].message` or `response.choices[0].message`.

Every record's prompt must be the task's prompt, exactly (surrounding
whitespace aside): a log usually mixes several prompts and prompt versions,
and training one student on answers to another prompt would distil a
mixture. Records with another prompt, or another shape of conversation
(several turns, no reply), are counted by reason and written aside to
`<out>.foreign.jsonl` with their line numbers, never mixed in. Lines that
are not JSON objects with messages stop the import with file and line, as
every reader here does.
"""

from __future__ import annotations

from pathlib import Path

from .errors import PromptDistillError
from .io import DirectoryLock, atomic_write_json, atomic_write_jsonl, check_file
from .labeling import check_label_outputs
from .records import Example, _read_utf8, iter_jsonl
from .task import OK, Task
from .teachers.records import make_record

__all__ = ["import_chats", "parse_chat"]


def _messages(obj: dict, path, line: int) -> list[dict]:
    """The conversation of one log record: request messages plus the reply, if separate."""
    request = obj.get("request") if isinstance(obj.get("request"), dict) else obj
    messages = request.get("messages")
    if messages is None:
        raise PromptDistillError("no conversation: expected 'messages' (or 'request.messages')", path=path, line=line,
                                 field="messages")
    if not isinstance(messages, list):
        raise PromptDistillError(f"expected a list, got {type(messages).__name__}", path=path, line=line, field="messages")
    response = obj.get("response") if isinstance(obj.get("response"), dict) else obj
    choices = response.get("choices")
    messages = list(messages)
    if isinstance(choices, list) and choices and isinstance(choices[0], dict) and isinstance(choices[0].get("message"), dict):
        messages.append(choices[0]["message"])
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise PromptDistillError("each message needs string 'role' and 'content'", path=path, line=line, field=f"messages[{i}]")
    return messages


def parse_chat(task: Task, messages: list[dict]) -> tuple[str | None, str | None, str]:
    """(input text, teacher reply, "") for a single exchange under the task's prompt,
    else (None, None, why it is set aside)."""
    roles = [m["role"] for m in messages]
    c = task.config
    if c.system_prompt is not None:
        if roles != ["system", "user", "assistant"]:
            return None, None, "not_single_exchange"
        if messages[0]["content"].strip() != c.system_prompt.strip():
            return None, None, "other_prompt"
        return messages[1]["content"].strip(), messages[2]["content"], ""
    if roles != ["user", "assistant"]:
        return None, None, "not_single_exchange"
    # The prompt is around the input in the user turn: the text is what sits where {text} does.
    before, _, after = c.user_template.partition("{text}")
    content = messages[0]["content"]
    if not (content.startswith(before) and content.endswith(after)) or len(content) < len(before) + len(after):
        # Whitespace at the template's ends is often trimmed by whoever logged it.
        if not (content.strip().startswith(before.strip()) and content.strip().endswith(after.strip())):
            return None, None, "other_prompt"
        content, before, after = content.strip(), before.strip(), after.strip()
        if len(content) < len(before) + len(after):
            return None, None, "other_prompt"
    text = content[len(before): len(content) - len(after)].strip()
    return text, messages[1]["content"], ""


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
    text = _read_utf8(logs_path)
    for n, obj in iter_jsonl(logs_path, text):
        messages = _messages(obj, logs_path, n)
        text_in, reply, why = parse_chat(task, messages)
        if why == "" and not text_in:
            why = "empty_input"
        if why:
            set_aside[why] = set_aside.get(why, 0) + 1
            aside.append({"line": n, "reason": why, "record": obj})
            continue
        ident = obj.get("id")
        ident = str(ident) if isinstance(ident, (str, int)) and not isinstance(ident, bool) else f"chat-{n}"
        if ident in seen:  # logs repeat ids (retries); the line number keeps records apart
            ident = f"{ident}@{n}"
        seen.add(ident)
        meta = {"source": {"strategy": "import-chats", "file": str(logs_path), "line": n,
                           **({"model": obj["model"]} if isinstance(obj.get("model"), str) else {})}}
        record = make_record(task, Example(id=ident, text=text_in, meta=meta, line=n), reply)
        (good if record.status == OK else bad).append(record.to_json())
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
