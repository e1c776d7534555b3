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
- synthesis's generator conversations go as messages (`complete`), but
  its magpie strategy continues a raw template cut open inside the user
  turn, which a chat API cannot take: refused in one line naming
  `synthesize.strategies`.

Every request's usage (prompt, completion and cached prompt tokens where
reported) goes into the record's `meta.teacher_usage`; labeling sums it and
prices it (`models.teacher_price_in/out`). `models.teacher_rpm` and
`teacher_tpm` pace the requests beside `teacher_concurrency`. Replies of the
wrong shape (not JSON, no choices, no text, a body over MAX_REPLY_BYTES) are
retried, then one error names the input id and the URL, never the key
(api_access.py has the key rules). `teacher_timeout` is an overall deadline
per attempt, not only per socket operation (ReplyBounds).
Requests run on ordered_map's daemon threads, so Ctrl-C stops at once and
the records are yielded in input order: labels files stay resumable.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator

from ..api_access import redact
from ..config import MAGPIE_NEEDS_RAW_PROMPTS
from ..errors import PromptDistillError
from ..reasoning import strip_reasoning, with_reasoning
from ..records import Example, LabeledExample
from ..task import Task
from .base import Completion, CompletionRequest
from .records import api_seed, choose_record, make_record, normalize_scores, vote
from .server import MAX_REPLY_BYTES, HttpTeacher, Usage, ordered_map

# How many alternatives choose mode asks for at each token (OpenAI's maximum is 20).
TOP_ALTERNATIVES = 20


class ChatTeacher(HttpTeacher):
    """A teacher model behind a chat-completions API: messages in, text out."""

    backend = "chat"

    def __init__(self, url: str, model: str, *, concurrency: int = 8, max_retries: int = 6, timeout: float = 300.0,
                 rpm: int = 0, tpm: int = 0, models=None, log=None, backoff: float = 1.0,
                 key_variables: tuple[str, ...] | None = None):
        super().__init__(url, model, concurrency=concurrency, max_retries=max_retries, timeout=timeout, backoff=backoff,
                         models=models, log=log, key_variables=key_variables)
        self._announced = threading.Lock()
        self._announce = bool(self.api_key)
        self._pace = Pacer(rpm, tpm)
        self._client = None

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
            bounds = ReplyBounds(self.timeout, MAX_REPLY_BYTES, _httpx_of(openai))
            http = openai.DefaultHttpxClient(follow_redirects=False, event_hooks={"request": [bounds.start], "response": [bounds.wrap]})
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
            replies, truncated, usage = [], [], Usage(always=True)
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
            usage = Usage(always=True)
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

    # -- synthesis ----------------------------------------------------------

    def complete(self, requests: list[CompletionRequest], batch_size: int | None = None) -> Iterator[Completion]:
        """The generator conversation of each request as messages, up to `concurrency` in
        flight, answers (text) in request order; a raw token-id prompt (Magpie) is refused."""
        if any(r.messages is None for r in requests):
            raise PromptDistillError(MAGPIE_NEEDS_RAW_PROMPTS.format(backend=self.backend), field="synthesize.strategies")

        def answer(r: CompletionRequest) -> Completion:
            kwargs = dict(model=self.name, messages=r.messages, max_tokens=r.max_new_tokens, temperature=r.temperature,
                          seed=r.seed % 2**31)
            text, _, finish = self._create(kwargs, "a synthesis request", Usage())
            # A reasoning generator's thinking is not part of the input it writes.
            return Completion([], finish == "stop", text=strip_reasoning(text))

        yield from ordered_map(answer, requests, self.concurrency)

    # -- conversations as they are -------------------------------------------

    def converse(self, requests: list[tuple[str, list[dict]]], *, max_new_tokens: int, temperature: float,
                 seed: int = 0) -> Iterator[tuple[str, dict]]:
        """(reply, usage) for each (what, messages), the messages sent as given (no system prompt
        added: a student behind an API answers without it), up to `concurrency` in flight, in order;
        `what` names the request in errors."""
        def answer(request: tuple[str, list[dict]]) -> tuple[str, dict]:
            what, messages = request
            usage = Usage(always=True)
            kwargs = dict(model=self.name, messages=messages, max_tokens=max_new_tokens, temperature=temperature, seed=seed)
            text, _, _ = self._create(kwargs, what, usage)
            return text, dict(usage.totals)

        yield from ordered_map(answer, requests, self.concurrency)

    # -- HTTP ---------------------------------------------------------------

    def _chat(self, e: Example, task: Task, usage: Usage, *, temperature: float, seed: int,
              top_logprobs: int = 0) -> tuple[str, list | None, bool]:
        """One chat completion: its text, (with `top_logprobs`) its tokens' alternatives, and whether the API cut
        it at max_tokens (finish_reason "length"); usage added to `usage`. A conversation input goes as its
        turns, after the system prompt."""
        kwargs = dict(model=self.name, messages=task.teacher_messages(e.conversation()), max_tokens=task.teacher_max_new_tokens,
                      temperature=temperature, seed=seed)
        if top_logprobs:
            kwargs.update(logprobs=True, top_logprobs=top_logprobs)
        text, tokens, finish = self._create(kwargs, f"input {e.id!r}", usage)
        return text, tokens, finish == "length"

    def _create(self, kwargs: dict, what: str, usage: Usage) -> tuple[str, list | None, str | None]:
        """One chat completion with retries: text, per-token alternatives, finish reason; usage added to `usage`."""
        import openai

        last = ""
        for attempt in range(self.max_retries + 1):
            self._pace.wait()
            self._say_where_the_key_goes()
            try:
                reply = self.client.chat.completions.create(**kwargs)
                text, tokens, used = _read_reply(reply)
                finish = getattr(reply.choices[0], "finish_reason", None)
            except openai.APIStatusError as err:
                status = err.status_code
                if 300 <= status < 400:
                    raise PromptDistillError(f"the chat API at {self.url} redirected the request for {what}; redirects are "
                                             "not followed (the key would go with them): set {self.url_field} to the final URL") from None
                raise PromptDistillError(f"the chat API at {self.url} failed for {what}: HTTP {status}: "
                                         f"{redact(_message(err), self.api_key)}; rerun the same command to continue from what was saved") from None
            except openai.APIConnectionError as err:  # the client's own retries are spent (timeouts included)
                raise PromptDistillError(f"the chat API at {self.url} failed for {what} after {self.max_retries + 1} attempts "
                                         f"({type(err).__name__}: {redact(str(err), self.api_key)}); rerun the same command to continue "
                                         "from what was saved") from None
            except (MalformedChatReply, openai.APIResponseValidationError, ValueError, TypeError, AttributeError) as err:
                last = f"{type(err).__name__}: {redact(str(err), self.api_key)[:200]}"
                if attempt < self.max_retries:
                    time.sleep(min(30.0, self.backoff * 2 ** attempt))
                continue
            self.spend(usage, used)
            self._pace.used(used.get("prompt_tokens", 0) + used.get("completion_tokens", 0))
            return text, tokens, finish
        raise PromptDistillError(f"the chat API at {self.url} sent malformed replies for {what} "
                                 f"{self.max_retries + 1} times (last: {last}); rerun the same command to continue from what was saved")

    def _say_where_the_key_goes(self) -> None:
        if self._announce and self._announced.acquire(blocking=False):
            self._log(f"[promptdistill] sending the API key to {self.url}")


class MalformedChatReply(ValueError):
    """A reply without the shape the chat API promises (retried)."""


class ReplyBounds:
    """An overall deadline and a size limit for each HTTP request the openai client sends.

    httpx's timeouts are per socket operation: a server that trickles a byte
    now and then never trips them, and a reply body is read whole into
    memory. The client's event hooks close both gaps: the request hook starts
    the request's clock, and the response hook (called once the headers are
    in, before the body is read) refuses a declared length over the limit and
    wraps the body stream, which counts the bytes read and, at the deadline,
    shuts the connection's socket down so a read blocked in it returns at
    once. A body over the limit is a malformed reply (retried by ChatTeacher,
    then one error); a passed deadline is a timeout (the client retries it,
    then ChatTeacher's one error). The headers themselves come within the
    per-socket timeouts (and h11's 16 KiB header limit). Each attempt has its
    own deadline: retries are the client's, after it.
    """

    KEY = "promptdistill_deadline"

    def __init__(self, timeout: float, max_bytes: int, httpx):
        self.timeout, self.max_bytes = timeout, max_bytes
        self.body = _bounded_body_class(httpx)  # a subclass of that httpx's SyncByteStream, as the client requires

    def start(self, request) -> None:
        request.extensions[self.KEY] = time.monotonic() + self.timeout

    def wrap(self, response) -> None:
        length = response.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            response.close()
            raise MalformedChatReply(f"reply larger than {self.max_bytes} bytes")
        deadline = response.request.extensions.get(self.KEY, time.monotonic() + self.timeout)
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        response.stream = self.body(response.stream, response.request, deadline, self.max_bytes, sock)


def _bounded_body_class(httpx):
    class BoundedBody(httpx.SyncByteStream):
        """A response body read against a deadline and a size limit (ReplyBounds)."""

        def __init__(self, stream, request, deadline: float, max_bytes: int, sock):
            self.stream, self.request, self.deadline, self.max_bytes, self.sock = stream, request, deadline, max_bytes, sock
            self.cut = False

        def _cut(self) -> None:
            self.cut = True
            if self.sock is not None:
                try:  # the plain socket's shutdown (also under TLS): wakes a read blocked in another thread
                    socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
                except OSError:
                    pass

        def __iter__(self):
            timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._cut)
            timer.daemon = True
            timer.start()
            size = 0
            try:
                for chunk in self.stream:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise MalformedChatReply(f"reply larger than {self.max_bytes} bytes")
                    if self.cut or time.monotonic() > self.deadline:
                        raise httpx.ReadTimeout("the request's deadline passed while reading the reply", request=self.request)
                    yield chunk
            except httpx.TransportError as err:
                if self.cut:
                    raise httpx.ReadTimeout("the request's deadline passed while reading the reply", request=self.request) from err
                raise
            finally:
                timer.cancel()

        def close(self) -> None:
            self.stream.close()

    return BoundedBody


def _httpx_of(openai):
    """The httpx module the openai client is built on (httpx, or httpx2 in newer releases)."""
    for cls in openai.DefaultHttpxClient.__mro__:
        if cls.__name__ == "Client":
            return sys.modules[cls.__module__.split(".")[0]]
    raise PromptDistillError("the openai client is not built on httpx; this version of it is not supported",
                             field="models.teacher_backend")


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
