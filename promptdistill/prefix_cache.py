"""The shared prefix's key/value cache, and batches of rows running on top of it.

Every teacher request starts with the same long prompt. `PrefixCache` runs
those tokens once; the engine's decoding and scoring loops then run each
request's own suffix on top of it, through `PrefixCache.prefill` and
`PrefixCache.forward`.

Shared-prefix attention: many rows attend to one copy of the prefix. The plain way to
batch requests on top of its key/value cache copies that cache once per row
and appends each new token to every copy, so each decode step moves
rows x prefix x layers of keys and values through memory (on a 2-core CPU
that copying cost as much as the matrix products). Here the prefix's keys
and values stay as they are, batch 1; the per-row cache holds only each
row's own tokens (input suffix and reply); and attention is computed in two
parts merged by one softmax:

    scores = [q . K_prefix  |  q . K_own]      (own part masked: padding, causality)
    out    = softmax(scores) @ [V_prefix ; V_own]

The prefix part is one matrix product per key/value head for all rows and
query heads together, reading the prefix once. (This is what inference
servers call cascade attention.)

It plugs into transformers through its attention registry: our attention
function is registered once, and during our forwards (only) the model's
attention implementation names it (`_attention_switched`, the one place
that touches the model's config: transformers has no per-call choice, so a
model must not run in another thread during our forwards). It receives
the prefix and the per-row mask through a keyword argument that
transformers passes down to the attention call. A model whose attention
needs more than this (sliding windows, logit soft-capping, attention sinks)
is refused by `SharedPrefix.attach`, after comparing the logits of a short
probe computed both ways; `PrefixCache` then gives each batch its own copy
of the prefix cache, as before, and says why in `PrefixCache.note` for the
caller to report (this module prints nothing).

Which of the two a `PrefixCache` uses is its `attention` (the task file's
`models.prefix_attention`, `strategy_for`): "cascade" is the above; "expand"
copies the prefix's cache once per row and lets the model's own attention
(SDPA, with its fused kernels on a GPU) run over it. On 2 CPU cores cascade
labels 8.7x faster than a plain batched generate; on an H200 it ran at
0.37-0.86x a plain batched generate at a 0.5k-token prompt (2.1-2.6x at
3.4k): without fused kernels the two-part attention costs more there than
the copies it saves. So "auto" is cascade on CPU and expand on any other
device.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from .compat import _unwrap, cache_kwargs, output_cache
from .config import PREFIX_ATTENTION

ATTENTION_NAME = "promptdistill_shared_prefix"
# The keyword argument that carries the prefix and mask down to the attention call.
STATE_KWARG = "promptdistill_shared_prefix"
# Keyword arguments some models give their attention; ours cannot honour them.
_UNSUPPORTED = ("sliding_window", "softcap", "s_aux", "sinks")


def strategy_for(attention: str, device) -> str:
    """What `attention` (one of config.PREFIX_ATTENTION) means on `device`: "cascade" or "expand".

    auto picks cascade only on a CPU, the one device where it was measured to win:
    its two-part attention is plain matrix products (PyTorch's fused kernel on CPU),
    while on a GPU the model's own attention has fused kernels that a copied prefix
    cache can use and ours cannot."""
    if attention not in PREFIX_ATTENTION:
        raise ValueError(f"prefix attention must be one of {', '.join(PREFIX_ATTENTION)}; got {attention!r}")
    if attention != "auto":
        return attention
    return "cascade" if torch.device(device).type == "cpu" else "expand"


class PrefixCache:
    """The key/value cache of a token prefix shared by many requests.

    Rows run on top of it through `forward`. `attention` (config.PREFIX_ATTENTION,
    resolved by `strategy_for` into `strategy`) says how: with "cascade",
    shared-prefix attention (`SharedPrefix`), every row reads this one copy
    of the prefix and the rows' cache holds their own tokens only; with
    "expand", and for a model that cannot use cascade, each batch gets its
    own copy of the prefix cache (`expanded`) under the model's own attention.

    `note` is None, or why shared-prefix attention was asked for and is not
    used: worth one line to the user (the work is correct, only slower), left
    to the caller, which knows whether and where to say it.
    """

    @torch.inference_mode()
    def __init__(self, model, prefix: list[int], attention: str = "auto"):
        self.model = model
        self.prefix = list(prefix)
        self.device = next(model.parameters()).device
        self.strategy = strategy_for(attention, self.device)
        self.cache, self.last_logits, self.shared = None, None, None
        self.note: str | None = None
        if self.prefix:  # an empty prefix serves to decode whole prompts
            out = model(input_ids=torch.tensor([self.prefix], device=self.device), use_cache=True, logits_to_keep=1)
            self.cache = output_cache(out)
            self.last_logits = out.logits[0, -1]
            if self.strategy == "cascade":
                self.shared, why = SharedPrefix.attach(model, self.cache, self.prefix[-2:])
                if self.shared is None:
                    self.note = (f"shared-prefix attention is not available for this model ({why}); "
                                 "each batch gets its own copy of the prefix cache")

    def __len__(self) -> int:
        return len(self.prefix)

    def expanded(self, batch: int):
        """A fresh cache holding the prefix `batch` times (the stored one stays untouched)."""
        import copy

        from transformers import DynamicCache

        if self.cache is None:
            return DynamicCache()
        cache = copy.deepcopy(self.cache)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache

    def rows_cache(self, batch: int, capacity: int):
        """The cache for `batch` rows of up to `capacity` tokens each on top of the prefix."""
        if self.shared is not None:
            return RowCache(batch, capacity)
        return self.expanded(batch)

    def forward(self, ids, mask, positions, cache, **kwargs):
        """Logits of `ids` (rows x q) on top of the prefix; `mask` covers prefix + the
        rows' tokens so far (these q included); `cache` comes from `rows_cache` and grows by q."""
        if self.shared is not None:
            out = self.shared.forward(ids, mask[:, len(self.prefix):], positions, cache, slice(None), cache.length, **kwargs)
            cache.length += ids.shape[1]
            return out.logits
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **cache_kwargs(self.model, cache),
                          use_cache=True, **kwargs).logits

    def prefill(self, ids, mask, positions, cache) -> torch.Tensor:
        """Each row's last logits after its left-padded suffix in `ids` (a fresh `cache`)."""
        if self.shared is not None:
            return self.shared.prefill(ids, mask[:, len(self.prefix):], positions, cache, PREFILL_CHUNK_TOKENS)
        # logits_to_keep=1: only the last position goes through the output layer (with a
        # 49k vocabulary that layer is a fifth of a 135M model's work per position)
        return self.forward(ids, mask, positions, cache, logits_to_keep=1)[:, -1]


# Suffixes run on top of a shared prefix in chunks of about this many (padded) tokens.
PREFILL_CHUNK_TOKENS = 1024


class RowCache:
    """Each row's own keys and values (the prefix's are not here), in buffers
    allocated once per layer for `capacity` positions.

    Rows are left-padded to a common width: positions [0, length) are written
    for every row (padding included, masked out by the caller's mask). Writing
    in place, rather than concatenating one position per step, keeps a decode
    step from copying every row's cache.
    """

    def __init__(self, rows: int, capacity: int):
        self.rows, self.capacity, self.length = rows, capacity, 0
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def write(self, layer: int, span: slice, start: int, key, value, attend_from: int):
        """Store `key`/`value` (rows of `span`, kv_heads, q, d) at positions
        [start, start+q) and return the keys and values of [attend_from, start+q),
        shaped (kv_heads, rows, positions, d)."""
        if layer not in self.keys:
            # head-major, the layout the attention below multiplies in
            shape = (key.shape[1], self.rows, self.capacity, key.shape[3])
            # zeros, not empty: masked positions get weight 0, and 0 * garbage could be NaN
            self.keys[layer] = key.new_zeros(shape)
            self.values[layer] = value.new_zeros(shape)
        end = start + key.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"row cache holds {self.capacity} positions, asked to write up to {end}")
        self.keys[layer][:, span, start:end] = key.transpose(0, 1)
        self.values[layer][:, span, start:end] = value.transpose(0, 1)
        return self.keys[layer][:, span, attend_from:end], self.values[layer][:, span, attend_from:end]

    def batch_select_indices(self, index: torch.Tensor) -> None:
        """Keep only the rows `index` (rows that finished leave the batch)."""
        for store in (self.keys, self.values):
            for layer in store:
                store[layer] = store[layer].index_select(1, index)
        self.rows = len(index)


class _State:
    """What one forward call's attention needs: the prefix, the rows' own cache, the mask."""

    def __init__(self, keys, values, rows: RowCache, span: slice, start: int, mask):
        self.keys, self.values = keys, values  # per layer: (1, kv_heads, prefix_len, head_dim)
        self.rows, self.span, self.start = rows, span, start
        self.mask = mask  # (rows, 1, queries, own keys attended) bool, True = may attend
        self._grouped = None

    def grouped_mask(self, group: int, dtype):
        """The mask in the attention's query order, made once for all layers:
        bool (1, rows, q*group, keys), the same as 0/-inf of `dtype`, and
        whether each query sees any own key at all."""
        if self._grouped is None:
            rows, _, q, width = self.mask.shape
            allowed = self.mask.reshape(rows, q, 1, width).expand(rows, q, group, width).reshape(1, rows, q * group, width)
            additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))
            self._grouped = allowed, additive, allowed.any(dim=-1)
        return self._grouped


def shared_prefix_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention over the shared prefix plus each row's own keys (registered with transformers)."""
    state = kwargs.get(STATE_KWARG)
    if state is None:
        raise RuntimeError("shared-prefix attention called without its prefix state")
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"shared-prefix attention does not support {name}")
    rows, heads, q, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    width = state.mask.shape[-1]
    own_k, own_v = state.rows.write(module.layer_idx, state.span, state.start, key, value, state.start + q - width)
    prefix_k, prefix_v = state.keys[module.layer_idx][0], state.values[module.layer_idx][0]  # (kv_heads, P, d)

    # Queries ordered (kv_heads, rows, q, group): all query heads that share a
    # key/value head, for every row and position, are the rows of one matrix
    # product with that head's prefix keys.
    flat = query.transpose(1, 2).reshape(rows, q, kv_heads, group, dim).permute(2, 0, 1, 3, 4)
    flat = flat.reshape(kv_heads, rows * q * group, dim)
    attend = _attend_fused if _FUSED_CPU is not None and query.device.type == "cpu" else _attend
    out = attend(flat, prefix_k, prefix_v, own_k, own_v, state.grouped_mask(group, query.dtype), scale)  # (kv_heads, rows, q*group, d)
    # transformers' attention functions return (rows, q, heads, d); head = kv_head * group + g
    out = out.view(kv_heads, rows, q, group, dim).permute(1, 2, 0, 3, 4).reshape(rows, q, heads, dim)
    return out.to(query.dtype), None


def _attend(flat, prefix_k, prefix_v, own_k, own_v, masks, scale):
    """Both parts' scores side by side, one softmax (in float32, as transformers'
    eager attention does), then each part's values."""
    kv_heads, n, dim = flat.shape
    rows, length = own_k.shape[1], prefix_k.shape[1]
    flat = flat * scale
    prefix_scores = torch.bmm(flat, prefix_k.transpose(1, 2)).view(kv_heads, rows, n // rows, length)
    own_scores = torch.matmul(flat.view(kv_heads, rows, n // rows, dim), own_k.transpose(2, 3))
    own_scores.masked_fill_(~masks[0], float("-inf"))
    weights = torch.softmax(torch.cat([prefix_scores, own_scores], dim=-1), dim=-1, dtype=torch.float32).to(own_v.dtype)
    out = torch.bmm(weights[..., :length].reshape(kv_heads, n, length), prefix_v)
    return out.view(kv_heads, rows, n // rows, dim) + torch.matmul(weights[..., length:], own_v)


# PyTorch's fused CPU attention kernel; unlike the public scaled_dot_product_attention
# it also returns each query's log-sum-exp, which is what merging two parts needs.
_FUSED_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend_fused(flat, prefix_k, prefix_v, own_k, own_v, masks, scale):
    """Each part with the fused kernel (no scores held in memory), merged by
    their log-sum-exps: out = (o1 e^l1 + o2 e^l2) / (e^l1 + e^l2)."""
    kv_heads, n, dim = flat.shape
    rows = own_k.shape[1]
    o1, l1 = _FUSED_CPU(flat[None], prefix_k[None], prefix_v[None], 0.0, False, scale=scale)
    _, additive, sees_own = masks
    o2, l2 = _FUSED_CPU(flat.view(kv_heads, rows, n // rows, dim), own_k, own_v, 0.0, False, attn_mask=additive, scale=scale)
    # a query with no own key to see (a padding position) takes the prefix part alone
    l2 = l2.masked_fill(~sees_own, float("-inf"))
    l1 = l1.view(kv_heads, rows, n // rows)
    top = torch.maximum(l1, l2)
    w1, w2 = torch.exp(l1 - top).unsqueeze(-1), torch.exp(l2 - top).unsqueeze(-1)
    return (o1.view(kv_heads, rows, n // rows, dim).float() * w1 + o2.float() * w2) / (w1 + w2)


@functools.cache
def _register() -> None:
    # Once per process, on first use rather than at import: importing
    # transformers takes seconds, and this module is imported by commands that
    # never run a model. The registry is transformers' own class-wide mapping,
    # so one registration serves every model.
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention_forward)


@contextlib.contextmanager
def _attention_switched(config):
    """Make `config`'s model use shared-prefix attention inside the block.

    transformers (checked in 5.24) chooses each layer's attention function,
    and the attention mask's form, from `config._attn_implementation` on every
    call, and offers no per-call choice: no forward keyword selects it, and
    `set_attn_implementation` changes the same config for good. So the
    model's config names our function for the length of one forward, and the
    previous name comes back on exit, also when the forward raises. (With our
    name transformers also skips building a 4-D mask, which we do not read.)

    Not thread-safe: the config is the model's own, and a forward of the same
    model in another thread meanwhile would run with our function or without
    its usual mask. This is the one place that switches it.
    """
    old = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = old


class SharedPrefix:
    """A prefix's keys and values (batch 1) and the forwards that attend to them."""

    def __init__(self, model, cache):
        _register()
        self.model = model
        self.config = _unwrap(model).config
        if getattr(self.config, "sub_configs", None):
            # switching the attention would also switch (and, restored, overwrite) the sub-models'
            raise NotImplementedError("a model with sub-configs (vision, audio) keeps its own attention")
        self.keys = [layer.keys for layer in cache.layers]
        self.values = [layer.values for layer in cache.layers]
        self.length = self.keys[0].shape[2]

    @classmethod
    def attach(cls, model, cache, probe: list[int]):
        """(SharedPrefix, None) when this model computes the same logits with it as
        with a copied cache on `probe` (a few token ids after the prefix); else (None, why)."""
        import copy

        try:
            shared = cls(model, cache)
            device = shared.keys[0].device
            ids = torch.tensor([probe], device=device)
            positions = torch.arange(shared.length, shared.length + len(probe), device=device).unsqueeze(0)
            plain = model(input_ids=ids, position_ids=positions, **cache_kwargs(model, copy.deepcopy(cache)), use_cache=True).logits
            ours = shared.forward(ids, torch.ones_like(ids), positions, RowCache(1, len(probe)), slice(None), 0).logits
        except Exception as e:  # a model whose attention or cache is not the standard kind
            return None, f"{type(e).__name__}: {e}"
        scale = plain.abs().max().item()
        tolerance = (1e-4 if plain.dtype == torch.float32 else 3e-2) * max(scale, 1.0)
        error = (plain.float() - ours.float()).abs().max().item()
        if not error <= tolerance:
            return None, f"its logits differ from the copied-cache path by {error:.3g}"
        return shared, None

    def forward(self, ids, own_mask, positions, rows: RowCache, span: slice, start: int, **kwargs):
        """Run `ids` (q positions for the rows `span` of `rows`) after the prefix,
        storing their keys and values at positions [start, start+q) of `rows`.
        `own_mask` marks the real tokens among the rows' own positions that these
        queries attend to: the last `own_mask.shape[1]` up to start+q."""
        q, width = ids.shape[1], own_mask.shape[1]
        key_pos = torch.arange(width, device=ids.device)
        query_pos = torch.arange(width - q, width, device=ids.device)
        causal = key_pos[None, :] <= query_pos[:, None]
        mask = own_mask.bool()[:, None, None, :] & causal[None, None]
        return self.forward_masked(ids, mask, positions, rows, span, start, **kwargs)

    def forward_masked(self, ids, mask, positions, rows: RowCache, span: slice, start: int, **kwargs):
        """`forward` with the rows' own attention mask given whole: bool (rows, 1, q,
        own keys attended), True = may attend. Choose mode's packed candidates
        need more than causal order (each candidate sees only its own tokens)."""
        state = _State(self.keys, self.values, rows, span, start, mask)
        with _attention_switched(self.config):
            return self.model(input_ids=ids, position_ids=positions, use_cache=False, **{STATE_KWARG: state}, **kwargs)

    def prefill(self, ids, own_mask, positions, rows: RowCache, chunk_tokens: int):
        """Run left-padded suffixes (all rows) and return each row's last logits.

        Rows go through in consecutive chunks of about `chunk_tokens` padded
        tokens, each padded only to its own longest row: with rows sorted by
        length, a batch of short inputs does not pay for the longest one.
        """
        width = ids.shape[1]
        last = []
        for start, end, longest in _chunks(own_mask.sum(dim=1).tolist(), chunk_tokens):
            cut = width - longest
            out = self.forward(ids[start:end, cut:], own_mask[start:end, cut:], positions[start:end, cut:], rows,
                               slice(start, end), cut, logits_to_keep=1)
            last.append(out.logits[:, -1])
        rows.length = width
        return torch.cat(last)


def _chunks(lengths: list[int], budget: int, max_padding: float = 0.1):
    """Consecutive (start, end, longest) row ranges: each holds at most `budget`
    padded tokens (unless one row alone is longer) and at most `max_padding` of padding."""
    start = 0
    while start < len(lengths):
        end, longest, real = start + 1, lengths[start], lengths[start]
        while end < len(lengths):
            wider = max(longest, lengths[end])
            padded = wider * (end + 1 - start)
            if padded > budget or padded - real - lengths[end] > max_padding * padded:
                break
            longest, real, end = wider, real + lengths[end], end + 1
        yield start, end, longest
        start = end
