"""Training losses side by side: sft, kd and on-policy on the same data and budget.

The packaged SmolLM2-135M-Instruct teacher labels the example data set once
(choose mode, so every record carries the teacher's distribution over the 13
labels). The same base model is then LoRA-trained as the student with each
loss, with the same steps, batch, learning rate and seed, and each student is
measured on the same held-out inputs against the teacher:

  agreement   the student's most likely label (scored like choose mode,
              without the prompt) equals the teacher's
  KL          mean KL(teacher || student) over the label distribution (fidelity.py)
  gap closed  1 - KL_student / KL_base
  wall s      training time

    .venv/bin/python benchmarks/loss_modes.py [--train 160] [--heldout 48] [--steps 30]

Labels are cached in --work (default runs/bench-loss-modes) and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptdistill.config import load_config  # noqa: E402
from promptdistill.evaluation.fidelity import FidelityScorer, distribution_kl  # noqa: E402
from promptdistill.models import LoadedModel, load_model  # noqa: E402
from promptdistill.records import read_inputs, read_labeled  # noqa: E402
from promptdistill.split import split_examples, subsample  # noqa: E402
from promptdistill.task import Task  # noqa: E402
from promptdistill.labeling import label_inputs  # noqa: E402
from promptdistill.teachers.local import LocalTeacher  # noqa: E402
from promptdistill.training.recipe import train_student  # noqa: E402

MODES = [("sft", {"loss": "sft"}), ("kd", {"loss": "kd"}), ("kd+ce 0.5", {"loss": "kd", "kd_alpha": 0.5}),
         ("on-policy", {"loss": "on-policy"})]


def fidelity(task, scorer, loaded, examples) -> tuple[float, float]:
    """(agreement of the most likely label with the teacher's, mean KL(teacher || model))."""
    agree, kls = 0, []
    for e in examples:
        p = scorer.teacher_label_probs(e.id, e.text)
        q = scorer.model_label_probs(loaded, e.text)
        agree += max(p, key=p.get) == max(q, key=q.get)
        kls.append(distribution_kl(p, q))
    return agree / len(examples), sum(kls) / len(kls)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=str(ROOT / "examples/language_id/task.toml"))
    p.add_argument("--train", type=int, default=160, help="training inputs")
    p.add_argument("--heldout", type=int, default=48, help="held-out inputs")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--work", default=str(ROOT / "runs/bench-loss-modes"))
    p.add_argument("--modes", default=",".join(name for name, _ in MODES), help="comma-separated subset of the modes")
    args = p.parse_args()

    cfg = load_config(args.task)
    task = Task(cfg.task)
    work = Path(args.work)
    examples = subsample(read_inputs(cfg.resolve_path(cfg.data.inputs)), args.train + args.heldout, seed=0)
    train_inputs, heldout = split_examples(examples, args.heldout / len(examples), seed=0)
    teacher = LocalTeacher.load(cfg.models.teacher, "cpu", "float32")
    t0 = time.perf_counter()
    label_inputs(cfg, train_inputs, teacher, work / "labels.jsonl", mode="choose", batch_size=16, progress=True)
    print(f"labels: {len(train_inputs)} training inputs ({time.perf_counter() - t0:.0f} s, cached in {work})")
    records = read_labeled(work / "labels.jsonl")

    scorer = FidelityScorer(task, teacher)
    base_agree, base_kl = fidelity(task, scorer, LoadedModel(teacher.loaded.model, teacher.tokenizer, "base", "cpu"), heldout)
    rows = [("base (no training)", base_agree, base_kl, None, 0.0)]
    wanted = args.modes.split(",")
    for name, settings in MODES:
        if name not in wanted:
            continue
        train_cfg = dataclasses.replace(cfg.train, max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                                        save_every=10_000, eval_every=10_000, warmup_steps=min(cfg.train.warmup_steps, args.steps // 5),
                                        **settings)
        run_dir = work / f"train-{name.replace(' ', '_')}"
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        run_cfg = dataclasses.replace(cfg, train=train_cfg, models=dataclasses.replace(cfg.models, device="cpu", dtype="float32"))
        train_student(run_cfg, records, run_dir, progress=True)
        seconds = time.perf_counter() - t0
        from peft import PeftModel

        base = load_model(cfg.models.student, "cpu", "float32")
        student = LoadedModel(PeftModel.from_pretrained(base.model, str(run_dir / "adapter")).eval(), base.tokenizer, name, "cpu")
        agree, kl = fidelity(task, scorer, student, heldout)
        rows.append((name, agree, kl, 1 - kl / base_kl, seconds))
    print()
    print(f"{len(records)} training records, {len(heldout)} held-out inputs, {args.steps} steps x batch {args.batch_size}")
    print(f"{'mode':<20} {'agreement':>9} {'KL':>8} {'gap closed':>10} {'wall s':>7}")
    for name, agree, kl, gap, seconds in rows:
        print(f"{name:<20} {100 * agree:>8.1f}% {kl:>8.3f} {'-' if gap is None else f'{100 * gap:.1f}%':>10} {seconds:>7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
