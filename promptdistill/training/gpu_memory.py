"""An estimate of a LoRA student's peak training memory on one GPU, from its shape.

`estimate(shape, seq_len, mode)` adds four terms, in bytes:

- weights: the frozen base. bf16: 2 bytes a parameter. 4-bit (NF4 with
  double quantisation, as models.nf4_config loads it): every linear layer of
  the decoder at 4 bits plus its block scales (8 bits per 64 weights, and a
  float32 per 256 scales: 4.127 bits a weight); what is not a linear layer
  of the decoder (embeddings, norms, the output layer) is made float32 by
  peft's prepare_model_for_kbit_training, 4 bytes a parameter.
- LoRA: the adapter on every linear layer (train.target_modules =
  "all-linear"), r * (in + out) parameters each, float32.
- optimiser: a float32 gradient and AdamW's two float32 moments per LoRA
  parameter (12 bytes).
- activations: what one micro-batch of `seq_len` tokens keeps for the
  backward pass (`layer_activation_bytes` counts it tensor by tensor), for
  every layer; with gradient checkpointing each layer keeps only its input,
  and one layer's activations are recomputed at a time. Plus the output
  layer's logits, float32, at the trained positions only (the recipe runs
  the output layer there alone: `reply_share` of the tokens).

Not counted: the CUDA context and kernels (about 0.3-0.6 GB a process), the
caching allocator's slack, temporary gradients of activations inside the
backward pass, and the evaluation and sampling passes (no gradients, less).
Attention is counted as a fused kernel (flash / memory-efficient SDPA) that
takes grouped key/value heads: without one, each layer also keeps heads x
seq_len^2 probabilities, and where k and v are repeated to every head they
take 2 x hidden instead of 2 x kv width.

The activation count is checked against what autograd actually saves on a
CPU (benchmarks/gpu_memory_table.py --measure; docs/gpu.md); the GPU totals
are computed, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("bf16-lora", "bf16-lora-ckpt", "qlora-ckpt")
MODE_TITLES = {"bf16-lora": "bf16 LoRA", "bf16-lora-ckpt": "bf16 LoRA + checkpointing", "qlora-ckpt": "4-bit QLoRA + checkpointing"}
GIB = 1024 ** 3
# NF4 with double quantisation: 4 bits, one 8-bit scale per 64 weights, one float32 per 256 scales.
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer (Llama / Qwen2 / SmolLM2 layout: SwiGLU MLP, grouped-query attention)."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool

    @property
    def kv_width(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer: q, k, v, o, gate, up, down."""
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes())

    @property
    def other_params(self) -> int:
        """Embeddings, the output layer when untied, and the norms (2 a layer and a final one)."""
        embed = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embed + (2 * self.layers + 1) * self.hidden

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params


# The shapes of the table: the packaged student, a 1.5B and an 8B (their published configs).
SHAPES = {
    "135M": ModelShape("SmolLM2-135M", hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3, vocab=49152, tied_embeddings=True),
    "1.5B": ModelShape("Qwen2.5-1.5B", hidden=1536, layers=28, intermediate=8960, heads=12, kv_heads=2, vocab=151936,
                       tied_embeddings=True),
    "8B": ModelShape("Llama-3.1-8B", hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, vocab=128256,
                     tied_embeddings=False),
}


def lora_params(shape: ModelShape, rank: int) -> int:
    """LoRA parameters on every linear layer of the decoder: r * (in + out) each."""
    return shape.layers * sum(rank * (a + b) for a, b in shape.linear_shapes())


def layer_activation_bytes(shape: ModelShape, rank: int, width: int) -> int:
    """Bytes one token keeps for the backward pass in one decoder layer (LoRA on every
    linear layer, dropout 0, frozen base weights: a frozen linear layer keeps nothing
    for itself), `width` bytes an activation (2 for bf16, 4 for float32):

    - the two RMSNorms: each keeps its input as float32 (4 * hidden each);
    - the normed inputs of the attention and MLP blocks, kept by the LoRA A matrices that read them (2 * hidden);
    - attention (a fused kernel): q and the output (2 * hidden; o_proj reads the output in place),
      k and v at their grouped width (2 * kv width);
    - MLP: gate, up, SiLU(gate) and the down projection's input (4 * intermediate);
    - the seven LoRA A outputs (7 * rank).

    Counted tensor by tensor against what autograd saves in the 135M shape on a CPU
    (benchmarks/gpu_memory_table.py --measure)."""
    h, i = shape.hidden, shape.intermediate
    return 2 * 4 * h + width * (2 * h + 2 * h + 2 * shape.kv_width + 4 * i + 7 * rank)


def estimate(shape: ModelShape, seq_len: int, mode: str, *, batch: int = 1, rank: int = 32, reply_share: float = 0.25) -> dict:
    """Peak training memory (bytes) of `shape` for micro-batches of `batch` x `seq_len`
    tokens in `mode` (MODES), term by term and in total (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    tokens = batch * seq_len
    if mode == "qlora-ckpt":
        weights = shape.linear_params * NF4_BITS / 8 + shape.other_params * 4
    else:
        weights = shape.params * 2
    n_lora = lora_params(shape, rank)
    width = 2  # bf16 activations: the weights' dtype, or autocast's for 4-bit
    per_layer = layer_activation_bytes(shape, rank, width) * tokens
    if mode == "bf16-lora":
        layers = shape.layers * per_layer
    else:  # each layer keeps its input; one layer is recomputed at a time
        layers = shape.layers * width * shape.hidden * tokens + per_layer
    trained = max(1, round(tokens * reply_share))
    logits = trained * shape.vocab * 4  # the trained positions' logits, float32, kept by the cross-entropy
    terms = {"weights": int(weights), "lora": n_lora * 4, "optimizer": n_lora * 12, "activations": int(layers + logits)}
    return {**terms, "total": sum(terms.values()), "lora_params": n_lora, "params": shape.params}


def table(seq_lens=(512, 2048), *, rank: int = 32, batch: int = 1) -> list[dict]:
    """One row per shape and sequence length: the total of each mode in GiB."""
    rows = []
    for key, shape in SHAPES.items():
        for seq in seq_lens:
            row = {"student": key, "seq_len": seq}
            for mode in MODES:
                row[mode] = estimate(shape, seq, mode, rank=rank, batch=batch)["total"] / GIB
            rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as the markdown table of docs/gpu.md."""
    head = "| student | tokens | " + " | ".join(MODE_TITLES[m] for m in MODES) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(MODES)]
    for r in rows:
        lines.append(f"| {r['student']} | {r['seq_len']} | " + " | ".join(f"{r[m]:.1f} GiB" for m in MODES) + " |")
    return "\n".join(lines)
