"""Distillation losses: what the student is trained to match.

Every loss takes the student and a micro-batch and returns the *sum* of its
per-unit losses; the training loop divides by the number of units in the whole
optimiser step, so gradient accumulation equals one big batch.

`sft` (hard labels): cross-entropy on the target reply's tokens. One unit is
one trained token.

`kd` (soft labels, forward KL from teacher to student). One unit is one example.

- Label-level, when the records carry the teacher's distribution p over the
  allowed replies (choose mode). The student's probability of each complete
  reply, q(reply_k), is scored in one packed row (below), and the loss is

      KL(p || q) = sum_k p_k (log p_k - log q(reply_k))

  i.e. the teacher-weighted cross-entropy of every allowed reply minus the
  teacher's entropy. q is the student's probability of the whole sequence,
  not renormalised over the label set, so the reply format ("Final Answer:")
  is learned along with the distribution over labels. Divided by the mean
  reply length, so it reads per token like `sft`.
- Token-level, when the records carry the teacher's top-k log-probabilities
  per reply token (generate mode, task.top_logprobs = k). The teacher's
  distribution at each position is known only on its k most likely tokens;
  the rest of its mass, r = 1 - sum(top-k), is kept as one explicit "any other
  token" outcome. The loss is the KL between the two distributions coarsened
  to those k + 1 outcomes:

      sum_i p_i (log p_i - log q_i) + r (log r - log(1 - sum_i q_i))

  with q the student's full-vocabulary probabilities. It is exact when the
  top-k hold all of the teacher's mass, and otherwise a lower bound on the
  full KL that never rewards the student for putting mass the teacher did
  not report on one token. (Top-k lists that sum above one, as some servers
  return, are renormalised first.) Averaged over the reply's tokens.

`kd_alpha` mixes in hard-label cross-entropy on the teacher's answer:
loss = (1 - alpha) * KL + alpha * CE.

`on-policy` lives in onpolicy.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..engine import shared_prefix_len
from ..errors import PromptDistillError


# ---------------------------------------------------------------------------
# The student's log-probabilities at chosen positions.


def decoder_and_head(model):
    """The transformer body and the output layer of a causal LM (LoRA layers
    stay in place inside them), or (None, None) where the model has no such split."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = get_decoder() if get_decoder else None
    if decoder is None or head is None or decoder is base:
        return None, None
    return decoder, head


def logits_at(model, ids, attention_mask, select, position_ids=None) -> torch.Tensor:
    """Logits of the positions where `select` (batch x length, bool) is true, in row-major order.

    Only those positions go through the output layer: replies are a few
    tokens of a ~60-token sequence, and the vocabulary projection (49k x
    hidden for SmolLM2) is a large share of the compute.
    """
    decoder, head = decoder_and_head(model)
    extra = {"position_ids": position_ids} if position_ids is not None else {}
    if decoder is None:
        return model(input_ids=ids, attention_mask=attention_mask, **extra).logits[select].float()
    hidden = decoder(input_ids=ids, attention_mask=attention_mask, **extra).last_hidden_state
    return head(hidden[select]).float()


def weighted_token_loss(model, ids, mask, weights):
    """Sum over tokens of weight * cross-entropy, and the sum of weights.

    Position t predicts token t+1, so the weights of the targets are shifted.
    """
    w = weights[:, 1:].to(ids.device)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[:, :-1] = w > 0
    logits = logits_at(model, ids, mask, keep)
    nll = torch.nn.functional.cross_entropy(logits, ids[:, 1:][w > 0], reduction="none")
    return (nll * w[w > 0]).sum(), w.sum()


def per_example_token_loss(model, ids, mask, weights):
    """Sum over rows of each row's weighted mean cross-entropy, and the number of rows.

    One unit per example, as kd and on-policy count theirs: the general items
    mixed into those losses (data.mix_general) weigh one example each, however
    long their reply. Each row's weights are scaled to sum to one, so the
    weighted sum of weighted_token_loss is the sum of the rows' means."""
    per_row = weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    loss_sum, _ = weighted_token_loss(model, ids, mask, weights / per_row)
    return loss_sum, ids.shape[0]


# ---------------------------------------------------------------------------
# The KL terms, on plain tensors (tested against hand computations).


def label_kl(teacher_probs: torch.Tensor, student_logq: torch.Tensor) -> torch.Tensor:
    """sum_k p_k (log p_k - log q_k), per row; zero-probability labels add nothing."""
    p = teacher_probs.to(student_logq.dtype)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), torch.zeros_like(p))
    return (plogp - p * student_logq).sum(-1)


def topk_kl(student_logp: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor) -> torch.Tensor:
    """KL from the teacher's top-k (plus a rest-of-mass outcome) to the student, per position.

    student_logp: (T, V) log-probabilities; top_ids, top_logp: (T, k).
    """
    p = top_logp.to(student_logp.dtype).exp()
    total = p.sum(-1, keepdim=True)
    p = torch.where(total > 1, p / total, p)
    rest_p = (1 - p.sum(-1)).clamp_min(0)
    logq = student_logp.gather(-1, top_ids)
    rest_q = (1 - logq.exp().sum(-1)).clamp_min(1e-12)
    kl = (p * (torch.log(p.clamp_min(1e-30)) - logq)).sum(-1)
    return kl + torch.where(rest_p > 0, rest_p * (torch.log(rest_p.clamp_min(1e-30)) - torch.log(rest_q)), torch.zeros_like(rest_p))


# ---------------------------------------------------------------------------
# Label-level KD: every allowed reply scored in one packed row per example.


@dataclass
class LabelKDExample:
    prompt_ids: list[int]
    candidates: list[list[int]]  # every allowed reply, end-of-turn included
    probs: list[float]  # the teacher's probability of each
    target: int  # index of the teacher's answer (for the kd_alpha cross-entropy)

    @property
    def num_tokens(self) -> int:
        common = shared_prefix_len(self.candidates)
        return len(self.prompt_ids) + common + sum(len(c) - common - 1 for c in self.candidates)


def _pack_candidates(ex: LabelKDExample):
    """One row: prompt + the candidates' common tokens, then the rest of every
    candidate but its last token; which position predicts which token of which
    candidate; and the row's allowed-attention matrix and positions."""
    common = shared_prefix_len(ex.candidates)
    shared = ex.prompt_ids + ex.candidates[0][:common]
    tokens, positions, owner = list(shared), list(range(len(shared))), [-1] * len(shared)
    targets = []  # (row index predicting, token, candidate or -1 for all)
    for t in range(common):
        targets.append((len(ex.prompt_ids) - 1 + t, ex.candidates[0][t], -1))
    for k, cand in enumerate(ex.candidates):
        tail = cand[common:]
        targets.append((len(shared) - 1, tail[0], k))
        for j in range(1, len(tail)):
            targets.append((len(tokens), tail[j], k))
            tokens.append(tail[j - 1])
            positions.append(len(shared) + j - 1)
            owner.append(k)
    own = torch.tensor(owner)
    idx = torch.arange(len(tokens))
    causal = idx[None, :] <= idx[:, None]
    same = (own[None, :] == -1) | (own[None, :] == own[:, None])
    return tokens, positions, targets, causal & same


def label_kd_loss(model, batch: list[LabelKDExample], alpha: float = 0.0):
    """Sum over the batch of (1 - alpha) * KL(p || q) + alpha * CE, per token of reply; and the KL sum."""
    device = next(model.parameters()).device
    packed = [_pack_candidates(ex) for ex in batch]
    width = max(len(p[0]) for p in packed)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    pos = torch.zeros((len(batch), width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(batch), 1, 1)  # pads see themselves: no empty rows
    select = torch.zeros((len(batch), width), dtype=torch.bool)
    for b, (tokens, positions, targets, allow) in enumerate(packed):
        n = len(tokens)
        ids[b, :n] = torch.tensor(tokens)
        pos[b, :n] = torch.tensor(positions)
        allowed[b, :n, :n] = allow
        for row, _, _ in targets:
            select[b, row] = True
    dtype = next(model.parameters()).dtype
    mask = torch.zeros((len(batch), 1, width, width), dtype=dtype)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(dtype).min)
    logp = torch.log_softmax(logits_at(model, ids.to(device), mask.to(device), select.to(device), pos.to(device)), dim=-1)
    # logits_at returns the selected rows in row-major order: map (b, row) -> index
    index = {}
    for b, r in zip(*torch.nonzero(select, as_tuple=True)):
        index[(int(b), int(r))] = len(index)
    total = torch.zeros((), device=device)
    kl_sum = 0.0
    for b, ex in enumerate(batch):
        common, per_candidate = 0, [0] * len(ex.candidates)
        for row, token, k in packed[b][2]:
            term = logp[index[(b, row)], token]
            if k == -1:
                common = common + term
            else:
                per_candidate[k] = per_candidate[k] + term
        logq = torch.stack([common + x for x in per_candidate])
        mean_len = sum(len(c) for c in ex.candidates) / len(ex.candidates)
        kl = label_kl(torch.tensor(ex.probs, device=device), logq)
        ce = -logq[ex.target] / len(ex.candidates[ex.target])
        total = total + (1 - alpha) * kl / mean_len + alpha * ce
        kl_sum += float(kl.detach())
    return total, kl_sum


# ---------------------------------------------------------------------------
# Token-level KD on the teacher's own reply tokens.


@dataclass
class TokenKDExample:
    prompt_ids: list[int]
    reply_ids: list[int]  # the teacher's tokens, end-of-turn included when it stopped
    top: list[list[list]]  # per reply token: [[token_id, logprob], ...]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.reply_ids)


def token_kd_loss(model, batch: list[TokenKDExample], alpha: float = 0.0):
    """Sum over the batch of each example's mean per-token (1 - alpha) * KL + alpha * CE; and the KL sum."""
    device = next(model.parameters()).device
    rows = [ex.prompt_ids + ex.reply_ids[:-1] for ex in batch]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    select = torch.zeros((len(batch), width), dtype=torch.bool)
    for b, (r, ex) in enumerate(zip(rows, batch)):
        ids[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = 1
        select[b, len(ex.prompt_ids) - 1 : len(ex.prompt_ids) - 1 + len(ex.reply_ids)] = True
    logp = torch.log_softmax(logits_at(model, ids.to(device), mask.to(device), select.to(device)), dim=-1)
    total = torch.zeros((), device=device)
    kl_sum, start = 0.0, 0
    for ex in batch:
        n = len(ex.reply_ids)
        rows_logp = logp[start : start + n]
        start += n
        top_ids = torch.tensor([[t for t, _ in pos] for pos in ex.top], device=device)
        top_logp = torch.tensor([[lp for _, lp in pos] for pos in ex.top], device=device)
        kl = topk_kl(rows_logp, top_ids, top_logp)
        ce = -rows_logp.gather(1, torch.tensor(ex.reply_ids, device=device).unsqueeze(1)).squeeze(1)
        total = total + ((1 - alpha) * kl + alpha * ce).mean()
        kl_sum += float(kl.detach().mean())
    return total, kl_sum


# ---------------------------------------------------------------------------
# Building the examples from labeled records.


def label_kd_examples(records, task, tokenizer):
    """LabelKDExamples from records that carry label_probs (choose mode)."""
    from ..render import render_prompt, reply_ids

    out, candidates = [], None
    for r in records:
        prompt_messages = r.messages[:-1] if r.messages and r.messages[-1]["role"] == "assistant" else r.messages
        if candidates is None:
            candidates = [reply_ids(tokenizer, prompt_messages, task.label_reply(label)) for label in task.labels]
        probs = [float(r.label_probs.get(label, 0.0)) for label in task.labels]
        if not math.isclose(sum(probs), 1.0, abs_tol=1e-3):
            raise PromptDistillError(f"record {r.id!r}: label_probs over the task's labels sum to {sum(probs):.4f}, not 1 "
                                     "(labeled with another label set?)", field="label_probs")
        out.append(LabelKDExample(render_prompt(tokenizer, prompt_messages), candidates, probs, task.labels.index(r.label)))
    return out


def token_kd_examples(records, task, tokenizer):
    """TokenKDExamples from records that carry the teacher's top-k reply log-probabilities."""
    from ..render import render_prompt

    if task.config.reply_prefix:
        raise PromptDistillError("token-level kd does not support task.reply_prefix (the stored log-probabilities cover only "
                                 "the generated part of the reply); use loss 'sft' or 'on-policy'", field="train.loss")
    out = []
    for r in records:
        lp = r.teacher_logprobs
        if not lp.get("token_ids") or len(lp["token_ids"]) != len(lp.get("top") or []):
            raise PromptDistillError(f"record {r.id!r}: teacher_logprobs needs one top-k list per reply token",
                                     field="teacher_logprobs")
        prompt = render_prompt(tokenizer, task.student_messages(r.conversation()))
        out.append(TokenKDExample(prompt, list(lp["token_ids"]), lp["top"]))
    return out


def kd_kind(records) -> str:
    """'label' or 'token': which soft labels the records carry (all of them must carry the same)."""
    if all(r.label_probs for r in records):
        return "label"
    if all(r.teacher_logprobs for r in records):
        return "token"
    missing = next(r for r in records if not r.label_probs and not r.teacher_logprobs)
    raise PromptDistillError(
        f"loss 'kd' needs soft labels on every record, and record {missing.id!r} has none: label in choose mode "
        "(task.answer_mode = \"choose\") for a distribution over labels, or in generate mode with task.top_logprobs > 0 "
        "(a reasoning teacher's replies carry none: their log-probabilities cover the thinking the student never writes)",
        field="train.loss",
    )
