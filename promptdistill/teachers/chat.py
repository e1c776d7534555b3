"""The teacher behind any chat API (`teacher_backend = "chat"`).

A hosted model, or Ollama, llama.cpp's server, LM Studio, vLLM or SGLang on
some machine: the conversation (the task's system prompt and the input) goes
as messages to `POST {teacher_url}/chat/completions` through the official
`openai` client (the `chat` extra), whose retries (429, 5xx, timeouts,
`Retry-After`), timeouts and pooled connections are used as they are.
`models.teacher` is the name the server knows; **no tokenizer is loaded
here**: the server applies its own chat template, and records hold the text
it answers, parsed by the task's answer pattern as every backend's are.

What a chat API cannot give, this backend does without, and says so:

- the reply prefix cannot be prefilled: a reply that does not start with
  `task.reply_prefix` gets it prepended before parsing (the system prompt
  asks for the format; the prefix is what the parser reads after);
- `task.top_logprobs` records need token ids, which chat APIs do not return:
  none are recorded (config.py refuses the kd loss, which needs them);
- choose mode asks for `top_logprobs` and reads the label distribution from
  the alternatives of the **first answer token after the reply prefix**: a
  label whose first token is shared with another's is split between them,
  so with multi-token labels it is an approximation of what the token-level
  backends compute. A server that returns no `top_logprobs` is refused at
  the first input with one line (use `answer_mode = "generate"`, or
  `samples` for a vote);
- synthesis continues raw token-id prompts, which a chat API cannot
  (config.py refuses `synthesize` with this backend).

Every request's usage (prompt, completion and cached prompt tokens where
reported) goes into the record's `meta.teacher_usage`; labeling sums it and
prices it (`models.teacher_price_in/out`). `models.teacher_rpm` and
`teacher_tpm` pace the requests beside `teacher_concurrency`. Replies of the
wrong shape (not JSON, no choices, no text) are retried, then one error names
the input id and the URL, never the key (api_access.py has the key rules).
Requests run on ordered_map's daemon threads, so Ctrl-C stops at once and
the records are yielded in input order: labels files stay resumable.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator

from ..api_access import redact
from ..errors import PromptDistillError
from ..reasoning import with_reasoning
from ..records import Example, LabeledExample
from ..task import Task
from .records import api_seed, choose_record, make_record, normalize_scores, vote
from .server import MAX_REPLY_BYTES, HttpTeacher, ordered_map

# How many alternatives choose mode asks for at each token (OpenAI's maximum is 20).
TOP_ALTERNATIVES = 20


class ChatTeacher(HttpTeacher):
    """A teacher model behind a chat-completions API: messages in, text out."""

    backend = "chat"

    def __init__(self, url: str, model: str, *, concurrency: int = 8, max_retries: int = 6, timeout: float = 300.0,
                 rpm: int = 0, tpm: int = 0, models=None, log=None, backoff: float = 1.0):
        super().__init__(url, model, concurrency=concurrency, max_retries=max_retries, timeout=timeout, backoff=backoff,
                         models=models, log=log)
        self._announced = threading.Lock()
        self._spent_lock = threading.Lock()
        self._announce = bool(self.api_key)
        self._pace = Pacer(rpm, tpm)
        self._client = None
        self.prices = (getattr(models, "teacher_price_in", 0.0), getattr(models, "teacher_price_out", 0.0))
        self.spent = Usage()  # every request this teacher sent (the evaluation's cost section)

    @classmethod
    def from_models(cls, models) -> ChatTeacher:
        return cls(models.teacher_url, models.teacher, concurrency=models.teacher_concurrency, max_retries=models.teacher_max_retries,
                   timeout=models.teacher_timeout, rpm=models.teacher_rpm, tpm=models.teacher_tpm, models=models)

    def meta(self) -> dict:
        return {**super().meta(), "teacher_url": self.url}

    @property
    def tokenizer(self):
        raise PromptDistillError("the chat teacher backend has no local tokenizer (the server applies its own chat template); "
                                 "this needs teacher_backend = \"transformers\", \"vllm\" or \"vllm-server\"",
                                 field="models.teacher_backend")

    @property
    def client(self):
        """The `openai` client for teacher_url: redirects not followed (the key must not go with them)."""
        if self._client is None:
            try:
                import openai
            except ImportError:
                raise PromptDistillError("the chat teacher backend needs the openai client: pip install 'promptdistill[chat]'",
                                         field="models.teacher_backend") from None
            http = openai.DefaultHttpxClient(follow_redirects=False, event_hooks={"response": [_refuse_huge]})
            # The key is passed explicitly (a placeholder without one): the client would otherwise read $OPENAI_API_KEY.
            self._client = openai.OpenAI(base_url=self.url, api_key=self.api_key or "none", max_retries=self.max_retries,
                                         timeout=self.timeout, http_client=http)
        return self._client

    def label(self, examples: list[Example], task: Task, mode: str, seed: int, batch_size: int | None = None, *,
              reuse_prefix: bool = True) -> Iterator[LabeledExample]:
        """Up to `concurrency` requests in flight, records in input order."""
        if not examples:
            return
        answer = self._chooser(task) if mode == "choose" else self._generator(task, seed)
        yield from ordered_map(answer, examples, self.concurrency)

    # -- generate mode ----------------------------------------------------

    def _generator(self, task: Task, seed: int):
        c = task.config

        def answer(e: Example) -> LabeledExample:
            replies, truncated, usage = [], [], Usage()
            for n in range(c.samples):
                text, _, cut = self._chat(e, task, usage, temperature=c.temperature, seed=api_seed(seed, e.id, n))
                replies.append(with_prefix(text, c.reply_prefix))
                truncated.append(cut)
            return usage.attach(vote(task, e, replies, truncated=truncated))

        return answer

    # -- choose mode ------------------------------------------------------

    def _chooser(self, task: Task):
        c = task.config
        # What every label's reply starts with ("Final Answer: "): the answer token comes after it.
        opening = task.label_reply("\0").split("\0")[0] if not task.json_reply else ""
        rests = {label: _after_prefix(task.label_reply(label), opening).strip() for label in task.labels}

        def answer(e: Example) -> LabeledExample:
            usage = Usage()
            text, tokens, _ = self._chat(e, task, usage, temperature=0.0, seed=api_seed(0, e.id, 0), top_logprobs=TOP_ALTERNATIVES)
            if tokens is None:
                raise PromptDistillError(f"the chat API at {self.url} returned no top_logprobs, which answer_mode = \"choose\" needs; "
                                         "use answer_mode = \"generate\" (or samples > 1 for a vote)", field="task.answer_mode")
            alternatives = answer_alternatives(tokens, opening)
            logps = [_label_logp(rest, alternatives) for rest in rests.values()]
            if alternatives is None or all(lp == float("-inf") for lp in logps):  # no label among them: the reply as given
                return usage.attach(make_record(task, e, with_prefix(text, c.reply_prefix)))
            return usage.attach(choose_record(task, e, normalize_scores(task, logps)))

        return answer

    # -- HTTP ---------------------------------------------------------------

    def _chat(self, e: Example, task: Task, usage: Usage, *, temperature: float, seed: int,
              top_logprobs: int = 0) -> tuple[str, list | None, bool]:
        """One chat completion: its text, (with `top_logprobs`) its tokens' alternatives, and whether the API cut
        it at max_tokens (finish_reason "length"); usage added to `usage`. A conversation input goes as its
        turns, after the system prompt."""
        import openai

        kwargs = dict(model=self.name, messages=task.teacher_messages(e.conversation()), max_tokens=task.teacher_max_new_tokens,
                      temperature=temperature, seed=seed)
        if top_logprobs:
            kwargs.update(logprobs=True, top_logprobs=top_logprobs)
        last = ""
        for attempt in range(self.max_retries + 1):
            self._pace.wait()
            self._say_where_the_key_goes()
            try:
                reply = self.client.chat.completions.create(**kwargs)
                text, tokens, used = _read_reply(reply)
                cut = getattr(reply.choices[0], "finish_reason", None) == "length"
            except openai.APIStatusError as err:
                status = err.status_code
                if 300 <= status < 400:
                    raise PromptDistillError(f"the chat API at {self.url} redirected the request for input {e.id!r}; redirects are "
                                             "not followed (the key would go with them): set models.teacher_url to the final URL") from None
                raise PromptDistillError(f"the chat API at {self.url} failed for input {e.id!r}: HTTP {status}: "
                                         f"{redact(_message(err), self.api_key)}; rerun the same command to continue from what was saved") from None
            except openai.APIConnectionError as err:  # the client's own retries are spent (timeouts included)
                raise PromptDistillError(f"the chat API at {self.url} failed for input {e.id!r} after {self.max_retries + 1} attempts "
                                         f"({type(err).__name__}: {redact(str(err), self.api_key)}); rerun the same command to continue "
                                         "from what was saved") from None
            except (MalformedChatReply, openai.APIResponseValidationError, ValueError, TypeError, AttributeError) as err:
                last = f"{type(err).__name__}: {redact(str(err), self.api_key)[:200]}"
                if attempt < self.max_retries:
                    time.sleep(min(30.0, self.backoff * 2 ** attempt))
                continue
            usage.add(used)
            with self._spent_lock:
                self.spent.add(used)
            self._pace.used(used.get("prompt_tokens", 0) + used.get("completion_tokens", 0))
            return text, tokens, cut
        raise PromptDistillError(f"the chat API at {self.url} sent malformed replies for input {e.id!r} "
                                 f"{self.max_retries + 1} times (last: {last}); rerun the same command to continue from what was saved")

    def api_cost(self) -> dict | None:
        """What the requests sent so far used and cost, per request, beside the student's
        API cost (none: it runs locally); None before any request."""
        totals = dict(self.spent.totals)
        n = totals.get("requests", 0)
        if not n:
            return None
        cost = (totals.get("prompt_tokens", 0) * self.prices[0] + totals.get("completion_tokens", 0) * self.prices[1]) / 1e6
        priced = any(self.prices)
        return {"teacher_usage": totals, "teacher_prompt_tokens_per_request": totals.get("prompt_tokens", 0) / n,
                "teacher_cost": cost if priced else None, "teacher_cost_per_request": cost / n if priced else None,
                "student_api_cost_per_request": 0.0}

    def _say_where_the_key_goes(self) -> None:
        if self._announce and self._announced.acquire(blocking=False):
            self._log(f"[promptdistill] sending the API key to {self.url}")


class MalformedChatReply(ValueError):
    """A reply without the shape the chat API promises (retried)."""


def _refuse_huge(response) -> None:
    length = response.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_REPLY_BYTES:
        response.close()
        raise MalformedChatReply(f"reply larger than {MAX_REPLY_BYTES} bytes")


def _read_reply(reply) -> tuple[str, list | None, dict]:
    """Text, per-token alternatives (None when not returned) and usage of a chat completion, shape checked."""
    if isinstance(reply, (str, bytes)) or not getattr(reply, "choices", None):
        raise MalformedChatReply("no choices in the reply")
    choice = reply.choices[0]
    message = getattr(choice, "message", None)
    text = getattr(message, "content", None)
    # A reasoning model's thinking comes in its own field (vLLM, DeepSeek, ...): kept in the
    # reply as a <think> block, which parsing drops (reasoning.py); cut by the limit, no answer.
    reasoning = getattr(message, "reasoning_content", None)
    if isinstance(reasoning, str) and reasoning:
        text = with_reasoning(text if isinstance(text, str) else "", reasoning)
    if not isinstance(text, str):
        raise MalformedChatReply("the reply's first choice has no text")
    tokens = None
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if content:
        tokens = [(t.token, [(a.token, a.logprob) for a in (t.top_logprobs or [])]) for t in content]
    u = getattr(reply, "usage", None)
    used = {}
    if u is not None:
        used = {"prompt_tokens": int(u.prompt_tokens or 0), "completion_tokens": int(u.completion_tokens or 0)}
        cached = getattr(getattr(u, "prompt_tokens_details", None), "cached_tokens", None)
        if cached is not None:
            used["cached_tokens"] = int(cached)
    return text, tokens, used


def _message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"][:500]
    return str(getattr(err, "message", err))[:500]


def with_prefix(text: str, prefix: str) -> str:
    """The reply as the parser expects it: the API's text, after the reply prefix unless it repeats it."""
    if not prefix or text.lstrip().startswith(prefix.strip()):
        return text
    return prefix + text


def _after_prefix(reply: str, prefix: str) -> str:
    return reply[len(prefix):] if prefix and reply.startswith(prefix) else reply


def answer_alternatives(tokens: list, prefix: str) -> list[tuple[str, float]] | None:
    """The alternatives of the first non-blank token after `prefix` (what every label's
    reply starts with; from the reply's start when the model did not write it), or None."""
    text, start = "", 0
    offsets = []
    for token, alternatives in tokens:
        offsets.append((len(text), token, alternatives))
        text += token
    mark = prefix.strip()
    found = text.find(mark) if mark else 0
    start = found + len(mark) if found >= 0 else 0
    for offset, token, alternatives in offsets:
        if offset >= start and token.strip():
            return alternatives
    return None


def _label_logp(rest: str, alternatives) -> float:
    """A label's log-probability at the answer token: the most likely alternative its text starts with."""
    best = float("-inf")
    for token, logp in alternatives or ():
        piece = token.strip()
        if piece and rest.startswith(piece):
            best = max(best, logp)
    return best


class Usage:
    """Token usage summed over an input's requests, attached to its record's meta."""

    def __init__(self):
        self.totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def add(self, used: dict) -> None:
        self.totals["requests"] += 1
        for k, v in used.items():
            self.totals[k] = self.totals.get(k, 0) + v

    def attach(self, record: LabeledExample) -> LabeledExample:
        record.meta = {**(record.meta or {}), "teacher_usage": dict(self.totals)}
        return record


class Pacer:
    """Requests-per-minute and tokens-per-minute limits over a sliding minute, shared by the worker threads."""

    def __init__(self, rpm: int = 0, tpm: int = 0):
        self.rpm, self.tpm = rpm, tpm
        self.starts: deque = deque()
        self.tokens: deque = deque()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not (self.rpm or self.tpm):
            return
        while True:
            with self.lock:
                now = time.monotonic()
                while self.starts and now - self.starts[0] >= 60:
                    self.starts.popleft()
                while self.tokens and now - self.tokens[0][0] >= 60:
                    self.tokens.popleft()
                waits = []
                if self.rpm and len(self.starts) >= self.rpm:
                    waits.append(60 - (now - self.starts[0]))
                if self.tpm and sum(n for _, n in self.tokens) >= self.tpm:
                    waits.append(60 - (now - self.tokens[0][0]))
                if not waits:
                    self.starts.append(now)
                    return
            time.sleep(max(0.01, min(waits)))

    def used(self, n: int) -> None:
        if self.tpm:
            with self.lock:
                self.tokens.append((time.monotonic(), n))
