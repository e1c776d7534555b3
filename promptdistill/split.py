"""Seeded train / held-out split, stratified by gold label when there is one.

Inputs with the same text always land on the same side, so the held-out split
shares no input with training even when the input file has duplicates. A
conversation is one unit (an input of its own, by id), split whole, and
conversations that open with the same user turn (one conversation and its
continuations, or a single-turn input with that text) land on one side.
"""

from __future__ import annotations

import random
from collections import defaultdict

from .records import Example


def split_examples(examples: list[Example], heldout_fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Return (train, heldout), each in input order."""
    groups: dict[str, list[Example]] = defaultdict(list)  # opening user turn -> examples
    for e in examples:
        groups[split_key(e)].append(e)
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
    train = [e for e in examples if split_key(e) not in heldout_texts]
    heldout = [e for e in examples if split_key(e) in heldout_texts]
    return train, heldout


def split_key(e: Example) -> str:
    """What keeps inputs together in the split: the text of a single-turn input,
    the opening user turn of a conversation (so a conversation and a longer
    one that continues it never straddle training and held-out)."""
    if e.messages is None:
        return e.text
    return next(m["content"] for m in e.messages if m["role"] == "user").strip()


def subsample(examples: list[Example], limit: int, seed: int = 0) -> list[Example]:
    """A seeded random subset of `limit` examples (all when limit is 0), in input order."""
    if not limit or limit >= len(examples):
        return list(examples)
    keep = set(random.Random(seed).sample(range(len(examples)), limit))
    return [e for i, e in enumerate(examples) if i in keep]
