"""Prompt effect recovered: how much of what the prompt does the student keeps.

    recovered = (student - base) / (teacher - base)

for any per-input score (a check passed, agreement with the teacher, KL from
the teacher): the teacher is the model with the prompt, the base the same
model without it, so teacher - base is the prompt's effect and the fraction
is the share of it the trained student shows without the prompt (the PI
score of Choi et al. 2022, "Prompt Injection: Parameterization of Fixed
Inputs"). 0 is no better than the base, 1 the teacher's behaviour; below 0 or
above 1 are possible and reported as they are.

- Undefined when the prompt has no measurable effect: |teacher - base| below
  `min_gap` (for rates MIN_GAP, 5 points: a prompt that moves a pass rate by
  less has no effect a held-out set of typical size can tell from noise, and
  the fraction would divide by almost nothing). Reported as undefined with the
  reason, never as a number.
- Interval: a paired bootstrap over held-out inputs. Each of RESAMPLES
  resamples draws the inputs with replacement, the same draw for all three
  systems (they answered the same inputs, so their scores are paired), and
  recomputes the fraction; the interval is the 2.5th and 97.5th percentiles.
  A resample whose own gap falls below `min_gap` has no fraction; when more
  than 2.5% of them have none, the gap is not reliably away from zero and the
  interval is reported undefined too (the percentiles would hide the
  divergence). Seeded (SEED), so the same replies give the same interval.

The same arithmetic serves every form: per reply check and all checks
together (text tasks, checks.py), agreement with the teacher (the teacher
agrees with itself: 1) and KL from the teacher (the teacher's is 0, so the
fraction is 1 - KL_student / KL_base, the fidelity section's "gap closed").
"""

from __future__ import annotations

import numpy as np

MIN_GAP = 0.05  # rates: the smallest teacher - base difference the fraction is computed for
KL_MIN_GAP = 1e-6  # KL in nats: only "not zero", as the fidelity section always had it
RESAMPLES = 2000
SEED = 0


def recovered(teacher: float, base: float, student: float, min_gap: float = MIN_GAP) -> float | None:
    """(student - base) / (teacher - base), or None when |teacher - base| < min_gap."""
    gap = teacher - base
    if not abs(gap) >= min_gap:
        return None
    return (student - base) / gap


def prompt_effect(teacher: list[float], base: list[float], student: list[float], *, min_gap: float = MIN_GAP,
                  resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """The fraction on the means of three per-input score lists (aligned by input),
    with its paired bootstrap interval, as report data."""
    if not len(teacher) == len(base) == len(student):
        raise ValueError("the three systems' scores must be aligned by input")
    n = len(teacher)
    out = {"n": n, "teacher": None, "base": None, "student": None, "recovered": None, "low": None, "high": None,
           "resamples": resamples, "min_gap": min_gap, "undefined": None}
    if n == 0:
        out["undefined"] = "no inputs"
        return out
    scores = np.asarray([teacher, base, student], dtype=float)
    t, b, s = scores.mean(axis=1)
    out.update(teacher=float(t), base=float(b), student=float(s), recovered=recovered(t, b, s, min_gap))
    if out["recovered"] is None:
        out["undefined"] = (f"teacher {t:.3g} and base {b:.3g} differ by less than {min_gap:g}: the prompt has no measurable "
                            "effect to recover")
        return out
    means = _bootstrap_means(scores, resamples, np.random.default_rng(seed))
    gap = means[0] - means[1]
    keep = np.abs(gap) >= min_gap
    if (~keep).sum() > 0.025 * resamples:
        out["undefined"] = (f"interval undefined: in {(~keep).mean():.0%} of resamples the prompt's effect is below "
                            f"{min_gap:g}")
        return out
    fractions = (means[2][keep] - means[1][keep]) / gap[keep]
    out["low"], out["high"] = (float(x) for x in np.percentile(fractions, [2.5, 97.5]))
    return out


def _bootstrap_means(scores: np.ndarray, resamples: int, rng, chunk: int = 200) -> np.ndarray:
    """(3 systems, resamples) means of paired resamples of the inputs, drawn in chunks
    so that thousands of inputs do not hold resamples x inputs draws at once."""
    n = scores.shape[1]
    parts = []
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        parts.append(scores[:, draws].mean(axis=2))
    return np.concatenate(parts, axis=1)


def agreement_effect(teacher_labels: list, base_labels: list, student_labels: list, **kw) -> dict:
    """The fraction on agreement with the teacher (label and JSON tasks), over the
    inputs where the teacher's answer parsed; the teacher agrees with itself."""
    rows = [(b == t, s == t) for t, b, s in zip(teacher_labels, base_labels, student_labels) if t is not None]
    return prompt_effect([1.0] * len(rows), [float(b) for b, _ in rows], [float(s) for _, s in rows], **kw)


def kl_effect(base_kls: list, student_kls: list, **kw) -> dict:
    """The fraction on KL(teacher || system), over the inputs where both KLs exist:
    1 - KL_student / KL_base on the means, the teacher's own KL being 0."""
    rows = [(b, s) for b, s in zip(base_kls, student_kls) if b is not None and s is not None]
    kw.setdefault("min_gap", KL_MIN_GAP)
    return prompt_effect([0.0] * len(rows), [b for b, _ in rows], [s for _, s in rows], **kw)
