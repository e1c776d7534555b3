"""The inference engine: token ids in, token ids or log-probabilities out.

It knows nothing about tasks or chat templates. Two operations:

- `generate`: continue each prompt until an end-of-turn token or
  `max_new_tokens`, greedy when temperature is 0.
- `score_continuations`: the total log-probability of each candidate
  continuation after one shared context. The context is run once; its
  key/value cache is then repeated across the candidates, which are scored
  together in one batched forward. This is what `choose` mode uses to score
  every allowed answer without one full forward per label.

Each has a shared-prefix form for prompts that all start with the same
tokens (`decode_with_prefix`, `score_with_prefix`, `continuation_logprobs`):
the prefix runs once into a `prefix_cache.PrefixCache` and every request
runs only its own suffix on top of it. `score_batch_with_prefix` scores many
inputs' candidates together: the candidates do not depend on the input, so
every input's row is its suffix and the same block of candidate tokens under
a block attention mask, and many inputs share one forward.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .compat import cache_kwargs, keeps_a_window, output_cache
from .prefix_cache import PrefixCache


@torch.inference_mode()
def generate(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    temperature: float = 0.0,
    seed: int | None = None,
) -> list[list[int]]:
    """Generate a continuation for each prompt (one batch, left-padded).

    Returns the new tokens of each prompt, cut before the first end-of-turn token.
    """
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    input_ids, attention = _left_pad(prompts, pad_id)
    width = input_ids.shape[1]
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=None,
        top_k=None,
        eos_token_id=sorted(eos_ids),
        pad_token_id=pad_id,
    )
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config)
    results = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos_ids), len(row))
        results.append(row[:cut])
    return results


@torch.inference_mode()
def score_continuations(model, context: list[int], continuations: list[list[int]], pad_id: int = 0) -> torch.Tensor:
    """Total log-probability of each continuation after `context`, shape (n,)."""
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([context], device=device), use_cache=True)
    first_logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    totals = torch.stack([first_logp[c[0]] for c in continuations])
    longest = max(len(c) for c in continuations)
    if longest == 1:
        return totals.cpu()

    n = len(continuations)
    cache = output_cache(out)
    cache.batch_repeat_interleave(n)
    # Feed every candidate token but the last; right padding is harmless because
    # a real token never attends to a later (padded) position.
    steps = torch.full((n, longest - 1), pad_id, dtype=torch.long)
    attention = torch.ones((n, len(context) + longest - 1), dtype=torch.long)
    for i, c in enumerate(continuations):
        steps[i, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
        attention[i, len(context) + len(c) - 1:] = 0
    logits = model(input_ids=steps.to(device), attention_mask=attention.to(device), **cache_kwargs(model, cache), use_cache=True).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    for i, c in enumerate(continuations):
        if len(c) > 1:
            targets = torch.tensor(c[1:], device=device)
            totals[i] = totals[i] + logp[i, torch.arange(len(c) - 1, device=device), targets].sum()
    return totals.cpu()


# ---------------------------------------------------------------------------
# Shared-prefix inference. Every teacher request starts with the same long
# prompt; its key/value cache is computed once (`PrefixCache`) and each
# request runs only its own suffix (the input text and what follows) on top of it.


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids left-padded to the longest sequence, and the mask of real tokens."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def _suffix_batch(prefix_len: int, suffixes: list[list[int]], pad_id: int, device):
    """Left-pad suffixes after the prefix: ids, 2-D mask over prefix+suffix, positions."""
    ids, suffix_mask = _left_pad(suffixes, pad_id)
    mask = torch.cat([torch.ones((len(suffixes), prefix_len), dtype=torch.long), suffix_mask], dim=1)
    # Real tokens continue the prefix's positions; pads (masked out) get a harmless position.
    positions = (prefix_len + suffix_mask.cumsum(dim=1) - 1).clamp(min=prefix_len)
    return ids.to(device), mask.to(device), positions.to(device)


def _next_tokens(logits: torch.Tensor, temperature: float, generators) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
    tokens = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(tokens).to(logits.device)


@dataclass
class Decoded:
    """One decoded continuation.

    `token_ids` are the tokens emitted, ending with the end-of-turn token when
    the model stopped on its own (`stopped`); `text_ids` are the same without
    it. With top_logprobs=k, `top[t]` holds the k most likely tokens at step t
    as [token_id, logprob] pairs (log-softmax at temperature 1, whatever the
    sampling temperature), most likely first.
    """

    token_ids: list[int]
    stopped: bool
    top: list[list[list]] | None = None

    @property
    def text_ids(self) -> list[int]:
        return self.token_ids[:-1] if self.stopped else self.token_ids


@torch.inference_mode()
def decode_with_prefix(
    prefix: PrefixCache,
    suffixes: list[list[int]],
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    temperature: float = 0.0,
    seeds: list[int] | None = None,
    top_logprobs: int = 0,
) -> list[Decoded]:
    """Like `generate` for prompts `prefix.prefix + suffix`, paying for the prefix
    once; each reply keeps its end-of-turn token (`Decoded.text_ids` drops it)
    and, with `top_logprobs`, the top-k log-probabilities of every step.

    The suffixes are left-padded into one batch placed after the cached prefix;
    the gap a short suffix leaves is masked out and positions skip it, so each
    row computes what it would compute alone. When sampling, row i draws from
    its own generator seeded with `seeds[i]`, so a row's sample does not
    depend on which other rows share its batch.
    """
    device = prefix.device
    n = len(suffixes)
    # Rows run shortest suffix first, so chunks of the prefill pad little;
    # alive[j] is the output (input order) that batch row j decodes.
    alive = sorted(range(n), key=lambda i: len(suffixes[i]))
    ids, mask, positions = _suffix_batch(len(prefix), [suffixes[i] for i in alive], pad_id, device)
    cache = prefix.rows_cache(n, ids.shape[1] + max_new_tokens)
    seeds = seeds or list(range(n))
    generator = [torch.Generator().manual_seed(seeds[i]) for i in alive] if temperature > 0 else None
    eos = torch.tensor(sorted(eos_ids), device=device)
    out = [Decoded([], False, [] if top_logprobs else None) for _ in range(n)]
    logits = prefix.prefill(ids, mask, positions, cache)
    next_pos = positions[:, -1] + 1
    for step in range(max_new_tokens):
        tokens = _next_tokens(logits, temperature, generator)
        if top_logprobs:
            values, indices = torch.log_softmax(logits.float(), dim=-1).topk(top_logprobs, dim=-1)
            pairs = [[[int(i), float(v)] for i, v in zip(row_i, row_v)] for row_i, row_v in zip(indices.tolist(), values.tolist())]
        finished = torch.isin(tokens, eos).tolist()
        chosen = tokens.tolist()
        for j, i in enumerate(alive):
            out[i].token_ids.append(chosen[j])
            out[i].stopped = finished[j]
            if top_logprobs:
                out[i].top.append(pairs[j])
        if step == max_new_tokens - 1:
            break  # the last token is chosen; no forward for a step that will not come
        if any(finished):
            # Finished rows leave the batch, so later steps cost only what is still decoding.
            keep = [j for j, f in enumerate(finished) if not f]
            if not keep:
                break
            alive = [alive[j] for j in keep]
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            tokens, mask, next_pos = tokens[index], mask[index], next_pos[index]
            if generator is not None:
                generator = [generator[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        logits = prefix.forward(tokens.unsqueeze(1), mask, next_pos.unsqueeze(1), cache)[:, -1]
        next_pos = next_pos + 1
    return out


@torch.inference_mode()
def continuation_logprobs(prefix: PrefixCache, suffixes: list[list[int]], continuations: list[list[int]],
                          full: bool = False) -> list[torch.Tensor]:
    """Log-probabilities of each continuation's tokens after `prefix.prefix + suffix`.

    One batched forward over suffix + continuation on top of the cached prefix.
    Per row: one log-probability per continuation token, or with `full` the
    whole log-distribution (tokens x vocabulary) each token was drawn from.
    This is how the teacher scores the student's samples in on-policy training.
    """
    device = prefix.device
    rows = [list(s) + list(c[:-1]) for s, c in zip(suffixes, continuations)]
    ids, mask, positions = _suffix_batch(len(prefix), rows, 0, device)
    logits = prefix.forward(ids, mask, positions, prefix.rows_cache(len(rows), ids.shape[1]))
    width = ids.shape[1]
    result = []
    for i, (s, c) in enumerate(zip(suffixes, continuations)):
        # left-padded row: its last len(c) logits predict the continuation (with
        # an empty suffix, the first token is predicted by the prefix's last logits)
        n = len(c)
        span = logits[i, width - n :] if s else torch.cat([prefix.last_logits.unsqueeze(0), logits[i, width - (n - 1) :]])
        logp = torch.log_softmax(span.float(), dim=-1)
        result.append((logp if full else logp.gather(1, torch.tensor(c, device=device).unsqueeze(1)).squeeze(1)).cpu())
    return result


@torch.inference_mode()
def score_with_prefix(prefix: PrefixCache, suffix: list[int], continuations: list[list[int]]) -> torch.Tensor:
    """Total log-probability of each continuation after `prefix.prefix + suffix`, shape (n,).

    The suffix and the continuations' common leading tokens run once on top of
    the cached prefix; the rest of every continuation is packed into a single
    row with a block attention mask (each continuation sees the shared state
    and its own earlier tokens only), so the candidates share the input's
    state without copying the cache. A cache that keeps only a sliding window
    of keys takes no such mask: there each continuation runs alone on its own
    copy of the shared state, under the model's own mask.
    """
    model, device = prefix.model, prefix.device
    common = _common_prefix_len(continuations)
    if common == min(len(c) for c in continuations):
        common -= 1  # keep at least one token of every continuation for the packed pass
    shared = list(suffix) + list(continuations[0][:common])
    cache = prefix.expanded(1)
    # row t of `predict` is the log-distribution of token t of `shared` (and
    # the last row that of whatever follows it)
    predict = torch.log_softmax(prefix.last_logits.float(), dim=-1).unsqueeze(0)
    if shared:
        out = model(input_ids=torch.tensor([shared], device=device), **cache_kwargs(model, cache), use_cache=True)
        predict = torch.cat([predict, torch.log_softmax(out.logits[0].float(), dim=-1)])
    rows = torch.arange(len(suffix), len(shared), device=device)
    base = predict[rows, torch.tensor(shared[len(suffix):], dtype=torch.long, device=device)].sum()
    last = predict[-1]

    tails = [c[common:] for c in continuations]
    context_len = len(prefix) + len(shared)
    packed, pos, owner = [], [], []
    for k, t in enumerate(tails):
        packed += t[:-1]
        pos += list(range(context_len, context_len + len(t) - 1))
        owner += [k] * (len(t) - 1)
    totals = torch.stack([last[t[0]] for t in tails]) + base
    if packed and keeps_a_window(cache):
        for k, t in enumerate(tails):
            if len(t) > 1:
                positions = torch.arange(context_len, context_len + len(t) - 1, device=device).unsqueeze(0)
                logits = model(input_ids=torch.tensor([t[:-1]], device=device), position_ids=positions,
                               **cache_kwargs(model, copy.deepcopy(cache)), use_cache=True).logits[0]
                totals[k] = totals[k] + torch.log_softmax(logits.float(), dim=-1)[torch.arange(len(t) - 1), t[1:]].sum()
        return totals.cpu()
    if packed:
        q = len(packed)
        owner_t = torch.tensor(owner)
        pos_t = torch.tensor(pos)
        # query i may see key j of the packed row when both belong to the same
        # continuation and j is not later than i; the context is always visible
        allowed = (owner_t[:, None] == owner_t[None, :]) & (pos_t[None, :] <= pos_t[:, None])
        full = torch.cat([torch.ones((q, context_len), dtype=torch.bool), allowed], dim=1)
        dtype = next(model.parameters()).dtype
        mask = torch.zeros((1, 1, q, context_len + q), dtype=dtype)
        mask.masked_fill_(~full, torch.finfo(dtype).min)
        logits = model(
            input_ids=torch.tensor([packed], device=device), attention_mask=mask.to(device),
            position_ids=pos_t.unsqueeze(0).to(device), **cache_kwargs(model, cache), use_cache=True,
        ).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        i = 0
        for k, t in enumerate(tails):
            for j in range(1, len(t)):
                totals[k] = totals[k] + logp[i, t[j]]
                i += 1
    return totals.cpu()


@torch.inference_mode()
def score_batch_with_prefix(prefix: PrefixCache, suffixes: list[list[int]], continuations: list[list[int]],
                            chunk_tokens: int | None = None) -> torch.Tensor:
    """`score_with_prefix` for many inputs at once: shape (inputs, continuations).

    The candidates do not depend on the input, so every input's row is the
    same block after its own suffix: the candidates' common leading tokens,
    then each candidate's remaining tokens but its last. A block attention
    mask lets each candidate see the prefix, its input, the common tokens and
    its own earlier tokens only, as in `score_with_prefix`; many inputs then
    share one forward (rows sorted by length, chunked as in the prefill)
    instead of two forwards per input. Only the positions that predict a
    candidate token go through the output layer.

    With the "expand" strategy each chunk runs on its own copy of the prefix
    cache per row, the same block mask given whole (prefix columns open) to the
    model's own attention. A model that refused shared-prefix attention, or an
    empty prefix, or a model whose cache keeps a sliding window (no block mask
    over the whole context), is scored one input at a time with `score_with_prefix`.
    """
    from .prefix_cache import PREFILL_CHUNK_TOKENS, RowCache, _chunks

    n, k = len(suffixes), len(continuations)
    if (prefix.shared is None and prefix.strategy != "expand") or not prefix.prefix or n == 0 or keeps_a_window(prefix.cache):
        rows = [score_with_prefix(prefix, s, continuations) for s in suffixes]
        return torch.stack(rows) if rows else torch.zeros((0, k))
    device = prefix.device
    common = _common_prefix_len(continuations)
    if common == min(len(c) for c in continuations):
        common -= 1  # keep at least one token of every continuation in its own block
    block, owner, tail_start = list(continuations[0][:common]), [-1] * common, []
    for j, c in enumerate(continuations):
        tail_start.append(len(block))
        block += c[common:-1]
        owner += [j] * (len(c) - common - 1)
    b = len(block)
    # Block token i sits at position context + block_pos[i]: the common tokens
    # continue the input, every candidate's tail restarts right after them.
    block_pos = list(range(common)) + [common + i - tail_start[owner[i]] for i in range(common, b)]
    owner_t = torch.tensor(owner, dtype=torch.long)
    order = torch.arange(b)
    allowed = (order[None, :] <= order[:, None]) & ((owner_t[None, :] == -1) | (owner_t[None, :] == owner_t[:, None]))
    # Where each candidate token's log-probability is read: kept logits row 0 is the
    # input's last token, row 1 + i is block token i.
    longest = max(len(c) for c in continuations)
    at = torch.zeros((k, longest), dtype=torch.long)
    token = torch.zeros((k, longest), dtype=torch.long)
    valid = torch.zeros((k, longest), dtype=torch.bool)
    for j, c in enumerate(continuations):
        for t in range(len(c)):
            at[j, t] = 0 if t == 0 else (t if t - 1 < common else 1 + tail_start[j] + (t - 1 - common))
            token[j, t], valid[j, t] = c[t], True
    at, token, valid = at.to(device), token.to(device), valid.to(device)

    by_length = sorted(range(n), key=lambda i: len(suffixes[i]))
    totals = torch.zeros((n, k), dtype=torch.float32)
    for start, end, width in _chunks([len(suffixes[i]) + b for i in by_length], chunk_tokens or PREFILL_CHUNK_TOKENS):
        members = by_length[start:end]
        w = width - b  # the longest suffix of this chunk
        ids = torch.full((len(members), width), 0, dtype=torch.long)
        real = torch.ones((len(members), width), dtype=torch.bool)
        positions = torch.zeros((len(members), width), dtype=torch.long)
        for r, i in enumerate(members):
            s = suffixes[i]
            ids[r, w - len(s):] = torch.tensor(list(s) + block, dtype=torch.long)
            real[r, : w - len(s)] = False
            context = len(prefix) + len(s)
            positions[r, w - len(s): w] = torch.arange(len(prefix), context)
            positions[r, w:] = torch.tensor(block_pos, dtype=torch.long) + context
            positions[r, : w - len(s)] = len(prefix)  # padding: masked out, any position will do
        shape = torch.ones((width, width), dtype=torch.bool).tril()
        shape[w:, w:] = allowed
        mask = (real[:, None, :] & shape[None]).unsqueeze(1)
        if prefix.shared is not None:
            logits = prefix.shared.forward_masked(ids.to(device), mask.to(device), positions.to(device), RowCache(len(members), width),
                                                  slice(None), 0, logits_to_keep=1 + b).logits.float()
        else:
            logits = _forward_expanded(prefix, ids.to(device), mask.to(device), positions.to(device), logits_to_keep=1 + b).float()
        logz = torch.logsumexp(logits, dim=-1)  # (rows, 1 + b)
        picked = logits[:, at, token] - logz[:, at]  # (rows, k, longest)
        totals[members] = picked.masked_fill(~valid, 0.0).sum(dim=-1).cpu()
    return totals


def _forward_expanded(prefix: PrefixCache, ids, own_mask, positions, **kwargs) -> torch.Tensor:
    """Logits of `ids` on a fresh copy of the prefix cache per row, `own_mask`
    (bool rows x 1 x q x q, True = may attend) widened by the prefix's columns
    (always visible) into the additive 4-D mask transformers passes to the
    model's own attention as it is."""
    rows, _, q, _ = own_mask.shape
    dtype = next(prefix.model.parameters()).dtype
    full = torch.cat([own_mask.new_ones((rows, 1, q, len(prefix))), own_mask], dim=-1)
    additive = torch.zeros(full.shape, dtype=dtype, device=full.device).masked_fill_(~full, torch.finfo(dtype).min)
    cache = prefix.expanded(rows)
    return prefix.model(input_ids=ids, attention_mask=additive, position_ids=positions, **cache_kwargs(prefix.model, cache),
                        use_cache=True, **kwargs).logits


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = 0
    for column in zip(*seqs):
        if any(c != column[0] for c in column):
            break
        n += 1
    return n


def shared_prefix_len(seqs: list[list[int]]) -> int:
    """How many leading tokens all of `seqs` share, leaving each at least one of its own.

    Prompts without the task's prompt still share their chat template's
    opening (SmolLM2's adds a default system message: 30 of the demo's ~63
    tokens per student prompt); cached once as a `PrefixCache`, that part is
    computed once per batch instead of once per row."""
    return max(0, min(_common_prefix_len(seqs), min(len(s) for s in seqs) - 1)) if seqs else 0


def common_prefix_cache(model, prompts: list[list[int]]) -> tuple[PrefixCache, list[list[int]]]:
    """(a PrefixCache of the leading tokens all `prompts` share, each prompt's rest):
    `shared_prefix_len`'s part computed once; nothing shared for a single prompt."""
    common = shared_prefix_len(prompts) if len(prompts) > 1 else 0
    return PrefixCache(model, prompts[0][:common] if prompts else []), [p[common:] for p in prompts]
