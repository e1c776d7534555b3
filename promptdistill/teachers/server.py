"""Teacher labeling through an OpenAI-compatible server (vLLM, SGLang, TGI, ...).

The teacher runs wherever the server runs; this process only sends requests.
`RemoteTeacher.label` keeps up to `concurrency` requests in flight and yields
the records **in input order** (a finished record waits for the ones before
it), so the labels file is always a prefix of what an uninterrupted run
writes: a rerun after an interruption labels only the missing inputs and the
final file holds the uninterrupted run's records in its order. At most
`concurrency * LOOKAHEAD` answers wait in memory behind a slow request.

- `generate` mode: `POST /chat/completions` with the task's conversation; the
  server applies the model's chat template. Each sample is its own request
  with a seed derived from the input's id (as local labeling does), so
  sampled labels do not depend on concurrency or on resuming. With
  `task.top_logprobs > 0` it asks for `logprobs`/`top_logprobs` and for token
  ids instead of token strings (`return_tokens_as_token_ids`, a vLLM
  extension: the records store token ids, which a plain OpenAI server cannot
  give; set `task.top_logprobs = 0` there).
- `choose` mode: `POST /completions` with prompts as token ids (rendered here
  with the teacher's tokenizer, exactly as local labeling renders them):
  each candidate reply's tokens are scored one step at a time as in
  vllm_teacher.py (prompt = context + the tokens before, `max_tokens = 1`,
  `allowed_token_ids = [token]`, `logprobs = 0`), one request per distinct
  next token with all its prompts in a list; the sums are normalised over the
  label set as in teacher.py. This needs vLLM's completions extensions
  (token-id prompts, `allowed_token_ids`, raw log-probs); OpenAI's hosted API
  has none of them. (`echo` + `logprobs` over context + candidate is the
  portable alternative, but vLLM computes it as full-vocabulary prompt
  log-probs at every position: on CPU more than 5 times slower, see BENCHMARKS.md.)

Failures: 429, 5xx, timeouts and dropped connections are retried with
exponential backoff (1 s, 2 s, 4 s, ... capped at 60 s, `Retry-After` honoured);
after the last retry the error names the input id and the URL. Other 4xx
answers (a wrong model name, an unsupported parameter) fail at once.

The HTTP client is the standard library's (`urllib` plus a thread pool): the
requests are plain JSON POSTs whose time is spent in the server, so a pool
of blocking threads is enough, and the backend adds no dependency.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ..errors import PromptDistillError
from ..records import Example
from ..task import Task

API_KEY_VARIABLES = ("PROMPTDISTILL_API_KEY", "OPENAI_API_KEY")
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Answers allowed to wait for a slower earlier request, per request in flight.
LOOKAHEAD = 4


class RemoteTeacher:
    """A teacher model behind an OpenAI-compatible HTTP API."""

    def __init__(self, url: str, model: str, *, concurrency: int = 8, max_retries: int = 6, timeout: float = 300.0,
                 backoff: float = 1.0, tokenizer=None):
        self.url = url.rstrip("/")
        self.name = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self._tokenizer = tokenizer
        self.api_key = next((os.environ[v] for v in API_KEY_VARIABLES if os.environ.get(v)), None)

    def meta(self) -> dict:
        return {"backend": "openai", "teacher_url": self.url}

    @property
    def tokenizer(self):
        """The teacher's tokenizer, loaded here by model name (choose mode renders token ids itself)."""
        if self._tokenizer is None:
            from ..models import load_tokenizer

            try:
                self._tokenizer = load_tokenizer(self.name)
            except PromptDistillError as e:
                raise PromptDistillError(
                    f"choose mode through a server renders the prompt here and needs the teacher's tokenizer: {e.message}",
                    field="models.teacher") from None
        return self._tokenizer

    def check_server(self) -> list[str]:
        """The model names the server offers (`GET /models`); a clear error when it cannot be reached."""
        body = self._request("GET", "/models", None, what="the model list")
        return [m.get("id") for m in body.get("data", [])]

    def label(self, examples: list[Example], task: Task, mode: str, seed: int, batch_size=None):
        """Yield one record per input, in input order, with up to `concurrency` requests in flight."""
        if not examples:
            return
        served = self.check_server()
        if served and self.name not in served:
            raise PromptDistillError(f"the server at {self.url} does not serve model {self.name!r}; it serves: {', '.join(served)}",
                                     field="models.teacher")
        answer = self._chooser(task) if mode == "choose" else self._generator(task, seed)
        yield from ordered_map(answer, examples, self.concurrency)

    # -- generate mode ----------------------------------------------------

    def _generator(self, task: Task, seed: int):
        from ..labeling import _sample_seed, generate_record

        k = task.config.top_logprobs

        def answer(e: Example):
            replies, logprobs = [], []
            for n in range(task.config.samples):
                body = {
                    "model": self.name,
                    "messages": task.teacher_messages(e.text),
                    "max_tokens": task.config.max_new_tokens,
                    "temperature": task.config.temperature,
                    "seed": _sample_seed(seed, e.id, n) % 2**31,
                }
                if k:
                    body.update(logprobs=True, top_logprobs=k, return_tokens_as_token_ids=True)
                choice = self._request("POST", "/chat/completions", body, what=f"input {e.id!r}")["choices"][0]
                replies.append(choice["message"]["content"] or "")
                logprobs.append(_top_logprobs(choice, k, self.url) if k else None)
            return generate_record(task, e, replies, logprobs if k else None)

        return answer

    # -- choose mode ------------------------------------------------------

    def _chooser(self, task: Task):
        from ..render import render_prompt
        from ..labeling import choose_record, label_candidates, normalize_scores
        from .vllm_engine import candidate_logps, scoring_steps

        tok = self.tokenizer
        candidates = label_candidates(task, tok, task.teacher_messages("x"))
        by_token: dict[int, list[tuple]] = {}
        for before, token in scoring_steps(candidates):
            by_token.setdefault(token, []).append(before)

        def answer(e: Example):
            context = render_prompt(tok, task.teacher_messages(e.text))
            step_logps = {}
            for token, befores in by_token.items():
                body = {
                    "model": self.name,
                    "prompt": [context + list(before) for before in befores],
                    "max_tokens": 1,
                    "temperature": 0,
                    "logprobs": 0,
                    "allowed_token_ids": [token],
                }
                choices = self._request("POST", "/completions", body, what=f"input {e.id!r}")["choices"]
                for choice in choices:
                    lp = (choice.get("logprobs") or {}).get("token_logprobs") or [None]
                    if lp[0] is None or len(choices) != len(befores):
                        raise PromptDistillError(f"the server at {self.url} returned no log-probabilities for input {e.id!r}; "
                                                 "choose mode through a server needs vLLM's completions API")
                    step_logps[befores[choice["index"]], token] = lp[0]
            return choose_record(task, e, normalize_scores(task, candidate_logps(candidates, step_logps)))

        return answer

    # -- HTTP ---------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None, *, what: str) -> dict:
        """One JSON request with retries on 429/5xx, timeouts and dropped connections."""
        url = self.url + path
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = None
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method=method)
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:500]
                last = f"HTTP {err.code}: {detail}"
                if err.code not in RETRY_STATUSES:
                    raise PromptDistillError(f"the teacher server at {url} refused the request for {what}: {last}") from None
                wait = _retry_after(err.headers.get("Retry-After"))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                reason = getattr(err, "reason", err)
                last = f"{type(reason).__name__}: {reason}"
                if attempt == 0 and path == "/models" and not isinstance(reason, TimeoutError):
                    raise PromptDistillError(f"cannot reach the teacher server at {self.url} ({last}); is it running?") from None
            except json.JSONDecodeError as err:
                raise PromptDistillError(f"the teacher server at {url} sent a reply that is not JSON for {what}: {err}") from None
            if attempt < self.max_retries:
                delay = wait if wait is not None else min(60.0, self.backoff * 2 ** attempt) * random.uniform(0.8, 1.2)
                time.sleep(delay)
        raise PromptDistillError(f"the teacher server at {url} failed for {what} after {self.max_retries + 1} attempts (last: {last}); "
                                 "rerun the same command to continue from what was saved")


def ordered_map(fn, items, workers: int):
    """Yield fn(item) for each item in order, running up to `workers` calls at once.

    New calls start while the oldest unfinished one runs, but never more than
    `workers * LOOKAHEAD` ahead of it, which bounds the answers held in memory.
    An exception stops the map at that item (earlier results were yielded);
    calls not yet started are cancelled.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="teacher")
    pending: deque = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers * LOOKAHEAD:
                break
        while pending:
            result = pending.popleft().result()
            for item in it:
                pending.append(pool.submit(fn, item))
                break
            yield result
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _top_logprobs(choice: dict, k: int, url: str) -> dict:
    """The reply's token ids and, per token, its top-k [token_id, logprob] pairs, most likely first."""
    content = (choice.get("logprobs") or {}).get("content")
    if content is None:
        raise PromptDistillError(f"the server at {url} returned no logprobs; set task.top_logprobs = 0 for servers without them")
    token_ids, top = [], []
    for entry in content:
        token_ids.append(_token_id(entry["token"], url))
        alternatives = sorted(((_token_id(a["token"], url), a["logprob"]) for a in entry.get("top_logprobs") or []),
                              key=lambda pair: -pair[1])
        top.append([[t, lp] for t, lp in alternatives[:k]])
    return {"token_ids": token_ids, "top": top}


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
