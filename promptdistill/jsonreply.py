"""Free-form JSON replies: reading them, and comparing them field by field.

Tasks with `reply_format = "json"` ask the teacher for a JSON object with a
fixed set of fields (`json_fields`) instead of one label. A reply is *valid*
when it contains a JSON object that has every required field. Its canonical
form (the required fields only, in the configured order, compact, unicode
kept) is what the tool treats as the "label": the student is trained to write
it, and two replies agree exactly when their canonical forms are equal.

Exact agreement is strict (one differing word in a summary breaks it), so
evaluation also reports agreement per field: the share of inputs on which a
system's value for that field equals the teacher's, counted over the inputs
where the teacher's reply is valid (an invalid student reply counts as
disagreeing on every field).
"""

from __future__ import annotations

import json

# Parse statuses of JSON replies (stored on labeled records and predictions).
INVALID_JSON = "invalid_json"
MISSING_FIELDS = "missing_fields"

_decoder = json.JSONDecoder()


def find_json_object(reply: str) -> dict | None:
    """The first JSON object in `reply` (models often wrap it in prose or a ``` fence)."""
    start = reply.find("{")
    while start != -1:
        try:
            obj, _ = _decoder.raw_decode(reply, start)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return obj
        start = reply.find("{", start + 1)
    return None


def parse_json_reply(reply: str, fields: list[str]) -> tuple[str | None, str]:
    """(canonical JSON of the required fields, status); None unless status is 'ok'."""
    obj = find_json_object(reply)
    if obj is None:
        return None, INVALID_JSON
    if any(f not in obj for f in fields):
        return None, MISSING_FIELDS
    return canonical_json({f: obj[f] for f in fields}), "ok"


def canonical_json(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def field_agreement(preds: list[str | None], teacher: list[str | None], fields: list[str]) -> dict[str, float | None]:
    """Per field: how often a system's value equals the teacher's, over inputs with a valid teacher reply.

    Both lists hold canonical JSON (or None for an invalid reply), aligned by input.
    """
    pairs = [(json.loads(p) if p is not None else None, json.loads(t)) for p, t in zip(preds, teacher) if t is not None]
    if not pairs:
        return {f: None for f in fields}
    return {f: sum(p is not None and p.get(f) == t.get(f) for p, t in pairs) / len(pairs) for f in fields}


def json_metrics(task, preds, teacher_preds) -> dict:
    """Validity, exact agreement and per-field agreement with the teacher, for a report."""
    fields = task.config.json_fields
    valid = sum(p.label is not None for p in preds) / len(preds) if preds else None
    if teacher_preds is None:
        return {"validity": valid, "exact_agreement": None, "field_agreement": {f: None for f in fields}, "mean_field_agreement": None}
    labels, teacher_labels = [p.label for p in preds], [t.label for t in teacher_preds]
    exact = [p == t for p, t in zip(labels, teacher_labels) if t is not None]
    per_field = field_agreement(labels, teacher_labels, fields)
    known = [v for v in per_field.values() if v is not None]
    return {
        "validity": valid,
        "exact_agreement": sum(exact) / len(exact) if exact else None,
        "field_agreement": per_field,
        "mean_field_agreement": sum(known) / len(known) if known else None,
    }
