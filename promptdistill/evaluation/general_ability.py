"""General ability: what training cost the model off the task.

The base model and the trained student (both without any prompt) answer the
built-in general check (general.py: arithmetic, short facts, format
instructions, copying and reversing), greedily, and each reply is checked
by its rule. The report gives both scores with Wilson intervals, per kind,
and flags a drop (base score - student score) above `eval.general_max_drop`.

The score alone is coarse (50 pass/fail answers); the mean KL(base || student)
per token over the base's own replies says how far the student's
distribution moved on these prompts even where the pass/fail answers agree.
It is 0 for a student that kept its base behaviour exactly, and it is what
`data.mix_general` training holds down.

Why the base and not the teacher: the teacher sees the task's prompt, which
says nothing about arithmetic; the question here is what the student could
do before training and can still do after.

A student behind a chat API (api_student.py) answers the same prompts through
it (the server applies its own chat template), greedily: the scores are
measured; the KL is not (no distributions over an API), and the section says why.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

import torch

from .. import engine
from ..general import general_checks, passes
from ..models import LoadedModel
from ..render import end_of_turn_ids, render_prompt
from ..reasoning import strip_reasoning
from .agreement import wilson_interval
from .api_student import UNAVAILABLE as KL_NEEDS_LOCAL_STUDENT, ApiStudent
from .fidelity import token_kl

# Room for a short answer and a sentence around it; the checks want a word or a number.
GENERAL_MAX_NEW_TOKENS = 48
# Replies scored per forward for the KL (each row holds a tokens x vocabulary distribution).
KL_BATCH = 8


def general_ability(base: LoadedModel, student: LoadedModel | ApiStudent, *, max_drop: float,
                    progress: bool = True) -> tuple[dict, list[dict]]:
    """(summary for report.json, one row per check) for the base and the student on the general check."""
    checks = general_checks()
    tok = base.tokenizer
    prompts = [render_prompt(tok, [{"role": "user", "content": c.prompt}]) for c in checks]
    if progress:
        print(f"[promptdistill] general ability: {len(checks)} checks, base and student", flush=True)

    def decode(loaded: LoadedModel):
        return engine.decode_with_prefix(*engine.common_prefix_cache(loaded.model, prompts),  # the template's opening once
                                         max_new_tokens=GENERAL_MAX_NEW_TOKENS, eos_ids=end_of_turn_ids(tok),
                                         pad_id=tok.pad_token_id, temperature=0.0)

    over_api = isinstance(student, ApiStudent)
    base_decoded = decode(base)
    base_replies = [tok.decode(d.text_ids, skip_special_tokens=True) for d in base_decoded]
    if over_api:
        student_replies = [strip_reasoning(r) for r in student.answer_prompts([(c.id, c.prompt) for c in checks], GENERAL_MAX_NEW_TOKENS)]
        kls = [None] * len(checks)
    else:
        student_replies = [tok.decode(d.text_ids, skip_special_tokens=True) for d in decode(student)]
        # KL on the base's replies, end-of-turn token included: stopping is behaviour too.
        kls = reply_kls(base, student, prompts, [d.token_ids for d in base_decoded])
    rows = []
    for c, base_reply, student_reply, kl in zip(checks, base_replies, student_replies, kls):
        rows.append({"id": c.id, "kind": c.kind, "prompt": c.prompt, "answer": c.answer, "match": c.match,
                     "base_reply": base_reply, "student_reply": student_reply,
                     "base_pass": passes(c, base_reply), "student_pass": passes(c, student_reply), "kl_base_student": kl})
    summary = summarize(rows, max_drop)
    return ({**summary, "kl_unavailable": KL_NEEDS_LOCAL_STUDENT} if over_api else summary), rows


@torch.inference_mode()
def reply_kls(reference: LoadedModel, model: LoadedModel, prompts: list[list[int]], replies: list[list[int]]) -> list[float | None]:
    """Mean KL(reference || model) per token over each reply (the same tokens read by
    both after the same prompt); None for an empty reply."""
    out: list[float | None] = [None] * len(prompts)
    todo = [i for i, r in enumerate(replies) if r]
    for start in range(0, len(todo), KL_BATCH):
        idx = todo[start : start + KL_BATCH]
        ps, rs = [prompts[i] for i in idx], [replies[i] for i in idx]
        ref, got = (engine.continuation_logprobs(*engine.common_prefix_cache(m.model, ps), rs, full=True)
                    for m in (reference, model))
        for i, a, b in zip(idx, ref, got):
            out[i] = token_kl(a.float(), b.float())
    return out


def summarize(rows: list[dict], max_drop: float) -> dict:
    """Scores with intervals, per kind, the drop and whether it exceeds `max_drop`, the mean KL."""
    n = len(rows)
    base, student = sum(r["base_pass"] for r in rows), sum(r["student_pass"] for r in rows)
    kinds: dict[str, list] = defaultdict(list)
    for r in rows:
        kinds[r["kind"]].append(r)
    drop = (base - student) / n if n else None
    kls = [r["kl_base_student"] for r in rows if r["kl_base_student"] is not None]
    return {
        "n": n,
        "base_score": base / n if n else None,
        "student_score": student / n if n else None,
        "base_interval": wilson_interval(base, n) if n else None,
        "student_interval": wilson_interval(student, n) if n else None,
        "by_kind": {k: {"n": len(v), "base": sum(r["base_pass"] for r in v) / len(v), "student": sum(r["student_pass"] for r in v) / len(v)}
                    for k, v in sorted(kinds.items())},
        "drop": drop,
        "max_drop": max_drop,
        "flagged": drop is not None and drop > max_drop,
        # Checks the base passed and the student fails: where to look first.
        "lost": [r["id"] for r in rows if r["base_pass"] and not r["student_pass"]],
        "gained": [r["id"] for r in rows if r["student_pass"] and not r["base_pass"]],
        "kl_base_student": statistics.fmean(kls) if kls else None,
    }
