"""Reply checks per system: how often each system's replies keep each rule.

The rules are the task file's `[[eval.checks]]` (replychecks.py, validated
when the file is read). Every held-out reply of every system is checked; per
check and for all checks together (a reply passes "all" when it passes every
check) the section gives each system's pass count and rate with its Wilson 95%
interval and small-count warning (agreement.rate), and keeps the per-reply
pass vectors that the prompt effect (effect.py) resamples.
"""

from __future__ import annotations

from ..replychecks import Check, parse_checks
from .agreement import rate

ALL = "all checks"  # the row of a reply that passes every check


def pass_vectors(checks: list[Check], replies: dict[str, list[str]]) -> dict[str, dict[str, list[bool]]]:
    """{check name (and ALL): {system: one pass/fail per reply, in input order}}."""
    out = {c.name: {system: [c(r) for r in rs] for system, rs in replies.items()} for c in checks}
    if checks:
        out[ALL] = {system: [all(out[c.name][system][i] for c in checks) for i in range(len(rs))]
                    for system, rs in replies.items()}
    return out


def checks_section(tables: list[dict], replies: dict[str, list[str]]) -> tuple[dict, dict]:
    """(report section, pass vectors) for the task file's check tables and each system's replies."""
    checks = parse_checks(tables)
    vectors = pass_vectors(checks, replies)
    kinds = {c.name: c.kind for c in checks}
    section = {
        "n": len(next(iter(replies.values()), [])),
        "checks": [{"name": name, "kind": kinds.get(name, "all"),
                    "systems": {system: rate(sum(v), len(v)) for system, v in by_system.items()}}
                   for name, by_system in vectors.items()],
    }
    return section, vectors
