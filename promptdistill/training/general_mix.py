"""data.mix_general: the base model's own replies to general prompts, mixed into training.

A student trained only on the task learns to answer everything as the task,
and can lose what its base did elsewhere. Training it also on what the
untouched base answers to prompts the task is not about holds it close to
its base there, with no outside data: the targets are the base's own.

How many: F = data.mix_general is the share of all training items that are
general ones, so n task items get round(F / (1 - F) * n) general items. They
are drawn from `general.general_prompts()` (101 prompts, none of them in the
general-ability check the report scores) in an order shuffled with
train.seed; when more are needed than the pool holds, the same order repeats
(and a printed line says so).

What they are: the base model's greedy replies (at most REPLY_TOKENS new
tokens), with the adapter switched off, so the untouched base also when
training starts from train.init_adapter. They are generated once, in
batches, and written to RUN/train/general_mix.jsonl, a line per distinct
prompt (id, prompt, reply, whether the base stopped, the student's name). A
rerun or a resume reuses the file when it holds the same prompts for the
same student and rewrites it otherwise (it is the tool's own file). Under
several processes the main one writes it and the others read it
(recipe._general_items).

How they are trained: cross-entropy on the base's reply tokens, the
conversation [user: prompt, assistant: reply] rendered like any example
(render.render_example), whatever train.loss is. A reply cut at
REPLY_TOKENS is trained without its end-of-turn token: the base had not
finished, and training a stop there would teach the student to stop
mid-sentence. With sft they are more sft items (a unit per trained token).
With kd and on-policy each counts as one unit, like an example, and its loss
is the mean cross-entropy over its reply tokens (recipe._loss_step); the
steps log it as general_loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import engine
from ..general import general_prompts
from ..io import atomic_write_jsonl
from ..render import RenderedExample, end_of_turn_ids, render_example, render_prompt

FILE_NAME = "general_mix.jsonl"
# Enough for most replies to the pool's short open prompts (SmolLM2-135M ends
# 58 of its 101 within it) and a bound on the generation, which runs once per
# run, each distinct prompt once, in batches of GENERATE_BATCH.
REPLY_TOKENS = 64
GENERATE_BATCH = 16


@dataclass
class GeneralExample(RenderedExample):
    """A general item: rendered like an sft example, told apart from the task's items by its type."""

    id: str = ""


def general_count(mix: float, task_items: int) -> int:
    """How many general items make them `mix` of all items, beside `task_items`."""
    return round(mix / (1 - mix) * task_items) if mix > 0 else 0


def drawn_prompts(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (id, prompt) pairs of the pool in an order shuffled with `seed`, the order repeating past the pool's end."""
    pool = general_prompts()
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    return [pool[order[i % len(pool)]] for i in range(n)]


@torch.no_grad()
def base_replies(base, tokenizer, prompts: list[str], batch_size: int = GENERATE_BATCH) -> list[tuple[str, bool]]:
    """(reply, stopped) per prompt: `base`'s greedy reply to each, decoded in batches
    (whole prompts, as evaluation/systems.generate_answers decodes them)."""
    messages = [[{"role": "user", "content": p}] for p in prompts]
    out = []
    for start in range(0, len(messages), batch_size):
        rows = [render_prompt(tokenizer, m) for m in messages[start : start + batch_size]]
        got = engine.decode_with_prefix(engine.PrefixCache(base, []), rows, max_new_tokens=REPLY_TOKENS,
                                        eos_ids=end_of_turn_ids(tokenizer), pad_id=tokenizer.pad_token_id)
        out += [(tokenizer.decode(d.text_ids, skip_special_tokens=True), d.stopped) for d in got]
    return out


def read_mix(path: Path) -> list[dict] | None:
    """The rows of a general-mix file, or None when it is missing or not whole (then it is rewritten)."""
    try:
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    keys = {"id", "prompt", "reply", "stopped", "model", "reply_tokens"}
    return rows if all(isinstance(r, dict) and keys <= set(r) for r in rows) else None


def mix_matches(rows: list[dict] | None, prompts: list[tuple[str, str]], student: str) -> bool:
    """Whether `rows` are the replies of `student` to exactly `prompts`, in order, made as this code makes them."""
    return (rows is not None and [(r["id"], r["prompt"]) for r in rows] == [tuple(p) for p in prompts]
            and all(r["model"] == student and r["reply_tokens"] == REPLY_TOKENS for r in rows))


def write_mix(path: Path, prompts: list[tuple[str, str]], replies: list[tuple[str, bool]], student: str) -> list[dict]:
    """Write the general-mix file whole (atomic, flushed to disk); return its rows."""
    rows = [{"id": pid, "prompt": prompt, "reply": reply, "stopped": stopped, "model": student, "reply_tokens": REPLY_TOKENS}
            for (pid, prompt), (reply, stopped) in zip(prompts, replies)]
    atomic_write_jsonl(path, rows)
    return rows


def general_examples(rows: list[dict], n: int, tokenizer) -> list[GeneralExample]:
    """`n` training items from the rows, cycling through them; a reply the base did
    not finish is trained without its end-of-turn token."""
    rendered = []
    for row in rows:
        ex = render_example(tokenizer, [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["reply"]}])
        weights = list(ex.weights)
        if not row["stopped"] and ex.num_trained > 1:
            weights[-1] = 0.0
        rendered.append((row["id"], ex.input_ids, weights))
    return [GeneralExample(input_ids=ids, weights=weights, id=pid) for pid, ids, weights in
            (rendered[i % len(rendered)] for i in range(n))]
