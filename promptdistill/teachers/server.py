"""The teacher behind a vLLM server, token level (`teacher_backend = "vllm-server"`).

The teacher runs wherever the server runs (vLLM, SGLang, ...); this process
renders the prompts and sends requests. Prompts are rendered here with the
teacher's tokenizer (render.render_prompt, as local labeling renders them)
and sent as token ids to `POST /completions`, never as chat messages: the
server's own chat template would tokenize an input that spells a control
token (`<|im_end|>`) as that token, letting the input close its turn, and
would ignore `task.reply_prefix`. So the tokenizer must load locally under
`models.teacher`, and the server must take token-id prompts (vLLM does).

`ServerTeacher.label` keeps up to `concurrency` requests in flight and yields
the records **in input order** (a finished record waits for the ones before
it), so the labels file is always a prefix of what an uninterrupted run
writes: a rerun after an interruption labels only the missing inputs and the
final file holds the uninterrupted run's records in its order. At most
`concurrency * LOOKAHEAD` answers wait in memory behind a slow request.

- `generate` mode: one request per (input, sample): the prompt ends with
  `task.reply_prefix`, `stop_token_ids` are the tokenizer's end-of-turn
  tokens, and the seed is derived from the input's id (as local labeling
  does), so sampled labels do not depend on concurrency or on resuming. The
  reply's token ids come back (`return_token_ids`, a vLLM extension) and are
  decoded here exactly as local labeling decodes them; a server without it
  gives its own text. With `task.top_logprobs > 0` it asks for `logprobs = k`
  with tokens as token ids (`return_tokens_as_token_ids`, a vLLM extension:
  the records store token ids, which a plain OpenAI server cannot give; set
  `task.top_logprobs = 0` there).
- `choose` mode: each candidate reply's tokens are scored one step at a time
  as in vllm_engine.py (prompt = context + the tokens before, `max_tokens = 1`,
  `allowed_token_ids = [token]`, `logprobs = 0`), one request per distinct
  next token with all its prompts in a list; the sums are normalised over the
  label set (records.normalize_scores). This needs vLLM's completions
  extensions (token-id prompts, `allowed_token_ids`, raw log-probs);
  OpenAI's hosted API has none of them. (`echo` + `logprobs` over context +
  candidate is the portable alternative, but vLLM computes it as
  full-vocabulary prompt log-probs at every position: on CPU more than 5
  times slower, see BENCHMARKS.md.)

Failures: 429, 5xx, timeouts, dropped connections and malformed replies
(cut short, not UTF-8, not a JSON object, no `choices`, an `index` out of
range, more than MAX_REPLY_BYTES) are retried with exponential backoff (1 s,
2 s, 4 s, ... capped at 60 s, `Retry-After` honoured); after the last retry
the error names the input id and the URL. Other 4xx answers (a wrong model
name, an unsupported parameter) fail at once. Each request has an overall
deadline (`timeout`), not only a per-socket one. Redirects are refused (a key
must not follow one to another host); the key rules are api_access.py's.

Each reply's `usage` (prompt, completion, cached prompt tokens where vLLM
reports them) is recorded per input and in the teacher's total as the chat
backend records it (`Usage`, `HttpTeacher.api_cost`): the labels summary and
the report's cost section read it the same way for both.

Requests run on daemon threads (`ordered_map`): Ctrl-C or SIGTERM stops the
run at once with every record before it written, without waiting for the
requests in flight (a rerun resumes).

The HTTP client is the standard library's (`urllib` plus a thread pool): the
requests are plain JSON POSTs whose time is spent in the server, so a pool
of blocking threads is enough, and the backend adds no dependency.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future

from ..api_access import api_key, check_key_transport, redact

from ..errors import PromptDistillError
from ..records import Example, LabeledExample
from ..render import end_of_turn_ids, render_prompt
from ..task import Task
from .base import Completion, CompletionRequest, Teacher
from .records import (api_seed, candidate_logps, choose_record, decode_reply, normalize_scores, scoring_steps, top_logprobs_record,
                      vote)

# A reply bigger than this is not an answer (max_tokens bounds real ones far below it).
MAX_REPLY_BYTES = 64 * 2**20
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Answers allowed to wait for a slower earlier request, per request in flight.
LOOKAHEAD = 4


class HttpTeacher(Teacher):
    """What both HTTP backends (this one and chat.py's) share: the URL, the
    request budget, and the key with its transport checked before any request
    (api_access.py), so the two cannot drift apart on the key's rules."""

    # The setting that names the URL, for messages about it.
    url_field = "models.teacher_url"

    def __init__(self, url: str, model: str, *, concurrency: int, max_retries: int, timeout: float, backoff: float,
                 models=None, log=None, key_variables: tuple[str, ...] | None = None):
        self.url = url.rstrip("/")
        self.name = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.api_key = api_key(models, key_variables)
        check_key_transport(self.url, self.api_key, bool(getattr(models, "teacher_allow_insecure_http", False)), self.url_field)
        self._log = log or (lambda line: print(line, file=sys.stderr))
        self.prices = (getattr(models, "teacher_price_in", 0.0), getattr(models, "teacher_price_out", 0.0))
        self.spent = Usage()  # every request this teacher sent (the evaluation's cost section)
        self._spent_lock = threading.Lock()

    def spend(self, usage: Usage, used: dict, requests: int = 1) -> None:
        """Count one request's reported token usage in an input's `usage` and in the teacher's total."""
        usage.add(used, requests)
        with self._spent_lock:
            self.spent.add(used, requests)

    def api_cost(self) -> dict | None:
        """What the requests sent so far used and cost, per request, beside the student's
        API cost (none: it runs locally); None before any request that reported usage."""
        totals = dict(self.spent.totals)
        n = totals.get("requests", 0)
        if not n or not self.spent.reported:
            return None
        cost = (totals.get("prompt_tokens", 0) * self.prices[0] + totals.get("completion_tokens", 0) * self.prices[1]) / 1e6
        priced = any(self.prices)
        return {"teacher_usage": totals, "teacher_prompt_tokens_per_request": totals.get("prompt_tokens", 0) / n,
                "teacher_cost": cost if priced else None, "teacher_cost_per_request": cost / n if priced else None,
                "student_api_cost_per_request": 0.0}


class ServerTeacher(HttpTeacher):
    """A teacher model behind an OpenAI-compatible HTTP API that takes token-id prompts."""

    backend = "vllm-server"

    def __init__(self, url: str, model: str, *, concurrency: int = 8, max_retries: int = 6, timeout: float = 300.0,
                 backoff: float = 1.0, tokenizer=None, models=None, log=None):
        super().__init__(url, model, concurrency=concurrency, max_retries=max_retries, timeout=timeout, backoff=backoff,
                         models=models, log=log)
        self._tokenizer = tokenizer
        self._served_checked = False
        self._announced = False
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    def meta(self) -> dict:
        return {**super().meta(), "teacher_url": self.url}

    @property
    def tokenizer(self):
        """The teacher's tokenizer, loaded here by model name: prompts are rendered here."""
        if self._tokenizer is None:
            from ..models import load_tokenizer

            try:
                self._tokenizer = load_tokenizer(self.name)
            except PromptDistillError as e:
                raise PromptDistillError(
                    f"the vllm-server teacher backend renders prompts here and needs the teacher's tokenizer under the served "
                    f"model's name: {e.message}", field="models.teacher") from None
        return self._tokenizer

    def check_server(self) -> list[str]:
        """The model names the server offers (`GET /models`); a clear error when it cannot be reached."""
        return [m.get("id") for m in self._served_models()]

    def served_context(self) -> int | None:
        """The most tokens the server takes for this model, prompt and reply together
        (vLLM reports `max_model_len` in `GET /models`), or None where it does not say."""
        for m in self._served_models():
            if m.get("id") == self.name and isinstance(m.get("max_model_len"), int) and m["max_model_len"] > 0:
                return m["max_model_len"]
        return None

    def _served_models(self) -> list[dict]:
        body = self._request("GET", "/models", None, what="the model list")
        return [m for m in body.get("data", []) if isinstance(m, dict)]

    def label(self, examples: list[Example], task: Task, mode: str, seed: int, batch_size: int | None = None, *,
              reuse_prefix: bool = True) -> Iterator[LabeledExample]:
        """Up to `concurrency` requests in flight; `batch_size` and `reuse_prefix` are the server's business."""
        if not examples:
            return
        if not self._served_checked:  # once: the evaluation calls this once per input
            served = self.check_server()
            if served and self.name not in served:
                raise PromptDistillError(f"the server at {self.url} does not serve model {self.name!r}; it serves: {', '.join(served)}",
                                         field="models.teacher")
            self._served_checked = True
        answer = self._chooser(task) if mode == "choose" else self._generator(task, seed)
        yield from ordered_map(answer, examples, self.concurrency)

    def complete(self, requests: list[CompletionRequest], batch_size: int | None = None) -> Iterator[Completion]:
        """`/completions` with the token-id prompt as is (no chat template on the server), up to
        `concurrency` in flight, answers in request order; needs the server's `return_token_ids`."""
        if not requests:
            return
        eot = sorted(end_of_turn_ids(self.tokenizer))

        def answer(r: CompletionRequest) -> Completion:
            body = {"model": self.name, "prompt": r.prompt, "max_tokens": r.max_new_tokens, "temperature": r.temperature,
                    "seed": r.seed % 2**31, "stop_token_ids": eot, "return_token_ids": True}
            reply = self._request("POST", "/completions", body, what="a synthesis request")
            self.spend(Usage(), reply_usage(reply))
            choice = reply["choices"][0]
            ids = choice.get("token_ids")
            if ids is None:  # a server that returns text only: its text, re-encoded
                ids = self.tokenizer(choice.get("text") or "", add_special_tokens=False)["input_ids"]
            ids = [int(t) for t in ids]
            stopped = bool(ids) and ids[-1] in eot or choice.get("finish_reason") == "stop"
            return Completion([t for t in ids if t not in eot], stopped)

        yield from ordered_map(answer, requests, self.concurrency)

    # -- generate mode ----------------------------------------------------

    def _generator(self, task: Task, seed: int):
        tok = self.tokenizer
        c = task.config
        k = c.top_logprobs
        eot = end_of_turn_ids(tok)

        def answer(e: Example) -> LabeledExample:
            prompt = render_prompt(tok, task.teacher_messages(e.conversation()), c.reply_prefix)
            replies, logprobs, truncated, usage = [], [], [], Usage()
            for n in range(c.samples):
                body = {
                    "model": self.name,
                    "prompt": prompt,
                    "max_tokens": task.teacher_max_new_tokens,
                    "temperature": c.temperature,
                    "seed": api_seed(seed, e.id, n),
                    "stop_token_ids": sorted(eot),
                    "return_token_ids": True,
                }
                if k:
                    body.update(logprobs=k, return_tokens_as_token_ids=True)
                reply = self._request("POST", "/completions", body, what=f"input {e.id!r}")
                self.spend(usage, reply_usage(reply))
                choice = reply["choices"][0]
                token_ids, steps = _completion_logprobs(choice, self.url) if k else (None, None)
                token_ids = choice.get("token_ids") or token_ids
                if token_ids is not None:
                    replies.append(decode_reply(tok, task, token_ids, eot))
                else:  # a server that returns text only: its own decoding
                    replies.append(c.reply_prefix + (choice.get("text") or ""))
                logprobs.append(top_logprobs_record(token_ids, steps, k) if k else None)
                truncated.append(choice.get("finish_reason") == "length")
            return usage.attach(vote(task, e, replies, logprobs, truncated))

        return answer

    # -- choose mode ------------------------------------------------------

    def _chooser(self, task: Task):
        tok = self.tokenizer
        candidates = self.candidates(task)
        by_token: dict[int, list[tuple]] = {}
        for before, token in scoring_steps(candidates):
            by_token.setdefault(token, []).append(before)

        def answer(e: Example) -> LabeledExample:
            context = render_prompt(tok, task.teacher_messages(e.conversation()))
            step_logps, usage = {}, Usage()
            for token, befores in by_token.items():
                body = {
                    "model": self.name,
                    "prompt": [context + list(before) for before in befores],
                    "max_tokens": 1,
                    "temperature": 0,
                    "logprobs": 0,
                    "allowed_token_ids": [token],
                }
                reply = self._request("POST", "/completions", body, what=f"input {e.id!r}")
                # The prompts of a list are one request each to the server (and in its usage).
                self.spend(usage, reply_usage(reply), len(befores))
                choices = reply["choices"]
                for choice in choices:
                    lp = (choice.get("logprobs") or {}).get("token_logprobs") or [None]
                    if lp[0] is None or len(choices) != len(befores):
                        raise PromptDistillError(f"the server at {self.url} returned no log-probabilities for input {e.id!r}; "
                                                 "choose mode through a server needs vLLM's completions API")
                    step_logps[befores[choice_index(choice, len(befores), self.url)], token] = lp[0]
            return usage.attach(choose_record(task, e, normalize_scores(task, candidate_logps(candidates, step_logps))))

        return answer

    # -- HTTP ---------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None, *, what: str) -> dict:
        """One JSON request with retries on 429/5xx, timeouts and dropped connections."""
        url = self.url + path
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
            if not self._announced:
                self._announced = True
                self._log(f"[promptdistill] sending the API key to {self.url}")
        data = json.dumps(body).encode() if body is not None else None
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = None
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method=method)
                deadline = time.monotonic() + self.timeout
                with self._opener.open(req, timeout=self.timeout) as resp:
                    return _checked_reply(_read_bounded(resp, deadline), path)
            except urllib.error.HTTPError as err:
                detail = redact(err.read(2000).decode("utf-8", "replace")[:500], self.api_key)
                last = f"HTTP {err.code}: {detail}"
                if 300 <= err.code < 400:
                    raise PromptDistillError(f"the teacher server at {url} redirected the request for {what}; redirects are not "
                                             "followed (the key would go with them): set models.teacher_url to the final URL") from None
                if err.code not in RETRY_STATUSES:
                    raise PromptDistillError(f"the teacher server at {url} refused the request for {what}: {last}") from None
                wait = _retry_after(err.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                last = f"{type(reason).__name__}: {reason}"
                if attempt == 0 and path == "/models" and not isinstance(reason, TimeoutError):
                    raise PromptDistillError(f"cannot reach the teacher server at {self.url} ({last}); is it running?") from None
            except (MalformedReply, http.client.HTTPException, UnicodeDecodeError, json.JSONDecodeError) as err:
                last = f"malformed reply: {type(err).__name__}: {str(err)[:200]}"
            if attempt < self.max_retries:
                delay = wait if wait is not None else min(60.0, self.backoff * 2 ** attempt) * random.uniform(0.8, 1.2)
                time.sleep(delay)
        last = redact(last, self.api_key)
        raise PromptDistillError(f"the teacher server at {url} failed for {what} after {self.max_retries + 1} attempts (last: {last}); "
                                 "rerun the same command to continue from what was saved")


def ordered_map(fn, items, workers: int):
    """Yield fn(item) for each item in order, running up to `workers` calls at once.

    New calls start while the oldest unfinished one runs, but never more than
    `workers * LOOKAHEAD` ahead of it, which bounds the answers held in memory.
    An exception (Ctrl-C included) stops the map at that item (earlier results
    were yielded); calls not yet started are cancelled, and calls in flight are
    abandoned: the workers are daemon threads, so the process exits without
    waiting for a slow or hung server.
    """
    jobs: queue.Queue = queue.Queue()
    stopped = threading.Event()

    def work():
        while (job := jobs.get()) is not None:
            future, item = job
            if stopped.is_set() or not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(item))
            except BaseException as err:  # handed to the caller, who raises it
                future.set_exception(err)

    threads = [threading.Thread(target=work, daemon=True, name=f"teacher-{n}") for n in range(workers)]
    for t in threads:
        t.start()

    def submit(item) -> Future:
        future: Future = Future()
        jobs.put((future, item))
        return future

    pending: deque = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(submit(item))
            if len(pending) >= workers * LOOKAHEAD:
                break
        while pending:
            result = pending.popleft().result()
            for item in it:
                pending.append(submit(item))
                break
            yield result
    finally:
        stopped.set()
        for future in pending:
            future.cancel()
        for _ in threads:
            jobs.put(None)


class Usage:
    """Token usage summed over an input's requests, attached to its record's meta
    (labeling sums and prices it) when the server reported any, or always with
    `always` (a chat teacher has no tokenizer to count its prompt tokens otherwise)."""

    def __init__(self, always: bool = False):
        self.totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self.reported = always

    def add(self, used: dict, requests: int = 1) -> None:
        self.totals["requests"] += requests
        self.reported = self.reported or bool(used)
        for k, v in used.items():
            self.totals[k] = self.totals.get(k, 0) + v

    def attach(self, record: LabeledExample) -> LabeledExample:
        if self.reported:
            record.meta = {**(record.meta or {}), "teacher_usage": dict(self.totals)}
        return record


def reply_usage(body: dict) -> dict:
    """The token counts a `/completions` reply reports (`usage`, cached prompt tokens where
    given); {} when it reports none. A count that is not a whole number >= 0 is not used."""
    u = body.get("usage")
    if not isinstance(u, dict):
        return {}
    used = {k: u[k] for k in ("prompt_tokens", "completion_tokens") if _count(u.get(k))}
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") if isinstance(u.get("prompt_tokens_details"), dict) else None
    if _count(cached):
        used["cached_tokens"] = cached
    return used if "prompt_tokens" in used else {}


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class MalformedReply(ValueError):
    """A reply that is not the JSON object the API promises (retried like a dropped connection)."""


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """No redirect is followed: urllib would copy the Authorization header to any host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _read_bounded(resp, deadline: float) -> bytes:
    """The body, read against an overall deadline and a size limit."""
    chunks, size = [], 0
    while chunk := resp.read(1 << 16):
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise MalformedReply(f"reply larger than {MAX_REPLY_BYTES} bytes")
        if time.monotonic() > deadline:
            raise TimeoutError("the request's deadline passed while reading the reply")
        chunks.append(chunk)
    return b"".join(chunks)


def _checked_reply(data: bytes, path: str) -> dict:
    """The reply as a JSON object; a completions reply must hold a non-empty `choices` list of objects."""
    body = json.loads(data.decode("utf-8"))
    if not isinstance(body, dict):
        raise MalformedReply(f"a JSON {type(body).__name__}, not an object")
    if path != "/models":
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            raise MalformedReply("no choices")
    return body


def choice_index(choice: dict, n: int, url: str) -> int:
    """A choice's `index`, checked against the number of prompts sent."""
    index = choice.get("index")
    if not isinstance(index, int) or not 0 <= index < n:
        raise PromptDistillError(f"the server at {url} answered with choice index {index!r} for {n} prompts")
    return index


def _completion_logprobs(choice: dict, url: str) -> tuple[list[int], list[list[tuple[int, float]]]]:
    """The reply's token ids and, per token, its (token_id, logprob) alternatives, from a
    `/completions` choice asked for `logprobs` with `return_tokens_as_token_ids`."""
    logprobs = choice.get("logprobs") or {}
    tokens, alternatives = logprobs.get("tokens"), logprobs.get("top_logprobs")
    if tokens is None or alternatives is None:
        raise PromptDistillError(f"the server at {url} returned no logprobs; set task.top_logprobs = 0 for servers without them")
    token_ids = [_token_id(t, url) for t in tokens]
    steps = [[(_token_id(t, url), lp) for t, lp in (step or {}).items()] for step in alternatives]
    return token_ids, steps


def _token_id(token: str, url: str) -> int:
    # vLLM's return_tokens_as_token_ids writes tokens as "token_id:123".
    if not token.startswith("token_id:"):
        raise PromptDistillError(f"the server at {url} returned tokens as text ({token!r}), not token ids; top_logprobs records need "
                                 "token ids (vLLM's return_tokens_as_token_ids); set task.top_logprobs = 0 for this server")
    return int(token.removeprefix("token_id:"))


def _retry_after(value: str | None) -> float | None:
    try:
        return min(60.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None
