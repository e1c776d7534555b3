"""Teacher answers become labeled records here, whichever backend produced them.

Every backend (transformers in this process, vLLM's engine, an HTTP server)
only turns prompts into replies or log-probabilities; the rules that decide a
record live in this one module so they cannot drift apart between backends:

- generate mode: `vote` keeps the majority label over an input's sampled
  replies and records the vote share as confidence; `top_logprobs_record`
  is the `teacher_logprobs` field (the kept reply's token ids and each token's
  top-k alternatives), built the same way from every backend's output;
- choose mode: `label_candidates` are the allowed replies as token ids,
  `scoring_steps` / `candidate_logps` split their scores into one-token
  questions for engines that can only answer those (vLLM, servers), and
  `normalize_scores` + `choose_record` turn candidate scores into the label
  distribution and its record;
- `sample_seed` gives each (input, sample) its own seed, so sampled answers
  depend neither on batching nor on resuming, with every backend.

Nothing here runs a model, so backends and stages import it freely.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter

from ..reasoning import has_reasoning
from ..records import Example, LabeledExample
from ..render import reply_ids
from ..task import LOW_CONFIDENCE, OK, TRUNCATED, Task


def sample_seed(seed: int, example_id: str, k: int) -> int:
    """A seed per (input, sample), so sampled answers do not depend on batching or resumption."""
    return int(hashlib.sha256(f"{seed}:{example_id}:{k}".encode()).hexdigest()[:15], 16)


def api_seed(seed: int, example_id: str, k: int) -> int:
    """`sample_seed` in the 31-bit range engines and servers accept."""
    return sample_seed(seed, example_id, k) % 2**31


# -- generate mode -------------------------------------------------------


def text_ids(token_ids, end_of_turn) -> list[int]:
    """The reply's tokens before the first end-of-turn token (what is decoded into the reply)."""
    ids = [int(t) for t in token_ids]
    for i, t in enumerate(ids):
        if t in end_of_turn:
            return ids[:i]
    return ids


def decode_reply(tokenizer, task: Task, token_ids, end_of_turn) -> str:
    """The recorded reply: the task's reply prefix (which the prompt ended with)
    plus the generated tokens up to end-of-turn, decoded as every backend decodes them."""
    return task.config.reply_prefix + tokenizer.decode(text_ids(token_ids, end_of_turn), skip_special_tokens=True)


def top_logprobs_record(token_ids, steps, k: int) -> dict | None:
    """The `teacher_logprobs` field: the reply's token ids (end-of-turn included
    when it stopped there) and, per token, its k most likely [token_id, logprob]
    pairs, most likely first. `steps` holds, per token, (token_id, logprob)
    pairs in any order; engines may add the sampled token beyond the k best."""
    if not k or not steps:
        return None
    top = [[[int(t), float(lp)] for t, lp in sorted(step, key=lambda pair: -pair[1])[:k]] for step in steps]
    return {"token_ids": [int(t) for t in token_ids], "top": top}


def vote(task: Task, e: Example, replies: list[str], logprobs: list[dict | None] | None = None,
         truncated: list[bool] | None = None) -> LabeledExample:
    """Generate mode: the record for an input's sampled replies. The majority
    label wins (ties go to the label seen first); the record carries the
    top-k log-probabilities of the reply it keeps. `truncated` says, per
    reply, whether the backend cut it at the reply limit (text tasks)."""
    logprobs = logprobs or [None] * len(replies)
    truncated = truncated or [False] * len(replies)
    parsed = [task.parse_answer(r)[0] for r in replies]
    votes = Counter(label for label in parsed if label is not None)
    if len(replies) == 1 or not votes:
        return make_record(task, e, replies[0], teacher_logprobs=logprobs[0], truncated=truncated[0])
    winner = votes.most_common(1)[0][0]
    chosen = parsed.index(winner)
    return make_record(task, e, replies[chosen], votes=dict(votes), samples=len(replies), teacher_logprobs=logprobs[chosen],
                       truncated=truncated[chosen])


# -- choose mode ---------------------------------------------------------


def label_candidates(task: Task, tokenizer, messages: list[dict]) -> list[list[int]]:
    """Token ids of every allowed answer as an assistant reply, end-of-turn included.
    After the generation header they do not depend on the input, so one call serves a task."""
    return [reply_ids(tokenizer, messages, task.label_reply(label)) for label in task.labels]


def normalize_scores(task: Task, logps: list[float]) -> dict[str, float]:
    """Softmax of the candidate replies' total log-probabilities (one per label, in task order)."""
    import torch

    probs = torch.softmax(torch.tensor(logps, dtype=torch.float64), dim=0).tolist()
    return dict(zip(task.labels, probs))


def choose_record(task: Task, e: Example, probs: dict[str, float]) -> LabeledExample:
    """Choose mode: the record for a distribution over the label set; the most likely label wins."""
    best = max(probs, key=probs.get)
    return make_record(task, e, task.label_reply(best), label_probs=probs)


def scoring_steps(candidates: list[list[int]]) -> list[tuple[tuple[int, ...], int]]:
    """The distinct (tokens before, next token) pairs whose log-probs sum to the candidates' scores.
    The candidates share their first tokens ("Final Answer:"), so each shared step is asked once."""
    return sorted({(tuple(c[:j]), c[j]) for c in candidates for j in range(len(c))})


def candidate_logps(candidates: list[list[int]], step_logps: dict) -> list[float]:
    """Each candidate's total log-probability from the log-probs of its steps."""
    return [sum(step_logps[tuple(c[:j]), c[j]] for j in range(len(c))) for c in candidates]


# -- the record ----------------------------------------------------------


def make_record(task: Task, e: Example, reply: str, *, label_probs=None, votes: dict | None = None, samples: int = 1,
                teacher_logprobs: dict | None = None, truncated: bool = False) -> LabeledExample:
    """The labeled record for one answer: parsed label, status (low confidence
    included), confidence and entropy, and the student's conversation (the
    input's whole conversation, plus the target turn when it is trained).
    A text reply cut at the reply limit (`truncated`) is "truncated": trained
    only with task.truncated_replies = "keep". A label or JSON answer that
    parsed is an answer however the reply ended.
    `teacher_reply` keeps the whole reply, a reasoning teacher's thinking
    included; the label and the student's target come from the answer alone
    (task.py). Such a reply's log-probabilities cover the thinking too, which
    the student never writes, so they are not kept as a soft target."""
    label, status = task.parse_answer(reply)
    if teacher_logprobs is not None and has_reasoning(reply):
        teacher_logprobs = None
    confidence = entropy = None
    if label_probs is not None:
        confidence = max(label_probs.values())
        entropy = -sum(p * math.log(p) for p in label_probs.values() if p > 0)
    elif votes is not None and label is not None:
        confidence = votes[label] / samples
    if status == OK and confidence is not None and confidence < task.config.min_confidence:
        status = LOW_CONFIDENCE
    if status == OK and truncated and task.text_reply:
        status = TRUNCATED
    messages = task.student_messages(e.conversation())
    if status == OK or (status == TRUNCATED and task.keeps_truncated()):
        messages = messages + [{"role": "assistant", "content": task.target_reply(reply, label)}]
    return LabeledExample(
        id=e.id, text=e.text, gold_label=e.gold_label, teacher_reply=reply, label=label,
        status=status, messages=messages, label_probs=label_probs, meta=e.meta,
        confidence=confidence, entropy=entropy, votes=votes, teacher_logprobs=teacher_logprobs,
    )
