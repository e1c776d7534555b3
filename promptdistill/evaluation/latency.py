"""Per-request latency: what one request costs each system, measured the same way for every row.

Quality and latency want different things. The answers behind accuracy,
agreement and KL are computed in batches (systems.py), which is fast and
gives the same answers; latency is what *one* request costs when it arrives
alone, so each row sends a sample of the held-out inputs one at a time
(`eval.latency_requests`, default 32) and reports the median.

Every row is asked the same thing: one generated answer, up to the task's
`max_new_tokens`, through the same decoder where the model runs in this
process (`engine.decode_with_prefix`; a vLLM or server teacher answers
through its backend).
Timing the teacher in choose mode (one forward) while the student generated
its reply once made the student look slower than a teacher carrying a
prompt ten times longer.

Every row is also served the same way: the tokens that every request of a
system starts with are cached before the clock starts, as a serving engine
with prefix caching keeps them (vLLM and SGLang do by default). For the
teacher that is its whole prompt; for the base and the student, their chat
template's opening (SmolLM2's default system message). So the teacher row
pays, per request, for its input and for attending over the prompt at every
step, not for reading the prompt again.

What reading the prompt again costs is measured apart (`prompt_cost`):
the time to compute the teacher's prompt prefix, which a server without
prefix caching (a plain `model.generate` loop) adds to every request. The
report gives both, so neither way of serving is hidden.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

from .. import engine
from ..models import LoadedModel
from ..records import Example
from ..render import end_of_turn_ids, render_prompt
from ..task import Task
from ..teachers import Teacher
from ..teachers.local import LocalTeacher, shared_prefix, split_prefix
from .api_student import ApiStudent


def measure_latency(examples: list[Example], request) -> dict[str, float]:
    """Seconds each of `examples` takes as one request on its own (`request(e)`
    asks for one generated answer), timed one after another, by id."""
    seconds = {}
    for e in examples:
        t0 = time.perf_counter()
        request(e)
        seconds[e.id] = time.perf_counter() - t0
    return seconds


def teacher_request(task: Task, teacher: Teacher, seed: int):
    """One generated answer from the teacher to one request, through its backend,
    its prompt cached as the backend keeps it (the local backend's prefix cache,
    built once; vLLM's prefix caching; a server's own)."""
    row_task = Task(replace(task.config, top_logprobs=0, samples=1))
    return lambda e: list(teacher.label([e], row_task, "generate", seed, 1))


def model_request(task: Task, loaded: LoadedModel | ApiStudent):
    """One generated answer from a model without the prompt to one request, the
    opening its chat template gives every request cached once, before any timing;
    a student behind an API: one request to it (the network's time included)."""
    if isinstance(loaded, ApiStudent):
        return lambda e: list(loaded.answer(task, [e]))
    tok = loaded.tokenizer
    opening = engine.PrefixCache(loaded.model, shared_prefix(task, tok, task.student_messages))
    whole = engine.PrefixCache(loaded.model, [])
    settings = dict(max_new_tokens=task.config.max_new_tokens, eos_ids=end_of_turn_ids(tok), pad_id=tok.pad_token_id,
                    temperature=task.config.temperature, seeds=[0])

    def request(e: Example):
        prompt = render_prompt(tok, task.student_messages(e.conversation()))
        suffix = split_prefix(opening, prompt)
        if suffix is None:  # a tokenizer that merged across the opening's end: the whole prompt
            return engine.decode_with_prefix(whole, [prompt], **settings)
        return engine.decode_with_prefix(opening, [suffix], **settings)

    return request


def prompt_cost(task: Task, teacher: Teacher, repeats: int = 3) -> tuple[float, int] | None:
    """(median seconds, tokens) to compute the teacher's prompt prefix: what a
    server without prefix caching adds to every request. None where this process
    does not run the teacher's model (vLLM and server backends) or the prompts
    share no prefix."""
    if not isinstance(teacher, LocalTeacher):
        return None
    prefix = teacher.prefix_cache(task)
    if prefix is None or not len(prefix):
        return None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.PrefixCache(prefix.model, prefix.prefix, attention="expand")
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(prefix)


def latency_section(task: Task, requests: int, prompt: tuple[float, int] | None, student_url: str | None = None) -> dict:
    """report.json's `latency`: how it was measured, in words, and the prompt's own cost (`prompt_cost`);
    with `student_url`, that the student's row is a round trip to its API."""
    how = (f"median over {requests} requests per system, each sent alone, one generated answer "
           f"(up to {task.config.max_new_tokens} tokens), with what every request of a system starts with cached "
           "(the teacher's prompt, the chat template's opening), as a server with prefix caching serves it")
    if prompt is not None:
        how += (f"; without prefix caching the teacher also computes the {prompt[1]} prompt tokens all its requests "
                f"share, on every request: {1000 * prompt[0]:.0f} ms more")
    if student_url is not None:
        how += f"; the student's requests went to its API at {student_url}, so its latency includes that server and the network"
    return {"requests": requests, "how": how, "teacher_prompt_ms": None if prompt is None else 1000 * prompt[0],
            "teacher_prompt_tokens": None if prompt is None else prompt[1]}
