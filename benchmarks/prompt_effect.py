"""How much does a system prompt change a model's replies, measured by rule checks?

Before distilling a free-text prompt it is worth knowing that the prompt has an
effect at all: a student can only keep what the teacher shows. This script
greedy-decodes every conversation of a conversations file twice, with the
system prompt and without it, applies deterministic checks to each reply and
prints, per check and for all checks together, the pass rate with its 95%
Wilson interval in both conditions and the difference in percentage points.

"Without" means the conversation rendered through the tokenizer's chat template
with no system message. Templates that insert their own default system message
(SmolLM2's: "You are a helpful AI assistant named SmolLM, trained by Hugging
Face") then use it, and that is exactly what a distilled student sees, so that
is the baseline the prompt has to beat.

    .venv/bin/python benchmarks/prompt_effect.py \\
        --prompt examples/concise_chat/prompt.txt \\
        --inputs examples/concise_chat/inputs.jsonl \\
        --checks examples/concise_chat/checks.toml [--limit 24] \\
        [--max-new-tokens 96] [--batch-size 8] [--threads 1] [--model smollm2-135m-instruct]

Conversations file: one JSON object per line, `{"id": ..., "messages": [{"role":
..., "content": ...}, ...]}`, the last message a user turn. Checks file: TOML
with `[[eval.checks]]` tables, each a `name`, a `kind` and that kind's
parameters (promptdistill/replychecks.py; docs/evaluation.md). Every file is validated before the model loads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptdistill.errors import PromptDistillError  # noqa: E402
from promptdistill.evaluation.agreement import wilson_interval  # noqa: E402
from promptdistill.replychecks import Check, count_words, parse_checks  # noqa: E402

# ---------------------------------------------------------------- checks
# The rules and their validation are the package's (replychecks.py), the same
# a task file's [[eval.checks]] get in `promptdistill eval`.


def load_checks(path: str | Path) -> list[Check]:
    """Read and validate `[[eval.checks]]`; any fault is one line naming file, line and field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PromptDistillError(f"cannot read checks file: {e.strerror}", path=path) from None
    except tomllib.TOMLDecodeError as e:
        raise PromptDistillError(f"not valid TOML: {e}", path=path) from None
    tables = data.get("eval", {}).get("checks") if isinstance(data.get("eval"), dict) else None
    if not isinstance(tables, list) or not tables:
        raise PromptDistillError("needs at least one [[eval.checks]] table", path=path, field="eval.checks")
    return parse_checks(tables, path)


# ---------------------------------------------------------------- inputs


def load_conversations(path: str | Path) -> list[dict]:
    """Read `{"id", "messages"}` lines; each must end in a user turn to be answered."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise PromptDistillError(f"cannot read conversations file: {e.strerror}", path=path) from None
    conversations, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise PromptDistillError(f"not valid JSON: {e}", path=path, line=number) from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), (str, int)) or isinstance(row.get("id"), bool):
            raise PromptDistillError("needs a string or integer 'id'", path=path, line=number, field="id")
        if row["id"] in seen:
            raise PromptDistillError(f"duplicate id {row['id']!r}", path=path, line=number, field="id")
        seen.add(row["id"])
        messages = row.get("messages")
        ok = isinstance(messages, list) and messages and all(
            isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
            for m in messages
        )
        if not ok:
            raise PromptDistillError("needs a non-empty list of user/assistant messages with string content", path=path, line=number, field="messages")
        if messages[-1]["role"] != "user":
            raise PromptDistillError("the last message must be a user turn", path=path, line=number, field="messages")
        conversations.append(row)
    if not conversations:
        raise PromptDistillError("no conversations", path=path)
    return conversations


def load_prompt(path: str | Path) -> str:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise PromptDistillError(f"cannot read prompt file: {e.strerror}", path=path) from None
    if not text:
        raise PromptDistillError("prompt file is empty", path=path)
    return text


def spread_subset(items: list, limit: int) -> list:
    """`limit` items spread evenly over the file, so single- and multi-turn both stay represented."""
    if not limit or limit >= len(items):
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


# ---------------------------------------------------------------- decoding


def generate_replies(loaded, system: str | None, conversations: list[dict], max_new_tokens: int, batch_size: int) -> tuple[dict, dict]:
    """Greedy replies {id: text}; `system=None` renders no system message.

    Rendering and decoding are the package's own (`render.render_prompt`,
    `engine.generate`: left-padded batches that stop at the end-of-turn
    token), so a reply here is what a teacher run would produce. Conversations
    are sorted by length so a batch pads little.
    """
    from promptdistill import engine
    from promptdistill.render import end_of_turn_ids, render_prompt

    tok = loaded.tokenizer
    prefix = [{"role": "system", "content": system}] if system is not None else []
    prompts = [render_prompt(tok, prefix + c["messages"]) for c in conversations]
    eos_ids = end_of_turn_ids(tok)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(eos_ids)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies, new_tokens, t0 = {}, 0, time.perf_counter()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        outputs = engine.generate(loaded.model, [prompts[i] for i in idx], max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id)
        for i, ids in zip(idx, outputs):
            new_tokens += len(ids)
            replies[conversations[i]["id"]] = tok.decode(ids, skip_special_tokens=True).strip()
    return replies, {"seconds": time.perf_counter() - t0, "new_tokens": new_tokens}


# ---------------------------------------------------------------- report


def rate(passed: int, n: int) -> str:
    if n == 0:
        return "  -/0"
    low, high = wilson_interval(passed, n)
    return f"{passed:3d}/{n} {100 * passed / n:5.1f}% [{100 * low:4.1f}-{100 * high:5.1f}]"


def report_lines(checks: list[Check], conversations: list[dict], with_replies: dict, without_replies: dict) -> list[str]:
    """The table: per check, all checks, and all checks split by single-/multi-turn."""
    ids = [c["id"] for c in conversations]
    n = len(ids)
    width = max(26, *(len(c.name) for c in checks))
    lines = [f"{'check':{width}s} {'with prompt [95% CI]':>27s} {'without [95% CI]':>27s} {'diff (pp)':>9s}"]

    def row(label, group, passes):
        w = sum(passes(with_replies[i]) for i in group)
        o = sum(passes(without_replies[i]) for i in group)
        g = len(group)
        lines.append(f"{label:{width}s} {rate(w, g):>27s} {rate(o, g):>27s} {100 * (w - o) / g:+9.1f}")

    for check in checks:
        row(check.name, ids, check)
    every = lambda reply: all(check(reply) for check in checks)  # noqa: E731
    row("ALL CHECKS", ids, every)
    for label, keep in (("all, single-turn", lambda c: len(c["messages"]) == 1), ("all, multi-turn", lambda c: len(c["messages"]) > 1)):
        group = [c["id"] for c in conversations if keep(c)]
        if group and len(group) < n:
            row(label, group, every)
    return lines


def judge_lines(loaded, system: str, conversations: list[dict], with_replies: dict, without_replies: dict, folder) -> str:
    """The model itself, with the prompt, judging "without" against "with" (the base-vs-teacher floor of an evaluation)."""
    from promptdistill.config import TaskConfig
    from promptdistill.evaluation.judge import judge_section
    from promptdistill.records import Example
    from promptdistill.task import Task
    from promptdistill.teachers.local import LocalTeacher

    task = Task(TaskConfig(name="prompt_effect", system_prompt=system))
    examples = [Example(id=str(c["id"]), text=c["messages"][-1]["content"], messages=c["messages"]) for c in conversations]
    ids = [c["id"] for c in conversations]
    t0 = time.perf_counter()
    section = judge_section(task, LocalTeacher(loaded), examples, {"teacher": [with_replies[i] for i in ids],
                            "without": [without_replies[i] for i in ids]}, folder, progress=False)
    j = section["systems"]["without"]
    return (f"judge ({loaded.name} with the prompt), without vs with, n={j['n']} ({j['identical']} identical): "
            f"win {rate(j['win']['successes'], j['n'])}, tie {rate(j['tie']['successes'], j['n'])}, "
            f"loss {rate(j['loss']['successes'], j['n'])}; reliability {rate(j['reliability']['successes'], j['reliability']['n'])}; "
            f"unreadable verdicts {j['unreadable_verdicts']}; {time.perf_counter() - t0:.1f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", required=True, help="system prompt file")
    ap.add_argument("--inputs", required=True, help="conversations file (JSONL)")
    ap.add_argument("--checks", required=True, help="checks file (TOML, [[eval.checks]])")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model name or folder (default: the packaged SmolLM2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--limit", type=int, default=0, help="use N conversations spread over the file (0 = all)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--replies", help="also write every reply pair to this JSONL file")
    ap.add_argument("--judge", metavar="FOLDER", help="also let the model judge, with the prompt, each reply without it against "
                    "the one with it, in both orders (evaluation/judge.py; verdicts stored in FOLDER/judge.jsonl), and "
                    "print win/tie/loss and the judge's reliability")
    args = ap.parse_args(argv)
    try:
        for flag in ("limit", "threads"):
            if getattr(args, flag) < 0:
                raise PromptDistillError("must be >= 0", field=f"--{flag.replace('_', '-')}")
        for flag in ("max_new_tokens", "batch_size"):
            if getattr(args, flag) < 1:
                raise PromptDistillError("must be >= 1", field=f"--{flag.replace('_', '-')}")
        system = load_prompt(args.prompt)
        checks = load_checks(args.checks)
        conversations = spread_subset(load_conversations(args.inputs), args.limit)
        if args.judge and Path(args.judge).exists() and not Path(args.judge).is_dir():
            raise PromptDistillError("is a file; --judge names a folder for judge.jsonl", path=args.judge)
        if args.replies and Path(args.replies).exists():
            raise PromptDistillError("already exists; not overwriting a file this run did not write", path=args.replies)

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch

        from promptdistill.models import load_model

        if args.threads:
            torch.set_num_threads(args.threads)
        loaded = load_model(args.model, args.device, args.dtype)
    except PromptDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    prompt_tokens = len(loaded.tokenizer(system, add_special_tokens=False)["input_ids"])
    t0 = time.perf_counter()
    with_replies, with_stats = generate_replies(loaded, system, conversations, args.max_new_tokens, args.batch_size)
    without_replies, without_stats = generate_replies(loaded, None, conversations, args.max_new_tokens, args.batch_size)
    wall = time.perf_counter() - t0

    n = len(conversations)
    print(f"model {args.model}, n={n} conversations, max_new_tokens={args.max_new_tokens}, batch {args.batch_size}, threads {torch.get_num_threads()}, prompt {prompt_tokens} tokens")
    print("\n".join(report_lines(checks, conversations, with_replies, without_replies)))
    ids = [c["id"] for c in conversations]
    print(f"median reply words: with {statistics.median([count_words(with_replies[i]) for i in ids])}, without {statistics.median([count_words(without_replies[i]) for i in ids])}")
    for label, stats in (("with", with_stats), ("without", without_stats)):
        print(f"decode {label}: {stats['new_tokens']} new tokens in {stats['seconds']:.1f}s")
    print(f"wall {wall:.1f}s")
    if args.judge:
        print(judge_lines(loaded, system, conversations, with_replies, without_replies, args.judge))
    if args.replies:
        with open(args.replies, "x", encoding="utf-8") as f:
            for c in conversations:
                f.write(json.dumps({"id": c["id"], "with": with_replies[c["id"]], "without": without_replies[c["id"]]}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
