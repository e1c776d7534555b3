"""A judge: which of two replies follows the system prompt better.

Reply checks (checks.py) see only the rules someone wrote down; a prompt also
asks for a tone, a persona, what to refuse. For those a judge model reads the
system prompt and, for each held-out conversation, a system's reply beside
the teacher's, and says which follows the prompt better (or a tie).

- The default judge is the teacher itself, *with* the system prompt (it is in
  the judge's own system message), asked through the run's `Teacher`, so any
  backend judges: the question is a label task (`judge_task`: labels A, B,
  tie, read with an answer pattern) answered by `teacher.label` in generate
  mode, greedy, with "Verdict:" prefilled where no reasoning has to come first.
- Both orders: every pair is asked as A = system, B = teacher and again as
  A = teacher, B = system, since judges favour a position. Each verdict is
  mapped to the system's outcome (win / tie / loss); a pair whose outcome
  flips with the order, or whose verdict could not be read in either order,
  counts as a tie. Win, tie, loss and win-or-tie rates come with Wilson
  intervals (agreement.rate).
- Reliability: the share of judged pairs whose verdict survives the swap. A
  judge that mostly flips is visible as one; its win rates mean little.
  Identical replies are a tie without asking and are left out of it.
- The floor: the base (no prompt) against the teacher, judged the same way.
- Stored: every verdict is appended to `judge.jsonl` in the evaluation
  folder as it arrives (the settings first), keyed by a hash of exactly what
  the judge read, so a rerun asks only what it has not (an interrupted
  evaluation, or a retrained student whose replies changed); other judge
  settings are refused or, with force, start over (io.resume_or_refuse).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import TaskConfig
from ..errors import PromptDistillError
from ..io import JsonlAppender, drop_torn_last_line, fingerprint, resume_or_refuse
from ..reasoning import strip_reasoning
from ..records import Example
from ..task import Task
from ..teachers import Teacher
from .agreement import rate

LABELS = ["A", "B", "tie"]
VERDICT_PATTERN = r"Verdict:\s*\**\s*(?:Reply\s+)?(A|B|tie)\b"
MAX_NEW_TOKENS = 8
FILE = "judge.jsonl"
ORDERS = ("ab", "ba")  # ab: A = the system, B = the teacher; ba: the other way round
# The system's outcome for each verdict, per order.
OUTCOME = {"ab": {"A": "win", "B": "loss", "tie": "tie"}, "ba": {"A": "loss", "B": "win", "tie": "tie"}}

JUDGE_PROMPT = """You judge replies written by an assistant that was given the system prompt below.

You will see a conversation and two candidate replies to its last user message, Reply A and Reply B. \
Decide which reply follows the system prompt better: its instructions, rules, format, length, style and persona. \
Ignore which reply comes first and which is longer, unless the system prompt asks for a length. \
If both follow it equally well or equally badly, it is a tie.

End your answer with exactly one line: "Verdict: A", "Verdict: B" or "Verdict: tie".

The system prompt:
<<<
{prompt}
>>>"""


def judge_task(task: Task) -> Task:
    """The judging question as a label task whose system prompt holds the task's own
    (its system prompt, or its user template for a task that has no system prompt)."""
    c = task.config
    prompt = c.system_prompt if c.system_prompt is not None else c.user_template
    reasoning = c.teacher_max_new_tokens is not None  # a thinking budget: let it think before the verdict
    return Task(TaskConfig(
        name=f"{c.name}-judge", system_prompt=JUDGE_PROMPT.replace("{prompt}", prompt), answer_pattern=VERDICT_PATTERN,
        labels=list(LABELS), answer_mode="generate", answer_template="Verdict: {label}", reply_format="label",
        reply_prefix="" if reasoning else "Verdict:", max_new_tokens=MAX_NEW_TOKENS,
        teacher_max_new_tokens=(c.teacher_max_new_tokens + MAX_NEW_TOKENS) if reasoning else None,
        temperature=0.0, samples=1, min_confidence=0.0, top_logprobs=0))


def comparison_text(conversation: list[dict], reply_a: str, reply_b: str) -> str:
    turns = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in conversation)
    return f"[The conversation]\n{turns}\n\n[Reply A]\n{reply_a}\n\n[Reply B]\n{reply_b}\n\nWhich reply follows the system prompt better?"


def pair_outcome(verdict_ab: str | None, verdict_ba: str | None) -> tuple[str, bool]:
    """(the system's outcome, whether the verdict survived the swap) from the two orders' verdicts."""
    ab = OUTCOME["ab"].get(verdict_ab) if verdict_ab else None
    ba = OUTCOME["ba"].get(verdict_ba) if verdict_ba else None
    if ab is not None and ab == ba:
        return ab, True
    return "tie", False


def summarize(pairs: list[dict]) -> dict:
    """Win / tie / loss rates (with intervals) and the judge's reliability over one system's pairs."""
    n = len(pairs)
    count = {k: sum(p["outcome"] == k for p in pairs) for k in ("win", "tie", "loss")}
    judged = [p for p in pairs if not p["identical"]]
    return {
        "n": n,
        "win": rate(count["win"], n), "tie": rate(count["tie"], n), "loss": rate(count["loss"], n),
        "win_or_tie": rate(count["win"] + count["tie"], n),
        "reliability": rate(sum(p["consistent"] for p in judged), len(judged)),
        "identical": n - len(judged),
        "unreadable_verdicts": sum(p[o] is None for p in judged for o in ORDERS),
    }


def judge_settings(judge: Teacher, task: Task, seed: int) -> dict:
    """What the stored verdicts depend on beyond what the judge read."""
    return {"judge": judge.name, "backend": judge.meta(), "judge_task": judge_task(task).fingerprint(), "seed": seed}


def judge_section(task: Task, judge: Teacher, examples: list[Example], replies: dict[str, list[str]], out_dir, *,
                  seed: int = 0, force: bool = False, batch_size: int | None = None, progress: bool = True) -> dict:
    """Judge every system's reply (`replies`: by system, aligned with `examples`; "teacher"
    is the reference) against the teacher's; the report section, by system."""
    question = judge_task(task)
    path = Path(out_dir) / FILE
    settings = judge_settings(judge, task, seed)
    stored = _stored_verdicts(path, settings, force)
    compared = [s for s in replies if s != "teacher"]
    asks, asked, pairs, pending = [], set(), {s: [] for s in compared}, {}
    for system in compared:
        for e, mine, theirs in zip(examples, replies[system], replies["teacher"]):
            # the answers are judged, not a reasoning teacher's thinking (reasoning.py)
            mine, theirs = strip_reasoning(mine).strip(), strip_reasoning(theirs).strip()
            conversation = e.conversation()
            pair = {"id": e.id, "identical": mine == theirs}
            for order in ORDERS:
                a, b = (mine, theirs) if order == "ab" else (theirs, mine)
                text = comparison_text(conversation, a, b)
                # Keyed by what the judge reads alone: a base and a student with the same reply share one verdict.
                key = fingerprint(text, ensure_ascii=False)
                if pair["identical"]:
                    pair[order] = "tie"
                elif key in stored:
                    pair[order] = stored[key]
                else:
                    pair[order], pending[id(pair), order] = None, key
                    if key not in asked:
                        asked.add(key)
                        asks.append((key, system, e.id, order, text))
            pairs[system].append(pair)
    answers = _ask(question, judge, asks, path, settings, seed, batch_size, progress)
    section = {"judge": judge.name, "orders": list(ORDERS), "file": FILE, "systems": {}}
    for system, rows in pairs.items():
        for pair in rows:
            for order in ORDERS:
                if (id(pair), order) in pending:  # asked now
                    pair[order] = answers[pending[id(pair), order]]
            pair["outcome"], pair["consistent"] = pair_outcome(pair["ab"], pair["ba"])
        section["systems"][system] = summarize(rows)
    return section


def _ask(question: Task, judge: Teacher, asks: list[tuple], path: Path, settings: dict, seed: int, batch_size, progress) -> dict:
    """The verdicts of the comparisons not yet stored, each appended to the file as it arrives."""
    answers = {}
    if not asks:
        return answers
    if progress:
        print(f"[promptdistill] judge: {len(asks)} comparisons", flush=True)
    with JsonlAppender(path) as log:
        if path.stat().st_size == 0:
            log.append({"settings": settings})
        inputs = [Example(id=key, text=text) for key, _, _, _, text in asks]
        for (key, system, example_id, order, _), record in zip(asks, judge.label(inputs, question, "generate", seed, batch_size)):
            verdict, _status = question.parse_answer(record.teacher_reply)
            answers[key] = verdict
            log.append({"key": key, "system": system, "id": example_id, "order": order, "reply": record.teacher_reply,
                        "verdict": verdict})
    return answers


def _stored_verdicts(path: Path, settings: dict, force: bool) -> dict:
    """{key: verdict} of an earlier run with the same judge settings; other settings
    are refused (with force: the file is removed and the judging starts over)."""
    if not path.exists():
        return {}
    drop_torn_last_line(path)
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    if not lines:
        return {}
    try:
        header = json.loads(lines[0])
        rows = [json.loads(line) for line in lines[1:]]
        stored = header["settings"]
        verdicts = {row["key"]: row["verdict"] for row in rows}
    except (ValueError, KeyError, TypeError) as e:
        raise PromptDistillError(f"not a judge file this tool wrote ({e}); move it away to judge again", path=path) from None
    changed = resume_or_refuse(stored, settings, force=force, what="the stored judge verdicts were made",
                               discards="them and judges again", discard=path.unlink, path=path)
    if changed:
        print(f"[promptdistill] {path}: verdicts of another judge ({', '.join(changed[:8])}); judging again", file=sys.stderr)
        return {}
    return verdicts
