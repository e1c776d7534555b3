"""Seeded train / held-out split, stratified by gold label when there is one.

Inputs with the same text always land on the same side, so the held-out split
shares no input with training even when the input file has duplicates.
"""

from __future__ import annotations

import random
from collections import defaultdict

from .records import Example


def split_examples(examples: list[Example], heldout_fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Return (train, heldout), each in input order."""
    groups: dict[str, list[Example]] = defaultdict(list)  # text -> examples with that text
    for e in examples:
        groups[e.text].append(e)
    strata: dict[str | None, list[str]] = defaultdict(list)  # gold label -> texts
    for text, group in groups.items():
        strata[group[0].gold_label].append(text)

    rng = random.Random(seed)
    heldout_texts = set()
    for label in sorted(strata, key=lambda x: (x is None, x or "")):
        texts = strata[label]
        rng.shuffle(texts)
        k = round(len(texts) * heldout_fraction)
        if len(texts) >= 2:
            k = min(max(k, 1), len(texts) - 1)
        heldout_texts.update(texts[:k])
    train = [e for e in examples if e.text not in heldout_texts]
    heldout = [e for e in examples if e.text in heldout_texts]
    return train, heldout


def subsample(examples: list[Example], limit: int, seed: int = 0) -> list[Example]:
    """A seeded random subset of `limit` examples (all when limit is 0), in input order."""
    if not limit or limit >= len(examples):
        return list(examples)
    keep = set(random.Random(seed).sample(range(len(examples)), limit))
    return [e for i, e in enumerate(examples) if i in keep]
