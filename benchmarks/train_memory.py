"""Training memory: resident memory of the real 135M student, step by step.

Trained with whole micro-batches and glibc's default allocator settings, the
packaged SmolLM2-135M-Instruct with LoRA r32 at batch 16 on CPU (float32)
held 8.9 GB resident at step 3 and 12.9-14.1 GB from step 25 on
(training/memory.py says why). This trains the production recipe (`DistillationRecipe`, the sft
loss, held-out evaluation every 25 steps as in examples/language_id) on the
language-id examples with the gold label as the reply, and prints the
process's resident set (VmRSS) after steps 1, 10, 25, 50, 75 and 100, the
highest VmRSS seen after any step or evaluation, and the peak (ru_maxrss,
which also counts transient peaks inside a step). The goal: a peak under
4 GB and a flat RSS from step 10 to the end.

    .venv/bin/python benchmarks/train_memory.py [--steps 100] [--batch 16] [--every 0]

`--every N` also prints the RSS after every N-th step. Run it in a fresh
process: ru_maxrss is the peak of the whole process.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptdistill.models import BUILTIN_SMOLLM2 as STUDENT  # noqa: E402
REPORT_AT = (1, 10, 25, 50, 75, 100)


def rss_mb() -> float:
    """The process's resident set now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def records(heldout_fraction: float, seed: int):
    """(train, heldout) LabeledExample lists from examples/language_id, the gold label as the reply."""
    from promptdistill.records import LabeledExample, read_inputs

    rows = read_inputs(ROOT / "examples/language_id/data.jsonl")
    random.Random(seed).shuffle(rows)
    out = []
    for e in rows:
        reply = f"Final Answer: {e.gold_label}"
        out.append(LabeledExample(id=e.id, text=e.text, gold_label=e.gold_label, teacher_reply=reply, label=e.gold_label, status="ok",
                                  messages=[{"role": "user", "content": e.text}, {"role": "assistant", "content": reply}]))
    n_held = int(len(out) * heldout_fraction)
    return out[n_held:], out[:n_held]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--every", type=int, default=0, help="also print the RSS after every N-th step")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch

    from promptdistill.config import Config, ModelsConfig, TrainConfig
    from promptdistill.training.recipe import DistillationRecipe

    samples: dict[int, float] = {}
    highest = [0.0]

    class Measured(DistillationRecipe):
        def _train_step(self, step, group):
            super()._train_step(step, group)
            samples[step] = rss_mb()
            highest[0] = max(highest[0], samples[step])
            if step in REPORT_AT or (args.every and step % args.every == 0):
                print(f"step {step:>4}  rss {samples[step]:>7.0f} MB  peak {peak_mb():>7.0f} MB", flush=True)

        def _evaluate(self, step):
            super()._evaluate(step)
            highest[0] = max(highest[0], rss_mb())

    train, held = records(0.2, args.seed)
    cfg = Config(train=TrainConfig(lora_rank=32, lora_alpha=32, lora_dropout=0.0, learning_rate=5e-4, lr_schedule="cosine",
                                   warmup_steps=10, max_steps=args.steps, batch_size=args.batch, grad_accum=1,
                                   eval_every=args.eval_every, save_every=10**9, seed=args.seed),
                 models=ModelsConfig(student=STUDENT, teacher=STUDENT, device="cpu", dtype="float32"))
    print(f"{len(train)} training / {len(held)} held-out examples, {args.steps} steps of {args.batch}, LoRA r32, "
          f"{STUDENT}, CPU float32, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run = Measured(cfg, Path(tmp) / "run", progress=False)
        with run.lock():
            try:
                run.setup(train, held)
                print(f"after setup (model loaded)  rss {rss_mb():.0f} MB", flush=True)
                summary = run.train()
            finally:
                run.cleanup()
    flat = [samples[s] for s in samples if s >= min(10, args.steps)]
    print(f"final loss {summary['final_loss']:.4f}, held-out loss {summary['final_heldout_loss']}, {time.time() - started:.0f} s")
    print(f"rss from step {min(10, args.steps)} to {args.steps}: min {min(flat):.0f} MB, max {max(flat):.0f} MB "
          f"(highest after any step or evaluation: {highest[0]:.0f} MB)")
    print(f"peak RSS (ru_maxrss): {peak_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
