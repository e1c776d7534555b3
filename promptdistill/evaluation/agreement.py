"""Agreement with the teacher, read against reference points.

"The student agrees 75.4% with the teacher" says little on its own: 75% is
excellent when the teacher disagrees with itself a quarter of the time, and
worthless when one answer covers 75% of the inputs. This module puts the number
in context, with pure functions over plain data (lists of labels aligned by
input, None for an unparsed answer; dicts of label probabilities). No model code.

- Per-answer fidelity: for each answer the teacher gave, how often a system
  gives it too; the confusion of system against teacher; macro agreement (each
  teacher answer weighs the same, so a rare answer the student never learned
  shows even when the frequent ones hide it); the worst answers.
- Uncertainty: Wilson 95% intervals on every agreement and accuracy, and a
  plain warning where a count is too small to tell.
- Floors: always answering the teacher's most frequent answer, and a
  surface-feature baseline (surface_baseline.py) fitted on the same teacher
  labels; whether the student beats each, by how much, and a paired test.
- Ceiling: the teacher's self-consistency, the agreement a second, independent
  draw from the teacher itself would reach with its recorded answer.

Conventions shared with systems.py: agreement is counted over the inputs where
the teacher's answer parsed; a system's unparsed answer (None) counts as a
disagreement and has its own confusion column, `UNPARSED`.
"""

from __future__ import annotations

import json
import math
from collections import Counter

from ..task import UNPARSED

# The confusion's row and column of the answers beyond MAX_CONFUSION.
OTHER = "(other)"
MAX_CONFUSION = 100  # a 77-intent task still fits whole

# Warn when an agreement or accuracy rests on fewer than this many inputs...
MIN_COUNT = 10
# ...or its 95% interval is wider than this (in rate units, so 0.30 = 30
# points). At 30 points the interval cannot separate, say, 60% from 90%, the
# difference between a student that has not learned an answer and one that
# has. A rate near 50% needs about 40 inputs to get under it, a rate near 90%
# about 25; with fewer than 10 inputs no rate is under it except 0% or 100%,
# and those are exactly the ones a single extra input would move most.
MAX_INTERVAL_WIDTH = 0.30

# A difference against a floor is called a win or a loss when the exact
# McNemar test on the inputs where the two differ gives p below this.
ALPHA = 0.05


# ---------------------------------------------------------------- intervals

def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a binomial rate (95% with z = 1.96).

    Why Wilson and not the normal approximation p +- z*sqrt(p(1-p)/n): the
    per-answer counts here are often small and the rates often near 0 or 1,
    exactly where the normal interval fails. At 10/10 it is (1, 1), claiming
    certainty from ten inputs; at 9/10 its upper end passes 1; and its actual
    coverage drops well below 95% for small n. Wilson's interval inverts the
    score test instead, so it stays inside [0, 1], is never zero-width
    (10/10 -> (0.722, 1)), and keeps close to its nominal coverage at small n
    (Brown, Cai & DasGupta 2001, "Interval estimation for a binomial
    proportion"). With n = 0 nothing is known: (0, 1).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Clamp the rounding error at the ends (0/n and n/n touch 0 and 1 exactly).
    return max(0.0, centre - half), min(1.0, centre + half)


def small_count_warning(n: int, low: float, high: float) -> str | None:
    """A plain sentence when a rate on `n` inputs with interval (low, high) is too uncertain to read, else None."""
    if n == 0:
        return "no inputs"
    if n < MIN_COUNT:
        return f"only {n} input{'s' if n != 1 else ''}: too few to tell"
    if high - low > MAX_INTERVAL_WIDTH:
        return f"95% interval {100 * low:.0f}-{100 * high:.0f}% is too wide to tell"
    return None


def rate(successes: int, n: int) -> dict:
    """A rate with its Wilson 95% interval and small-count warning, as report data."""
    low, high = wilson_interval(successes, n)
    return {
        "successes": successes,
        "n": n,
        "rate": successes / n if n else None,
        "low": low,
        "high": high,
        "warning": small_count_warning(n, low, high),
    }


# ---------------------------------------------------------------- per answer

def answer_order(teacher_labels: list, labels: list | None = None) -> list[str]:
    """Teacher answers in report order: `labels` (the task's label set) first in
    its order, then any other answer the teacher gave, most frequent first."""
    counts = Counter(t for t in teacher_labels if t is not None)
    order = list(labels or [])
    order += sorted((a for a in counts if a not in order), key=lambda a: (-counts[a], a))
    return order


def per_answer_fidelity(teacher_labels: list, system_labels: list, labels: list | None = None, worst: int = 3) -> dict:
    """How one system reproduces each of the teacher's answers.

    `teacher_labels` and `system_labels` are aligned by input (None: unparsed).
    Inputs where the teacher's answer did not parse are left out. Returns:

    - `agreement`: overall, as `rate()` (share of inputs where the system
      gives the teacher's answer, with its interval and warning);
    - `per_answer`: teacher answer -> `rate()` of agreement on the inputs
      where the teacher gave that answer (its `n` is the answer's count),
      for every answer in `labels` too, even if the teacher never gave it;
    - `macro_agreement`: the mean of the per-answer rates over the answers
      the teacher gave (each answer weighs the same, however frequent);
    - `worst`: up to `worst` answers with the lowest agreement (ties: the
      more frequent first), the ones to look at;
    - `confusion`: teacher answer -> system answer -> count, the system's
      columns being the teacher's answers, then any other answer the system
      gave, most frequent first, then `UNPARSED`. At most `MAX_CONFUSION`
      rows (the most frequent teacher answers) and as many columns besides
      `UNPARSED`; the rest is summed in an `OTHER` row and column (an open
      task or a free-text JSON field has hundreds of distinct answers, and a
      dense table of them would swamp report.json);
    - `warnings`: "answer: warning" for every uncertain per-answer rate.
    """
    if len(teacher_labels) != len(system_labels):
        raise ValueError(f"{len(teacher_labels)} teacher labels but {len(system_labels)} system labels")
    pairs = [(t, s) for t, s in zip(teacher_labels, system_labels) if t is not None]
    rows = answer_order(teacher_labels, labels)
    n_by_answer = Counter(t for t, _ in pairs)
    agree_by_answer = Counter(t for t, s in pairs if t == s)
    per_answer = {t: rate(agree_by_answer[t], n_by_answer[t]) for t in rows}
    confusion = _confusion(pairs, rows)
    given = [t for t in rows if per_answer[t]["n"]]
    ranked = sorted(given, key=lambda t: (per_answer[t]["rate"], -per_answer[t]["n"]))
    return {
        "agreement": rate(sum(t == s for t, s in pairs), len(pairs)),
        "macro_agreement": sum(per_answer[t]["rate"] for t in given) / len(given) if given else None,
        "per_answer": per_answer,
        "worst": ranked[:worst],
        "confusion": confusion,
        "warnings": [f"{t}: {per_answer[t]['warning']}" for t in given if per_answer[t]["warning"]],
    }


def _confusion(pairs: list[tuple], rows: list[str]) -> dict:
    """Dense teacher x system counts, capped at MAX_CONFUSION answers each way (see per_answer_fidelity)."""
    if len(rows) > MAX_CONFUSION:
        n = Counter(t for t, _ in pairs)
        top = set(sorted(rows, key=lambda t: -n[t])[:MAX_CONFUSION])
        kept_rows = [t for t in rows if t in top]
    else:
        kept_rows = rows
    foreign = Counter(s for _, s in pairs if s is not None and s not in kept_rows)
    kept_cols = kept_rows + [c for c, _ in sorted(foreign.items(), key=lambda x: (-x[1], x[0]))][:max(0, MAX_CONFUSION - len(kept_rows))]
    row_set, col_set = set(kept_rows), set(kept_cols)
    other_row = len(kept_rows) < len(rows)
    other_col = any(s is not None and s not in col_set for _, s in pairs)
    cols = kept_cols + ([OTHER] if other_col else []) + [UNPARSED]
    confusion = {t: {c: 0 for c in cols} for t in kept_rows + ([OTHER] if other_row else [])}
    for t, s in pairs:
        row = t if t in row_set else OTHER
        col = UNPARSED if s is None else s if s in col_set else OTHER
        confusion[row][col] += 1
    return confusion


def accuracy(gold_labels: list, system_labels: list) -> dict | None:
    """Accuracy against gold labels with its Wilson interval, over inputs with a
    gold label (an unparsed answer counts as wrong, as in systems.py); None without gold."""
    pairs = [(g, s) for g, s in zip(gold_labels, system_labels) if g is not None]
    return rate(sum(g == s for g, s in pairs), len(pairs)) if pairs else None


# ---------------------------------------------------------------- floors

def majority_floor(teacher_labels: list) -> dict | None:
    """Always answering the teacher's most frequent answer: its agreement and macro agreement.

    Its macro agreement is 1/K for K distinct teacher answers (it agrees on
    every input of one answer and none of the others), which is why macro
    agreement is the harder floor to fake. Ties go to the answer seen first
    (report.json's `majority_label` breaks ties by set order, so on a tie the
    two may name different answers, with the same agreement).
    """
    given = [t for t in teacher_labels if t is not None]
    if not given:
        return None
    counts = Counter(given)
    label = max(counts, key=counts.get)
    return {
        "label": label,
        "agreement": rate(counts[label], len(given)),
        "macro_agreement": 1 / len(counts),
        "predictions": [label] * len(teacher_labels),
    }


def paired_comparison(teacher_labels: list, system_labels: list, floor_labels: list) -> dict:
    """Does a system agree with the teacher more often than a floor does, on the same inputs?

    Both were scored on the same inputs, so the right test is paired: only
    the inputs where exactly one of them agrees with the teacher carry
    information (`wins`: the system agrees and the floor does not; `losses`:
    the reverse). The exact McNemar test asks how likely so lopsided a split
    is if either were equally likely to be the one that agrees; its two-sided
    p-value is exact (binomial, no large-sample approximation), so it holds
    for a handful of differing inputs too. Intervals on each rate separately
    would waste this pairing and call real differences "overlapping".

    `verdict`: "beats" / "below" when p < ALPHA, else "no clear difference".
    """
    pairs = [(t, s, f) for t, s, f in zip(teacher_labels, system_labels, floor_labels) if t is not None]
    wins = sum(s == t and f != t for t, s, f in pairs)
    losses = sum(f == t and s != t for t, s, f in pairs)
    n = len(pairs)
    p = mcnemar_exact_p(wins, losses)
    verdict = "no clear difference"
    if p < ALPHA:
        verdict = "beats" if wins > losses else "below"
    return {
        "n": n,
        "system": sum(s == t for t, s, _ in pairs) / n if n else None,
        "floor": sum(f == t for t, _, f in pairs) / n if n else None,
        "difference": (wins - losses) / n if n else None,
        "wins": wins,
        "losses": losses,
        "p_value": p,
        "verdict": verdict,
    }


def mcnemar_exact_p(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value: P(a split at least this uneven) for
    Binomial(wins + losses, 1/2), doubled and capped at 1."""
    m = wins + losses
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**m)  # exact integers, one correctly rounded division


# ---------------------------------------------------------------- ceiling

def self_consistency_ceiling_from_probs(label_probs: list[dict | None], recorded: list | None = None) -> dict | None:
    """The teacher's self-consistency from its stored label distributions, without new requests.

    For an input where the teacher gives answer k with probability p_k, a
    second teacher run that samples its answer agrees with the recorded one,
    r, with probability p_r. When the recorded answer is the most likely one
    (choose mode, or greedy decoding on a label task), p_r = max_k p_k. So

        ceiling = (1/N) * sum over inputs i of p_i[r_i]     (= mean max_k p_i,k)

    over the N inputs with a distribution (and, if `recorded` is given, a
    recorded answer). Without `recorded` the top probability is used.

    Why this and not sum_k p_k^2 (the chance that two samples agree with each
    other): the student is compared with the teacher's recorded answer, a
    fixed answer per input, not with a fresh sample, so the reference is "a
    sample against the recorded answer". It is the agreement at which the
    student's disagreements are no more frequent than the teacher's own
    sampling noise; not a hard bound: a student that reproduces the teacher's
    argmax on every input reaches 100% (its share of the ceiling can pass 1).
    A student below it loses more agreement than the inputs' own ambiguity
    (as the teacher sees it) explains. The draw it describes is at
    temperature 1 over the label set, the distribution choose mode stores;
    it needs no new requests and has no sampling noise of its own.
    """
    if recorded is not None and len(recorded) != len(label_probs):
        raise ValueError(f"{len(label_probs)} distributions but {len(recorded)} recorded answers")
    values = []
    for i, probs in enumerate(label_probs):
        if not probs:
            continue
        total = sum(probs.values())
        if recorded is None:
            values.append(max(probs.values()) / total)
        elif recorded[i] is not None:
            values.append(probs.get(recorded[i], 0.0) / total)
    if not values:
        return None
    formula = ("mean over inputs of the teacher's top label probability" if recorded is None
               else "mean over inputs of the probability the teacher's distribution gives its recorded answer")
    return {"mode": "probs", "ceiling": sum(values) / len(values), "n": len(values), "formula": formula}


def self_consistency_ceiling_from_samples(recorded: list, resamples: list[list]) -> dict | None:
    """The teacher's self-consistency from K extra sampled answers per input (the caller draws them).

        ceiling = (1/N) * sum over inputs i of (1/K_i) * #{j : s_i,j == r_i}

    the mean, over the N inputs with a recorded answer r_i and at least one
    resample, of the share of resamples s_i,1..K_i that give r_i (an unparsed
    resample, None, counts as disagreeing). Each input weighs the same, as in
    agreement. The resamples must be new draws: the votes stored at labeling
    time include the draw that became the recorded answer (the majority), so
    their share overstates the teacher's consistency.
    """
    if len(recorded) != len(resamples):
        raise ValueError(f"{len(recorded)} recorded answers but {len(resamples)} lists of resamples")
    shares, ks = [], []
    for r, samples in zip(recorded, resamples):
        if r is None or not samples:
            continue
        shares.append(sum(s == r for s in samples) / len(samples))
        ks.append(len(samples))
    if not shares:
        return None
    return {"mode": "samples", "ceiling": sum(shares) / len(shares), "n": len(shares),
            "k": min(ks) if min(ks) == max(ks) else f"{min(ks)}-{max(ks)}",
            "formula": "mean over inputs of the share of resampled answers equal to the recorded answer"}


# ---------------------------------------------------------------- together

def reference_points(teacher_labels: list, systems: dict[str, list], *, gold_labels: list | None = None,
                     labels: list | None = None, surface: dict | None = None, ceiling: dict | None = None) -> dict:
    """Agreement in context on one label (or one JSON field), as one dict for report.json: per-answer
    fidelity, floors, ceiling.

    - `teacher_labels`: the teacher's held-out answers (None: unparsed);
    - `systems`: name -> that system's answers on the same inputs (e.g.
      {"base": [...], "student": [...]});
    - `gold_labels`: gold labels on the same inputs (None where absent), for
      the accuracy intervals;
    - `labels`: the task's label set, for the order of the tables;
    - `surface`: surface_baseline.evaluate_surface_baseline(...)'s result (or
      one field of it), `{"available": False, ...}` or None;
    - `ceiling`: a self_consistency_ceiling_* result, or None.
    """
    n = sum(t is not None for t in teacher_labels)
    majority = majority_floor(teacher_labels)
    floors = {"majority": majority}
    if surface is not None:
        floors["surface"] = surface
    out = {"n": n, "labels": answer_order(teacher_labels, labels), "systems": {}, "ceiling": ceiling,
           "floors": {name: _without_predictions(f) for name, f in floors.items()}}
    for name, preds in systems.items():
        m = per_answer_fidelity(teacher_labels, preds, labels)
        m["accuracy"] = accuracy(gold_labels, preds) if gold_labels is not None else None
        m["against"] = {fname: paired_comparison(teacher_labels, preds, f["predictions"])
                        for fname, f in floors.items() if f and f.get("predictions") is not None}
        agree = m["agreement"]["rate"]
        m["share_of_ceiling"] = agree / ceiling["ceiling"] if ceiling and ceiling.get("ceiling") and agree is not None else None
        out["systems"][name] = m
    return out


def _without_predictions(floor: dict | None) -> dict | None:
    """A floor for report.json: its summary, not its per-input answers (nor a JSON baseline's per-field results)."""
    return None if floor is None else {k: v for k, v in floor.items() if k not in ("predictions", "fields")}


def json_field_labels(canonical: list, field: str) -> list:
    """One field's values as labels (JSON text, so lists and numbers are labels too)
    from canonical JSON replies (None stays None: an invalid reply has no field)."""
    return [None if c is None else json.dumps(json.loads(c).get(field), ensure_ascii=False, sort_keys=True) for c in canonical]


def json_reference_points(teacher_labels: list, systems: dict[str, list], fields: list[str], *,
                          surface: dict | None = None) -> dict[str, dict]:
    """reference_points per field of a JSON task, from canonical JSON labels;
    `surface` is surface_baseline.evaluate_surface_baseline(..., json_fields=fields)'s result."""
    out = {}
    for f in fields:
        if surface is None:
            fs = None
        elif surface.get("available") and f in surface.get("fields", {}):
            fs = surface["fields"][f]
        else:  # unavailable: say so for every field
            fs = {k: v for k, v in surface.items() if k != "fields"}
        out[f] = reference_points(json_field_labels(teacher_labels, f),
                                  {name: json_field_labels(p, f) for name, p in systems.items()}, surface=fs)
    return out
