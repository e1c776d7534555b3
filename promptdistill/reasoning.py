"""A reasoning teacher's thinking is kept apart from its answer.

Reasoning models (DeepSeek-R1 and its distills, Qwen3, QwQ, gpt-oss through
most servers) write their thinking before the answer, between tags, and
often restate candidate answers while they think ("maybe Final Answer: B...
no"). Read as a whole, such a reply would be parsed on a guess from the
thinking, and a student trained on it would learn to imitate thinking it
cannot do within its reply budget. So the reasoning is split off before
anything reads the reply: the label (task.py) and the student's target are
read from the answer alone, while the labeled record keeps the whole reply,
thinking included, for inspection.

Tags recognised (case-insensitive): `<think>` (DeepSeek-R1, Qwen3, QwQ and
most open reasoning models), `<thinking>` and `<reasoning>` (what models
prompted to "think step by step in tags" and several fine-tunes write).
Three shapes occur:

- closed blocks `<think>...</think>`, anywhere in the reply: removed;
- a closing tag with no opening one: chat templates that open the block in
  the prompt (DeepSeek-R1's, Qwen3's thinking mode) leave the reply starting
  inside it, so everything up to the last closing tag is reasoning;
- an opening tag at the start that never closes: the reply limit cut the
  thinking short, and there is no answer at all.

An API that returns the reasoning beside the content (`reasoning_content`,
as vLLM's reasoning parsers, DeepSeek's API and others do) is joined into one
reply by `with_reasoning`, so it is stored and dropped the same way.
"""

from __future__ import annotations

import re

REASONING_TAGS = ("think", "thinking", "reasoning")

_NAMES = "|".join(REASONING_TAGS)
_BLOCK = re.compile(rf"<({_NAMES})>.*?</\1>", re.IGNORECASE | re.DOTALL)
_CLOSE = re.compile(rf"</(?:{_NAMES})>", re.IGNORECASE)
_OPEN_AT_START = re.compile(rf"\s*<(?:{_NAMES})>", re.IGNORECASE)


def split_reasoning(reply: str) -> tuple[str, str]:
    """(reasoning, answer) of a reply. Without reasoning tags the answer is the
    reply unchanged and the reasoning is ""; with them, the answer is what is
    left once the reasoning is cut out, with surrounding whitespace removed."""
    if "<" not in reply:
        return "", reply
    parts: list[str] = []

    def cut(m: re.Match) -> str:
        parts.append(m.group(0))
        return ""

    answer = _BLOCK.sub(cut, reply)
    closes = list(_CLOSE.finditer(answer))
    if closes:  # the block was opened in the prompt
        end = closes[-1].end()
        parts.insert(0, answer[:end])
        answer = answer[end:]
    if _OPEN_AT_START.match(answer):  # cut short while thinking: no answer
        parts.append(answer)
        answer = ""
    if not parts:
        return "", reply
    return "".join(parts), answer.strip()


def strip_reasoning(reply: str) -> str:
    """The answer part of a reply (`split_reasoning`)."""
    return split_reasoning(reply)[1]


def has_reasoning(reply: str) -> bool:
    return bool(split_reasoning(reply)[0])


def with_reasoning(content: str | None, reasoning: str | None) -> str:
    """One reply from an API's separate answer and reasoning fields: the
    reasoning in a `<think>` block before the answer, so the record keeps both
    and `split_reasoning` takes them apart again."""
    content = content or ""
    if not reasoning:
        return content
    return f"<think>\n{reasoning}\n</think>\n\n{content}"
