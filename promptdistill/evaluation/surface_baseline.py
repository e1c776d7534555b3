"""A surface-feature floor: what a cheap text classifier learns from the same teacher labels.

If a character n-gram model fitted on the training inputs' teacher labels
agrees with the teacher as often as the student does, the student has learned
no more than the input's surface (its script, its keywords) and the prompt's
reasoning was not distilled. So the report shows this floor next to the
student's agreement (agreement.py).

The model: TF-IDF of character 1-3-grams (sublinear term frequency) and a
logistic regression (L2, C = 1, lbfgs), fitted on the training inputs whose
teacher label parsed and was kept for training, scored on the held-out inputs
against the teacher's held-out answers. Deliberately untuned: it is a floor,
and tuning it on the held-out inputs would make it a different experiment.
Deterministic: fixed `random_state`, and lbfgs has no randomness of its own.

scikit-learn is an optional extra (`pip install 'promptdistill[baseline]'`);
without it `evaluate_surface_baseline` reports the floor as unavailable with
that install line, and `fit_surface_baseline` raises `BaselineUnavailable`.
"""

from __future__ import annotations

import json
from collections import Counter

from ..jsonreply import canonical_json
from .agreement import json_field_labels, per_answer_fidelity, rate

INSTALL_LINE = "pip install 'promptdistill[baseline]'"
RANDOM_STATE = 0
# Character n-grams kept (the most frequent); bounds memory on big training sets.
MAX_FEATURES = 200_000
# A JSON field with more distinct teacher values than this, or than half its
# training inputs (a summary, a free sentence), is not a classification
# problem; its floor is its most frequent value, as for a constant label.
MAX_FIELD_CLASSES = 100


class BaselineUnavailable(ImportError):
    """scikit-learn is not installed; the message says how to install it."""


def _sklearn():
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
    except ImportError as e:
        raise BaselineUnavailable(f"the surface baseline needs scikit-learn, which is not installed ({e}): {INSTALL_LINE}") from e
    return TfidfVectorizer, LogisticRegression, make_pipeline


class SurfaceBaseline:
    """A fitted baseline: `predict(texts)` -> one label per text."""

    def __init__(self, pipeline=None, constant: str | None = None, n_train: int = 0, classes: list | None = None):
        self._pipeline, self.constant, self.n_train, self.classes = pipeline, constant, n_train, classes or []

    def predict(self, texts: list[str]) -> list[str]:
        if self._pipeline is None:
            return [self.constant] * len(texts)
        return [str(y) for y in self._pipeline.predict(list(texts))]


def fit_surface_baseline(train_texts: list[str], train_labels: list, *, constant_above: int | None = None) -> SurfaceBaseline:
    """Fit the character 1-3-gram logistic regression on (text, teacher label) pairs.

    Pairs whose label is None (the teacher's answer did not parse) are left
    out. With a single distinct label there is nothing to separate, and with
    more than `constant_above` distinct labels (if given) no classifier is
    worth fitting: the baseline then answers the most frequent label. Raises
    BaselineUnavailable without scikit-learn, ValueError without any label.
    """
    TfidfVectorizer, LogisticRegression, make_pipeline = _sklearn()
    if len(train_texts) != len(train_labels):
        raise ValueError(f"{len(train_texts)} training texts but {len(train_labels)} labels")
    pairs = [(x, y) for x, y in zip(train_texts, train_labels) if y is not None]
    if not pairs:
        raise ValueError("no training input has a teacher label")
    counts = Counter(y for _, y in pairs)
    if len(counts) == 1 or (constant_above is not None and len(counts) > constant_above):
        # most frequent; ties go to the label seen first (Counter keeps insertion order)
        return SurfaceBaseline(constant=max(counts, key=counts.get), n_train=len(pairs), classes=list(counts))
    pipeline = make_pipeline(
        TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, max_features=MAX_FEATURES),
        LogisticRegression(C=1.0, max_iter=1000, random_state=RANDOM_STATE),
    )
    pipeline.fit([x for x, _ in pairs], [y for _, y in pairs])
    return SurfaceBaseline(pipeline, n_train=len(pairs), classes=list(counts))


def score(baseline: SurfaceBaseline, texts: list[str], teacher_labels: list, labels: list | None = None) -> dict:
    """The baseline's answers on held-out `texts` and its agreement with the
    teacher's answers there (overall with its interval, and macro), as report data;
    `predictions` (aligned with `texts`) feed agreement.paired_comparison."""
    preds = baseline.predict(texts)
    fid = per_answer_fidelity(teacher_labels, preds, labels)
    out = {
        "available": True,
        "model": "tf-idf character 1-3-grams + logistic regression" if baseline.constant is None else "constant (most frequent training label)",
        "n_train": baseline.n_train,
        "agreement": fid["agreement"],
        "macro_agreement": fid["macro_agreement"],
        "predictions": preds,
    }
    if baseline.constant is not None:
        out["note"] = f"{len(baseline.classes)} distinct training label{'s' if len(baseline.classes) != 1 else ''}: answers `{baseline.constant}`"
    return out


def unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason}


def evaluate_surface_baseline(train_texts: list[str], train_labels: list, heldout_texts: list[str], heldout_teacher_labels: list,
                              *, labels: list | None = None, json_fields: list[str] | None = None) -> dict:
    """Fit on the training inputs' teacher labels, score on the held-out inputs; never raises for a missing extra.

    Label tasks: `score()`'s dict. JSON tasks (`json_fields`, labels being
    canonical JSON): the same for every field in `fields` (one baseline per
    field, fitted on that field's values; see MAX_FIELD_CLASSES), plus the
    exact agreement of the object the per-field answers make together
    (`exact_agreement`, also as `agreement`, with the objects as `predictions`).
    Without scikit-learn, or without a training label: {"available": False, "reason": ...}.
    """
    try:
        _sklearn()
    except BaselineUnavailable as e:
        return unavailable(str(e))
    if not any(y is not None for y in train_labels):
        return unavailable("no training input has a teacher label")
    if json_fields is None:
        return score(fit_surface_baseline(train_texts, train_labels), heldout_texts, heldout_teacher_labels, labels)
    fields = {}
    for f in json_fields:
        values = json_field_labels(train_labels, f)
        n_values = sum(v is not None for v in values)
        baseline = fit_surface_baseline(train_texts, values, constant_above=min(MAX_FIELD_CLASSES, max(1, n_values // 2)))
        fields[f] = score(baseline, heldout_texts, json_field_labels(heldout_teacher_labels, f))
    # Exact: every field's answer equals the teacher's value (compared field by
    # field, as values; the object is what the baseline would have written).
    teacher_fields = {f: json_field_labels(heldout_teacher_labels, f) for f in json_fields}
    exact = [all(fields[f]["predictions"][i] == teacher_fields[f][i] for f in json_fields)
             for i, t in enumerate(heldout_teacher_labels) if t is not None]
    objects = [canonical_json({f: json.loads(fields[f]["predictions"][i]) for f in json_fields}) for i in range(len(heldout_texts))]
    exact_rate = rate(sum(exact), len(exact))
    return {
        "available": True,
        "model": "per field: tf-idf character 1-3-grams + logistic regression",
        "fields": fields,
        "exact_agreement": exact_rate,
        # The whole object as one label, so that agreement.reference_points can
        # take this result on the canonical replies too. No macro: answers are
        # objects here, mostly distinct, and a mean over them says nothing.
        "agreement": exact_rate,
        "macro_agreement": None,
        "predictions": objects,
    }
