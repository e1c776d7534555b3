"""A student served behind an OpenAI-compatible chat API (`eval --student URL --student-model NAME`).

A student fine-tuned and hosted elsewhere (vLLM, Ollama, llama.cpp's server,
LM Studio, a hosted fine-tune) is evaluated like a local one: the teacher
with the prompt, the base (the task's models.student, here) and the student
without it. The student's requests go through the chat backend's HTTP code
(teachers/chat.py: the openai client, retries, deadlines, body caps, usage),
with the conversation as `task.student_messages` gives it: no system
prompt. The server applies its own chat template.

What a chat API cannot give, the report says it does not have, with a reason
(`UNAVAILABLE`), never a number made up: the KL from the teacher and from
the base (they need the student's distribution over the vocabulary at every
reply token; a chat API returns at most the top alternatives of the tokens it
generated). General ability is scored on generated replies, so the student
answers its prompts through the API; its KL from the base is the part left out.

The key rules are api_access.py's, with one more: the key comes only from the
variable the user names for the student (`--student-api-key-env`), never from
$PROMPTDISTILL_API_KEY or the teacher's variable, so the teacher's key is never
sent to the student's server.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.parse
from collections.abc import Iterator

from ..api_access import check_key_transport, check_url, redact
from ..errors import PromptDistillError
from ..records import Example
from ..task import Task
from ..teachers.chat import ChatTeacher

UNAVAILABLE = ("not available for a student behind an API: it needs the student's distribution over the vocabulary "
               "at every reply token, which a chat API does not return")


def is_url(student) -> bool:
    """Whether `eval --student` names a served model (an http(s):// URL) rather than a local or hub model."""
    return isinstance(student, str) and student.lower().startswith(("http://", "https://"))


class StudentChat(ChatTeacher):
    """The chat backend, its messages naming the student's flag rather than the teacher's URL setting."""

    url_field = "--student"

    def served_models(self) -> list[str]:
        """The names the server lists (GET /models), through the same client, key and limits."""
        self._say_where_the_key_goes()
        return [m.id for m in self.client.models.list()]


class ApiStudent:
    """The student row's system when it is served behind a chat API: conversations in, replies out."""

    def __init__(self, url: str, model: str, *, key_variable: str | None = None, concurrency: int = 8,
                 max_retries: int = 6, timeout: float = 300.0):
        self.chat = StudentChat(url, model, concurrency=concurrency, max_retries=max_retries, timeout=timeout,
                                key_variables=(key_variable,) if key_variable else ())
        self.url, self.name = self.chat.url, model

    @classmethod
    def checked(cls, student: str, model: str | None, key_variable: str | None, models) -> ApiStudent:
        """The URL, the model name and the key's variable checked as `eval --student` takes them,
        before anything is written: one error naming the flag. Nothing is sent yet."""
        check_url(student, field="--student")
        if importlib.util.find_spec("openai") is None:
            raise PromptDistillError("a student behind a URL is reached with the openai client: pip install 'promptdistill[chat]'",
                                     field="--student")
        if not model or not isinstance(model, str) or not model.strip():
            raise PromptDistillError("a student behind a URL needs the model name its server serves: pass --student-model NAME "
                                     "(a server may serve several)", field="--student-model")
        if key_variable is not None and not os.environ.get(key_variable):
            raise PromptDistillError(f"the variable ${key_variable} named for the student's API key is not set (or empty)",
                                     field="--student-api-key-env")
        key = os.environ.get(key_variable) if key_variable else None
        check_key_transport(student.rstrip("/"), key, False, field="--student")
        return cls(student, model.strip(), key_variable=key_variable, concurrency=models.teacher_concurrency,
                   max_retries=models.teacher_max_retries, timeout=models.teacher_timeout)

    def check_served(self) -> None:
        """The last check before anything is written: the server answers, and serves `name`
        where it lists its models (GET /models: vLLM, Ollama, llama.cpp's server, LM Studio
        and OpenAI do). A server without the list is not refused: its first answer tells."""
        import openai

        try:
            served = self.chat.served_models()
        except openai.APIStatusError as err:
            if err.status_code in (404, 405, 501):
                return
            raise PromptDistillError(f"the student's API at {self.shown_url} refused to list its models: HTTP {err.status_code} "
                                     f"({redact(str(getattr(err, 'message', err)), self.chat.api_key)[:200]})", field="--student") from None
        except openai.APIConnectionError as err:
            raise PromptDistillError(f"cannot reach the student's API at {self.shown_url} ({type(err).__name__}); is its server "
                                     "running?", field="--student") from None
        except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError):
            return  # a list of another shape: not a refusal
        if served and self.name not in served:
            shown = ", ".join(map(repr, served[:5])) + (", ..." if len(served) > 5 else "")
            raise PromptDistillError(f"the student's API at {self.shown_url} does not serve {self.name!r} (it lists {shown})",
                                     field="--student-model")

    def identity(self) -> dict:
        """What the student's answers depend on, for resuming: its URL and model name, never the key."""
        return {"student_api": {"url": self.url, "model": self.name}}

    @property
    def shown_url(self) -> str:
        """The URL as reports show it: without its query."""
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))

    def describe(self) -> dict:
        """report.json's `student_api`: where the student was reached, and the usage its server reported
        for the requests this evaluation sent (a resumed one: since it resumed)."""
        return {"url": self.shown_url, "model": self.name, "usage": dict(self.chat.spent.totals)}

    def answer(self, task: Task, examples: list[Example]) -> Iterator[tuple[str, int]]:
        """(reply, prompt tokens the API counted) per example, in order, each as it arrives: the
        student's conversation sent without the system prompt, up to task.max_new_tokens."""
        requests = [(f"input {e.id!r}", task.student_messages(e.conversation())) for e in examples]
        for text, usage in self.chat.converse(requests, max_new_tokens=task.config.max_new_tokens, temperature=task.config.temperature):
            yield text, usage.get("prompt_tokens", 0)

    def answer_prompts(self, prompts: list[tuple[str, str]], max_new_tokens: int) -> list[str]:
        """Greedy replies to (id, prompt) single user turns (the general-ability check)."""
        requests = [(f"general check {id!r}", [{"role": "user", "content": prompt}]) for id, prompt in prompts]
        return [text for text, _ in self.chat.converse(requests, max_new_tokens=max_new_tokens, temperature=0.0)]
