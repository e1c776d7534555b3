"""The task: what the teacher sees, how its answer is read, what the student learns.

A task is pure text logic, independent of any model:

- `teacher_messages(x)`: the conversation the teacher answers, with the long
  prompt either as a system message or as a user template around the input
  (`x` is a text or a conversation: a list of user/assistant turns ending in
  the user turn to answer; a template wraps that last turn).
- `student_messages(x)`: the same input without the prompt.
- `parse_answer(reply)`: the label read from a reply with the task's regex
  (or, for `reply_format = "json"`, the canonical JSON object; see
  jsonreply.py), plus a status saying why there is none. A reasoning
  teacher's thinking is cut off first (reasoning.py), and the *last* match of
  the regex counts: a reply that restates its answer, or corrects itself,
  means what it says at the end. For `reply_format = "text"` the whole
  reply is the answer: any non-empty reply is "ok" (the backend marks one
  cut at the reply limit "truncated").
- `target_reply(...)`: what the student is trained to say, never the
  teacher's reasoning.

The input is substituted into the template literally (no `str.format`), so a
text containing braces or `{text}` stays data and cannot change the prompt.
"""

from __future__ import annotations

import re

from .config import TaskConfig, task_settings
from .io import fingerprint
from .jsonreply import parse_json_reply
from .reasoning import strip_reasoning

# Parse statuses stored on every labeled record.
OK = "ok"
NO_MATCH = "no_match"
NOT_IN_LABEL_SET = "not_in_label_set"
LOW_CONFIDENCE = "low_confidence"
# A text reply cut off at the reply limit (task.truncated_replies decides whether it is trained).
TRUNCATED = "truncated"
# A text reply with nothing in it (after the reasoning is cut off).
EMPTY_REPLY = "empty_reply"
# How an answer that gave no label is shown (confusion tables, predictions).
UNPARSED = "??"


class Task:
    """A task file's [task] table as behaviour: the teacher's and the student's
    conversations for an input, reading the answer, and the student's target."""

    def __init__(self, config: TaskConfig):
        self.config = config
        self.pattern = re.compile(config.answer_pattern)
        self.labels = list(config.labels)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def closed(self) -> bool:
        """True when answers must come from a fixed label set."""
        return bool(self.labels)

    def teacher_messages(self, x: str | list[dict]) -> list[dict]:
        """The system prompt plus the conversation (or, with a user template, the
        conversation with its last user turn wrapped in the template)."""
        turns = self.student_messages(x)
        c = self.config
        if c.user_template is not None:
            return turns[:-1] + [{"role": "user", "content": c.user_template.replace("{text}", turns[-1]["content"])}]
        return [{"role": "system", "content": c.system_prompt}] + turns

    def student_messages(self, x: str | list[dict]) -> list[dict]:
        """The conversation alone: a text as one user turn, a conversation as given."""
        if isinstance(x, str):
            return [{"role": "user", "content": x}]
        return [{"role": m["role"], "content": m["content"]} for m in x]

    @property
    def json_reply(self) -> bool:
        """True when the answer is a JSON object with fixed fields rather than a label."""
        return self.config.reply_format == "json"

    @property
    def text_reply(self) -> bool:
        """True when the whole reply is the answer (no label, no fields)."""
        return self.config.reply_format == "text"

    def keeps_truncated(self) -> bool:
        """Whether a text reply cut at the reply limit is still trained (task.truncated_replies)."""
        return self.config.truncated_replies == "keep"

    def parse_answer(self, reply: str) -> tuple[str | None, str]:
        """Return (label, status); label is None unless status is OK. Read from the
        reply without its reasoning, at the last match of the answer pattern."""
        reply = strip_reasoning(reply)
        if self.text_reply:
            reply = reply.strip()
            return (reply, OK) if reply else (None, EMPTY_REPLY)
        if self.json_reply:
            return parse_json_reply(reply, self.config.json_fields)
        m = None
        for m in self.pattern.finditer(reply):
            pass
        if m is None:
            return None, NO_MATCH
        label = m.group(1)
        if self.closed and label not in self.labels:
            return None, NOT_IN_LABEL_SET
        return label, OK

    def label_reply(self, label: str) -> str:
        """The reply that states `label`, as written in the answer template
        (a JSON task's label is its canonical JSON reply already)."""
        if self.json_reply:
            return label
        return self.config.answer_template.replace("{label}", label)

    def target_reply(self, teacher_reply: str, label: str) -> str:
        """What the student is trained to answer for this teacher output: the
        reply as the task writes `label`, or the teacher's own reply without
        its reasoning (the student answers directly; see reasoning.py), which
        is always the target of a text task."""
        if self.config.student_target == "teacher_reply" or self.text_reply:
            return strip_reasoning(teacher_reply).strip()
        return self.label_reply(label)

    @property
    def teacher_max_new_tokens(self) -> int:
        """The teacher's reply limit: `task.teacher_max_new_tokens`, else the
        student's `max_new_tokens` (a reasoning teacher needs room to think
        that the student, trained on the answer alone, does not)."""
        c = self.config
        return c.teacher_max_new_tokens if c.teacher_max_new_tokens is not None else c.max_new_tokens

    def fingerprint(self) -> str:
        """Short hash of everything that changes the teacher's labels."""
        return fingerprint(task_settings(self.config), ensure_ascii=False)
