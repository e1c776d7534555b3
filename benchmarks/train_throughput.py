"""Training speed: TRL's SFTTrainer against promptdistill's train_student.

The same data, student, LoRA and optimiser settings, trained three ways:

  trl     trl.SFTTrainer with a peft LoraConfig on a prompt-completion dataset,
          so the loss is on the assistant turn only (completion-only loss;
          SmolLM2's chat template has no {% generation %} markers, which
          TRL's `assistant_only_loss` needs)
  trl+mmap  the same TRL run with glibc's mmap threshold fixed through the
          environment (MALLOC_MMAP_THRESHOLD_ at training.memory.MMAP_THRESHOLD),
          the allocator setting promptdistill makes from inside the process
          (training/memory.py): any program can have it, so the part of the
          peak-memory difference it explains is not credited to promptdistill
  ours    promptdistill.training.recipe.train_student (sft loss: the assistant reply)

Data: a seeded sample of examples/language_id/data.jsonl with the *gold*
label as the target reply ("Final Answer: xx"), i.e. records built without
running the teacher, so that the benchmark measures training only. Student:
the packaged SmolLM2-135M-Instruct in float32 on CPU; LoRA rank 32, alpha 32,
all linear layers, no dropout; AdamW, constant learning rate, no weight decay;
the same global batch and number of steps, which together make exactly one
pass over the training examples (so both train on the same examples).

Each method runs in its own subprocess, so its peak RSS (ru_maxrss) is its
own. Printed per method: trained (reply) tokens per second of the training
loop (model loading and dataset preparation excluded), peak RSS, and the
held-out loss after training: mean cross-entropy per reply token on the same
held-out records, computed by the same function (training.recipe.heldout_loss) for both.
The last lines are the throughput ratios ours / TRL, without and with the
allocator setting. Resident memory step by step, over a longer run:
benchmarks/train_memory.py.

    .venv/bin/python benchmarks/train_throughput.py [--train 96] [--heldout 48] [--batch 8 --accum 2]

On a GPU (benchmarks/gpu_check.py's training part): `--device cuda --dtype
bfloat16 --student FOLDER --methods trl,ours` (trl+mmap is about glibc, not
GPU memory); each method then also reports its peak GPU memory
(torch.cuda.max_memory_allocated), and `--gradient-checkpointing` turns
checkpointing on for both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptdistill.models import BUILTIN_SMOLLM2 as STUDENT  # noqa: E402

METHODS = ("trl", "trl+mmap", "ours")


def records(args):
    """(train, heldout) LabeledExample lists with the gold label as the reply."""
    from promptdistill.records import LabeledExample, read_inputs

    rows = read_inputs(ROOT / "examples/language_id/data.jsonl")
    rows = random.Random(args.seed).sample(rows, args.train + args.heldout)
    out = []
    for e in rows:
        reply = f"Final Answer: {e.gold_label}"
        out.append(LabeledExample(id=e.id, text=e.text, gold_label=e.gold_label, teacher_reply=reply, label=e.gold_label, status="ok",
                                  messages=[{"role": "user", "content": e.text}, {"role": "assistant", "content": reply}]))
    return out[: args.train], out[args.train :]


def heldout(model, tokenizer, examples) -> float:
    from promptdistill.training.data import render_for_training
    from promptdistill.training.recipe import heldout_loss

    rendered, _ = render_for_training(examples, tokenizer, 512)
    return heldout_loss(model, rendered, tokenizer.pad_token_id)


def trained_tokens(examples, tokenizer) -> int:
    from promptdistill.training.data import render_for_training

    return sum(e.num_trained for e in render_for_training(examples, tokenizer, 512)[0])


def run_ours(args, train, held, work: Path) -> dict:
    from promptdistill.config import Config, ModelsConfig, TrainConfig
    from promptdistill.models import load_model
    from promptdistill.training.recipe import train_student

    train_cfg = TrainConfig(lora_rank=32, lora_alpha=32, lora_dropout=0.0, learning_rate=args.lr, lr_schedule="constant",
                            max_steps=args.steps, batch_size=args.batch, grad_accum=args.accum, eval_every=10**9,
                            save_every=10**9, seed=args.seed, gradient_checkpointing=args.gradient_checkpointing)
    models = ModelsConfig(student=args.student, teacher=args.student, device=args.device, dtype=args.dtype)
    summary = train_student(Config(train=train_cfg, models=models), train, work / "ours", progress=False)
    peak = peak_gpu_mb(args)  # before the trained student is loaded again for the held-out loss
    trained = load_model(args.student, args.device, args.dtype, adapter=work / "ours" / "adapter")
    # summary["seconds"] is the step loop (it includes writing the final checkpoint and adapter)
    return {"seconds": summary["seconds"], "tokens": trained_tokens(train, trained.tokenizer),
            "heldout_loss": heldout(trained.model, trained.tokenizer, held), "peak_gpu_mb": peak}


def peak_gpu_mb(args) -> float | None:
    """The highest GPU memory torch allocated in this process so far (None on a CPU)."""
    if not args.device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


def run_trl(args, train, held, work: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from promptdistill.models import load_model

    loaded = load_model(args.student, args.device, args.dtype)
    data = Dataset.from_list([{"prompt": r.messages[:1], "completion": r.messages[1:]} for r in train])
    config = SFTConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.accum,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch", seed=args.seed, data_seed=args.seed, use_cpu=args.device == "cpu", bf16=args.dtype == "bfloat16",
        fp16=False, gradient_checkpointing=args.gradient_checkpointing, completion_only_loss=True, packing=False, max_length=512,
        save_strategy="no", report_to="none", logging_steps=1, dataloader_num_workers=0, disable_tqdm=True,
    )
    lora = LoraConfig(r=32, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=loaded.model, args=config, train_dataset=data, processing_class=loaded.tokenizer,
                         peft_config=lora)
    cols = trainer.train_dataset.column_names
    tokens = (sum(sum(m) for m in trainer.train_dataset["completion_mask"]) if "completion_mask" in cols
              else trained_tokens(train, loaded.tokenizer))
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    return {"seconds": seconds, "tokens": tokens, "heldout_loss": heldout(trainer.model, loaded.tokenizer, held),
            "peak_gpu_mb": peak_gpu_mb(args)}


def child(args) -> int:
    import torch

    torch.manual_seed(args.seed)
    train, held = records(args)
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_ours if args.method == "ours" else run_trl)(args, train, held, Path(tmp))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(result))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=96, help="training examples (= steps x global batch)")
    p.add_argument("--heldout", type=int, default=48)
    p.add_argument("--batch", type=int, default=8, help="micro-batch")
    p.add_argument("--accum", type=int, default=2, help="gradient accumulation (global batch = batch x accum)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--student", default=STUDENT, help="model name or folder (default: the packaged SmolLM2-135M-Instruct)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--gradient-checkpointing", action="store_true", help="for every method")
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.steps = args.train // (args.batch * args.accum)
    if args.steps < 1 or args.steps * args.batch * args.accum != args.train:
        p.error("--train must be a multiple of batch x accum (one pass over the examples)")
    if args.method:
        return child(args)
    methods = [m for m in args.methods.split(",") if m]
    if not methods or set(methods) - set(METHODS):
        p.error(f"--methods: comma-separated, of {', '.join(METHODS)}")

    from promptdistill.training.memory import MMAP_THRESHOLD

    results = {}
    for method in methods:
        env = dict(os.environ)
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        if method == "trl+mmap":
            # glibc reads it at the first malloc, before Python starts
            env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, __file__, "--method", method, "--out", out.name] + sys.argv[1:]
            subprocess.run(cmd, check=True, env=env)
            results[method] = json.loads(Path(out.name).read_text())

    def speed(method):
        return results[method]["tokens"] / results[method]["seconds"]

    ckpt = ", gradient checkpointing" if args.gradient_checkpointing else ""
    print(f"\n{args.train} examples, {args.steps} steps of {args.batch * args.accum}, LoRA r32, {args.student}, "
          f"{args.device} {args.dtype}{ckpt}")
    print(f"{'method':<10}{'trained tok/s':>15}{'reply tokens':>14}{'train s':>10}{'peak RSS MB':>13}{'peak GPU MB':>13}"
          f"{'held-out loss':>15}")
    for method, r in results.items():
        gpu = f"{r['peak_gpu_mb']:>13.0f}" if r.get("peak_gpu_mb") is not None else f"{'-':>13}"
        print(f"{method:<10}{r['tokens'] / r['seconds']:>15.1f}{r['tokens']:>14d}{r['seconds']:>10.1f}"
              f"{r['peak_rss_mb']:>13.0f}{gpu}{r['heldout_loss']:>15.4f}")
    for other, name in (("trl", "TRL"), ("trl+mmap", "TRL+mmap")):
        if "ours" in results and other in results:
            print(f"throughput ratio (ours / {name}): {speed('ours') / speed(other):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
