"""Peak GPU training memory per student size: the computed table, and the CPU check of its activation term.

Prints the table of docs/gpu.md (training/gpu_memory.py: weights + LoRA +
optimiser states + activations, for 135M, 1.5B and 8B shapes at 512 and 2048
tokens, bf16 LoRA, bf16 LoRA + checkpointing, 4-bit QLoRA + checkpointing).
Those figures are computed, not measured.

With --measure it checks the activation term where a CPU can: a random-init
model of the 135M shape (SmolLM2-135M's config; the weights do not change
what is kept), LoRA r32 on every linear layer, float32, one sequence of
--seq-len tokens, a quarter of them trained, through the recipe's own loss
(training/losses.py: the output layer at the trained positions only):

- saved: the bytes autograd keeps for the backward pass (every tensor packed
  by torch.autograd.graph.saved_tensors_hooks, each storage once,
  parameters left out), against the estimate's activation term at 4 bytes;
- rss: in a fresh process each, the peak resident set of one forward and
  backward pass minus the resident set before it, without and with gradient
  checkpointing (train.gradient_checkpointing's path, precision.prepare_base),
  against the estimate's activation term. The peak also holds the temporary
  gradients of the backward pass, which the estimate leaves out.

    .venv/bin/python benchmarks/gpu_memory_table.py [--measure] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptdistill.training.gpu_memory import SHAPES, GIB, layer_activation_bytes, markdown_table, table  # noqa: E402

MIB = 1024 ** 2


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _model(checkpointing: bool):
    """The 135M shape, random-init, float32 on the CPU, LoRA r32 all-linear, prepared as the recipe prepares it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from promptdistill.config import Config, ModelsConfig, TrainConfig
    from promptdistill.training.precision import prepare_base
    from promptdistill.training.recipe import lora_model

    s = SHAPES["135M"]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
                         num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, tie_word_embeddings=s.tied_embeddings,
                         max_position_embeddings=8192)
    cfg = Config(models=ModelsConfig(device="cpu", dtype="float32"),
                 train=TrainConfig(lora_rank=32, lora_alpha=32, gradient_checkpointing=checkpointing))
    model = lora_model(prepare_base(LlamaForCausalLM(config), cfg), cfg.train)
    model.train()
    return model


def _batch(seq_len: int):
    import torch

    ids = torch.randint(0, SHAPES["135M"].vocab, (1, seq_len))
    mask = torch.ones_like(ids)
    weights = torch.zeros(1, seq_len)
    weights[:, -seq_len // 4:] = 1.0
    return ids, mask, weights


def estimated_activations(seq_len: int, checkpointing: bool) -> int:
    """The estimate's activation term for the measured setting: float32, batch 1, r32, a quarter trained."""
    s = SHAPES["135M"]
    per_layer = layer_activation_bytes(s, 32, 4) * seq_len
    layers = s.layers * 4 * s.hidden * seq_len + per_layer if checkpointing else s.layers * per_layer
    return layers + seq_len // 4 * s.vocab * 4


def measure_saved(seq_len: int) -> int:
    """Bytes of the tensors autograd saves in one forward pass (each storage once, no parameters)."""
    import torch

    from promptdistill.training.losses import weighted_token_loss

    model = _model(False)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids, mask, weights = _batch(seq_len)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = weighted_token_loss(model, ids, mask, weights)
    loss.backward()
    return sum(seen.values())


class PeakRSS:
    """The highest resident set seen while it runs: a thread reads /proc/self/statm every
    0.2 ms (torch's kernels release the GIL, so it keeps reading during them).
    ru_maxrss would not do: it cannot be reset, and building the model peaks higher."""

    def __init__(self):
        import os
        import threading

        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self):
        import time

        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.0002)

    def __enter__(self):
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def measure_rss(seq_len: int, checkpointing: bool) -> dict:
    """In this process: the peak resident set of one forward and backward pass above the resident set before it."""
    import torch

    from promptdistill.training.losses import weighted_token_loss
    from promptdistill.training.memory import return_freed_memory, trim

    torch.set_num_threads(1)
    return_freed_memory()
    model = _model(checkpointing)
    ids, mask, weights = _batch(seq_len)
    with torch.no_grad():  # warm up: kernels and lazily built buffers are not activations
        weighted_token_loss(model, ids[:, :16], mask[:, :16], weights[:, :16])
    trim()
    before = rss_bytes()
    with PeakRSS() as watch:
        loss, _ = weighted_token_loss(model, ids, mask, weights)
        loss.backward()
    return {"before": before, "peak": watch.peak, "delta": watch.peak - before}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", action="store_true", help="also measure the 135M shape's activations on this CPU")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--rss-child", choices=["plain", "checkpointing"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        print(json.dumps(measure_rss(args.seq_len, args.rss_child == "checkpointing")))
        return 0
    print("Computed peak training memory, batch 1, LoRA r%d on every linear layer (not measured on a GPU):\n" % args.rank)
    print(markdown_table(table(rank=args.rank)))
    if not args.measure:
        return 0
    n = args.seq_len
    print(f"\nCPU check of the activation term, 135M shape, float32, {n} tokens, a quarter trained:")
    saved = measure_saved(n)
    est = estimated_activations(n, False)
    print(f"  saved for backward (no checkpointing): measured {saved / MIB:.0f} MiB, estimated {est / MIB:.0f} MiB "
          f"(measured/estimated {saved / est:.2f})")
    for mode in ("plain", "checkpointing"):
        out = subprocess.run([sys.executable, __file__, "--rss-child", mode, "--seq-len", str(n)], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        est = estimated_activations(n, mode == "checkpointing")
        print(f"  peak RSS of forward + backward above the RSS before it, {mode}: {r['delta'] / MIB:.0f} MiB, "
              f"estimated activations {est / MIB:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
