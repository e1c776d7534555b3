"""The sections of a free-text evaluation: reply checks, prompt effect recovered, the judge.

A text task has no label to agree on, so its report reads the replies
themselves: how often each system keeps the prompt's declared rules
(checks.py), how much of the prompt's effect on them the student recovers
(effect.py), and which reply a judge prefers (judge.py). `text_sections` is
the one entry point (systems.evaluate_systems calls it); it works on the
replies alone, whichever way they were produced.
"""

from __future__ import annotations

from ..config import EvalConfig, judge_enabled
from ..records import Example
from ..task import Task
from ..teachers import Teacher
from .checks import ALL, checks_section
from .effect import MIN_GAP, RESAMPLES, SEED, prompt_effect
from .judge import judge_section


def text_sections(task: Task, settings: EvalConfig, examples: list[Example], replies: dict[str, list[str]],
                  judge_teacher: Teacher | None, out_dir, *, seed: int = 0, force: bool = False,
                  progress: bool = True) -> dict:
    """report.json's `checks`, `prompt_effect` and `judge` sections (those that apply).

    `replies`: each system's replies ("teacher", "base" when evaluated,
    "student"), aligned with `examples`. `judge_teacher`: who judges (the
    teacher, or the model of eval.judge_model), used when the judge is on
    (eval.judge). `seed` seeds the judge's answers; `force` lets other judge
    settings discard the stored verdicts (judge.py)."""
    out = {}
    if settings.checks:
        out["checks"], vectors = checks_section(settings.checks, replies)
        if "base" not in replies:
            out["prompt_effect"] = {"unavailable": "needs the base row (eval.include_base = true)"}
        else:
            effects = {name: prompt_effect(*([float(x) for x in v[s]] for s in ("teacher", "base", "student")))
                       for name, v in vectors.items()}
            overall = effects.pop(ALL)  # a reply passes when it passes every check
            out["prompt_effect"] = {"overall": overall, "checks": effects, "resamples": RESAMPLES, "seed": SEED,
                                    "min_gap": MIN_GAP}
    if judge_teacher is not None and judge_enabled(settings, task.config.reply_format):
        out["judge"] = judge_section(task, judge_teacher, examples, replies, out_dir, seed=seed, force=force,
                                     progress=progress)
    return out
