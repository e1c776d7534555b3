"""What the training loop consumes: items per loss, step groups, micro-batches.

Kept apart from the recipe because every function here is a pure function of
the records, the tokenizer and the seed, and that is what makes resuming
exact: the checkpoint does not store a position in the data, a resumed run
recomputes the same step groups and skips the ones already done
(checkpoint.py). The fingerprint says which data and settings a checkpoint
belongs to.

- sft trains on `RenderedExample`s (token ids plus loss weights, render.py);
- kd on `LabelKDExample`s or `TokenKDExample`s (losses.py), whichever soft
  labels the records carry;
- on-policy on the records themselves: the student writes the reply at
  training time.

General items (data.mix_general, general_mix.py) follow the task's items,
whatever the loss: `GeneralExample`s, rendered like sft examples.

`train.balance = "answers"` changes only the order: instead of a shuffle per
epoch, each epoch draws as many items, with replacement, each with
probability proportional to 1 / (number of items with its teacher answer),
so every answer is drawn equally often in expectation. A teacher whose most
common answer covers half the inputs otherwise teaches the student that
answer for everything ambiguous, and the rare answers collapse into it
(benchmarks/rare_answers.py measures it). Sampling rather than loss weights: the loss code and its per-token
normalisation stay as they are, and a step keeps its size.

`train.reply_filter = "checks"` trains only on the teacher replies that pass
every `[[eval.checks]]` rule (`filter_by_checks`). A teacher that follows a
free-text prompt's rules in 60% of its replies would otherwise teach its
lapses as faithfully as its rule; filtered, the student learns the behaviour
the prompt asks for, and can pass the checks more often than its teacher (the
evaluation still measures it against the teacher's own replies). It costs
training examples: the summary counts them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import torch

from ..config import TrainConfig
from ..records import LabeledExample
from ..replychecks import Check
from ..render import RenderedExample, render_example, render_prompt
from ..task import TRUNCATED, Task
from .losses import kd_kind, label_kd_examples, token_kd_examples


FAILED_CHECKS = "failed_checks"  # the in-memory status of a reply train.reply_filter leaves out


def filter_by_checks(records: list[LabeledExample], checks: list[Check]) -> tuple[list[LabeledExample], list[str]]:
    """`records` with every trainable record whose teacher reply fails one of
    `checks` set to status FAILED_CHECKS (so no loss trains on it), and the ids
    of those records. The labeled file is not changed: the filter is a training
    setting, and turning it off trains on every reply again."""
    kept, failed = [], []
    for r in records:
        if r.trainable and not all(check(r.teacher_reply) for check in checks):
            failed.append(r.id)
            r = replace(r, status=FAILED_CHECKS)
        kept.append(r)
    return kept, failed


def render_for_training(records: list[LabeledExample], tokenizer, max_length: int):
    """Render the usable records; return (rendered, ids of records over max_length)."""
    rendered, too_long = [], []
    for r in records:
        if not r.trainable:
            continue
        ex = render_example(tokenizer, r.messages)
        if r.status == TRUNCATED and ex.num_trained > 1:
            # A reply cut at the limit (kept by task.truncated_replies) is trained without
            # the end-of-turn token: the teacher had not finished, and a stop there would
            # teach the student to stop mid-sentence.
            ex = RenderedExample(ex.input_ids, ex.weights[:-1] + [0.0])
        if ex.num_tokens > max_length:
            too_long.append(r.id)
            continue
        rendered.append(ex)
    return rendered, too_long


def training_items(records: list[LabeledExample], task: Task, tokenizer, cfg: TrainConfig):
    """What the step loop consumes for `cfg.loss`, and the ids of records over max_length."""
    if cfg.loss == "sft":
        return render_for_training(records, tokenizer, cfg.max_length)
    usable = [r for r in records if r.trainable]
    if not usable:
        return [], []
    if cfg.loss == "kd":
        build = label_kd_examples if kd_kind(usable) == "label" else token_kd_examples
        items = build(usable, task, tokenizer)
        sizes = [i.num_tokens for i in items]
    else:  # on-policy: the inputs, with room for the student's longest sample
        items = usable
        sizes = [len(render_prompt(tokenizer, task.student_messages(r.conversation()))) + task.config.max_new_tokens for r in usable]
    keep = [i for i, n in zip(items, sizes) if n <= cfg.max_length]
    return keep, [r.id for r, n in zip(usable, sizes) if n > cfg.max_length]


def step_groups(n: int, per_step: int, seed: int, weights: list[float] | None = None):
    """Yield the item indices of each optimiser step: a seeded shuffle per
    epoch, cut into groups of `per_step` (the last group of an epoch may be smaller).

    With `weights` (one per item), each epoch is instead `n` seeded draws with
    replacement, item i with probability weights[i] / sum(weights)."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.tensor(weights, dtype=torch.float64) if weights is not None else None
    while True:
        if w is None:
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = torch.multinomial(w, n, replacement=True, generator=generator).tolist()
        for i in range(0, n, per_step):
            yield order[i : i + per_step]


def balance_weights(answers: list) -> list[float]:
    """Sampling weight per item for train.balance = "answers": 1 / count of its
    answer, so each answer's items together weigh 1 (None, unparsed, is an answer too)."""
    counts = Counter(answers)
    return [1 / counts[a] for a in answers]


def sampling_weights(records: list[LabeledExample], too_long: list[str], cfg: TrainConfig, general: int = 0) -> list[float] | None:
    """The weights step_groups draws with for `cfg.balance` (None: plain shuffle),
    aligned with the recipe's items: training_items' (the usable records not over
    max_length, in order), then `general` general items (data.mix_general).

    A general item weighs the mean of the task items' weights: the general items
    then keep, in expectation, the share of the draws that data.mix_general gives
    them, and balancing the answers only moves weight among the task's items."""
    if cfg.balance == "none":
        return None
    skipped = set(too_long)
    weights = balance_weights([r.label for r in records if r.trainable and r.id not in skipped])
    return weights + [sum(weights) / len(weights)] * general if weights else weights


def by_length(items: list) -> list:
    """Items sorted by token count (stable), so micro-batches carry little padding.

    A step's loss is a sum over its items, so their order changes only float
    rounding. On-policy items are plain records (their length is the
    student's sample, unknown here): they keep their order, ahead of any
    general items (data.mix_general), which are sorted among themselves."""
    unsized = [e for e in items if not hasattr(e, "num_tokens")]
    return unsized + sorted((e for e in items if hasattr(e, "num_tokens")), key=lambda e: e.num_tokens)


def micro_batches(items: list, batch_size: int) -> list[list]:
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


# A piece may run this share more positions than it has tokens.
PADDING_WASTE = 0.1


def padding_pieces(batch: list, waste: float = PADDING_WASTE) -> list[list]:
    """`batch` cut, in order, into pieces that each pad at most `waste` of their tokens.

    A micro-batch is padded to its longest item, and on the language-id data
    a step of 16 carried 73% padding on average and up to 3.3x at batch 16
    (one 272-token text among 60-token ones): compute and activations for
    positions that are thrown away. Run one piece at a time, the step holds
    the activations of one piece, and they grow with the tokens trained,
    not with the longest item times the batch. The loss is a sum over items,
    so the pieces give the step's loss up to float rounding. Items without a
    known length (on-policy records) stay one piece.
    """
    if not batch or not hasattr(batch[0], "num_tokens"):
        return [batch] if batch else []
    pieces, piece, tokens, longest = [], [], 0, 0
    for item in batch:
        n = item.num_tokens
        wider = max(longest, n)
        if piece and wider * (len(piece) + 1) > (1 + waste) * (tokens + n):
            pieces.append(piece)
            piece, tokens, wider = [], 0, n
        piece.append(item)
        tokens, longest = tokens + n, wider
    pieces.append(piece)
    return pieces


def collate(batch: list[RenderedExample], pad_id: int):
    """(ids, attention mask, loss weights), each batch x longest, right-padded."""
    width = max(e.num_tokens for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    weights = torch.zeros((len(batch), width), dtype=torch.float32)
    for i, e in enumerate(batch):
        n = e.num_tokens
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        weights[i, :n] = torch.tensor(e.weights)
    return ids, mask, weights
