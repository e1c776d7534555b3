"""General abilities: prompts the task is not about, to see what training cost.

A distilled student answers every request as if the long prompt were there.
Whether that cost it what the base model could do elsewhere is measured on a
small built-in check, written for this project (`data/general_checks.jsonl`,
50 prompts): arithmetic, short facts, following a format instruction, and
copying or reversing a string, each with an answer a rule can check, so no
judge model is needed and the score means the same for every run. The check
is small on purpose: the 135M base answers it in well under a minute on a
2-core CPU, and it is there to catch a drop, not to rank models.

A second, disjoint list (`data/general_prompts.jsonl`, 101 open prompts) is
the pool `data.mix_general` draws from: the base model's own answers to
them are mixed into training (training/general_mix.py), which keeps the
student close to its base off the task. None of the pool's prompts is in the
check, so the check never scores what was trained on.

How a reply is checked (`passes`), after stripping surrounding whitespace:

    number   the last number in the reply is the answer ("12", "7 + 5 = 12",
             "The answer is 12." pass; "12 or 13" does not): arithmetic is
             checked, the format instructions have checks of their own
    word     the reply contains the answer as a whole word (any case; the
             answer may be a regex alternation such as "7|seven")
    exact    the reply, without surrounding quotes and a final period,
             equals the answer (case counts)
    pattern  the answer, a regex, matches the whole reply (any case)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
MATCHES = ("number", "word", "exact", "pattern")


@dataclass(frozen=True)
class GeneralCheck:
    id: str
    kind: str  # arithmetic | fact | format | copy
    prompt: str
    match: str  # one of MATCHES
    answer: str


@cache
def general_checks() -> tuple[GeneralCheck, ...]:
    """The built-in general-ability check (data/general_checks.jsonl)."""
    rows = [json.loads(line) for line in (DATA / "general_checks.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return tuple(GeneralCheck(**row) for row in rows)


@cache
def general_prompts() -> tuple[tuple[str, str], ...]:
    """The pool for data.mix_general: (id, prompt) pairs (data/general_prompts.jsonl), none of them in the check."""
    rows = [json.loads(line) for line in (DATA / "general_prompts.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return tuple((row["id"], row["text"]) for row in rows)


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w])")


def passes(check: GeneralCheck, reply: str) -> bool:
    """Whether `reply` answers `check` (see the module docstring for the rules)."""
    text = reply.strip()
    if check.match == "number":
        numbers = _NUMBER.findall(text.replace(",", ""))
        return bool(numbers) and numbers[-1] == check.answer
    if check.match == "word":
        return re.search(rf"\b(?:{check.answer})\b", text, re.IGNORECASE) is not None
    if check.match == "exact":
        return text.strip("\"'`“”‘’ \n").removesuffix(".").strip() == check.answer
    if check.match == "pattern":
        return re.fullmatch(check.answer, text, re.IGNORECASE | re.DOTALL) is not None
    raise ValueError(f"unknown match {check.match!r} in check {check.id}")
