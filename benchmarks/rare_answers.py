"""Rare answers: does train.balance = "answers" keep them?

A teacher whose most common answer covers about half of the inputs teaches
the student that answer for anything unclear, and the rare answers collapse
into it. Overall agreement hides this; macro agreement (each answer weighs the
same) shows it. This benchmark needs no teacher model and runs offline: the
language-ID example's gold labels stand in for a teacher's answers (a
non-degenerate teacher: it is right and consistent), drawn with a realistic
imbalance.

- training set: `--train` inputs, `--major-share` of them (default 45%) with
  one answer (`--major`, default `ot`), the rest spread evenly over the other
  12 answers (seeded draw; the example has 81 `ot` inputs, which bounds --train);
- held-out set: `--per-answer` other inputs of every answer (default 5), so
  that every answer's agreement rests on the same number of inputs.
  `overall` is the agreement expected on inputs drawn like the training set:
  the per-answer agreements weighted by the training shares;
  `held-out` is the plain agreement on the (even) held-out set; `macro` the mean
  over answers;
- students: the packaged SmolLM2-135M-Instruct, LoRA-trained with the
  example's recipe (task.toml's [train]: LoRA rank, learning rate, schedule) once as is and once
  with train.balance = "answers", same seed, steps and batch (`--steps`,
  `--batch-size`); a student's answer to a held-out input is its most likely
  label, scored like choose mode without the prompt (one forward pass per
  input, not a generation: the shared 2-core CPU could not afford that);
- floors: the surface baseline (character 1-3-gram logistic regression,
  surface_baseline.py) fitted on the same training answers, and the majority answer.

    .venv/bin/python benchmarks/rare_answers.py [--train 170] [--per-answer 5] [--steps 40] [--batch-size 16]
    # on a busy machine: the two students in parallel, then the table from their saved answers
    .venv/bin/python benchmarks/rare_answers.py --only none & .venv/bin/python benchmarks/rare_answers.py --only answers & wait
    .venv/bin/python benchmarks/rare_answers.py

Work files (adapters) go to --work (default runs/bench-rare-answers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptdistill.config import load_config  # noqa: E402
from promptdistill.evaluation.agreement import majority_floor, per_answer_fidelity  # noqa: E402
from promptdistill.evaluation.surface_baseline import evaluate_surface_baseline  # noqa: E402
from promptdistill.records import LabeledExample, read_inputs  # noqa: E402
from promptdistill.task import OK, Task  # noqa: E402


def draw(examples, labels, major: str, major_share: float, n_train: int, per_answer: int, seed: int):
    """(training examples with the imbalance, held-out examples with `per_answer` of every answer)."""
    rng = random.Random(seed)
    by_label = {a: [e for e in examples if e.gold_label == a] for a in labels}
    for group in by_label.values():
        rng.shuffle(group)
    heldout = [e for a in labels for e in by_label[a][:per_answer]]
    n_major = round(major_share * n_train)
    others = [a for a in labels if a != major]
    train = by_label[major][per_answer:per_answer + n_major]
    if len(train) < n_major:
        raise SystemExit(f"only {len(train)} '{major}' inputs left for {n_major}: lower --train or --major-share")
    for i, a in enumerate(others):
        k = (n_train - n_major) // len(others) + (i < (n_train - n_major) % len(others))
        train += by_label[a][per_answer:per_answer + k]
    rng.shuffle(train)
    return train, heldout


def teacher_records(task: Task, examples) -> list[LabeledExample]:
    """The gold label as the teacher's answer, written as the labeling stage would record it."""
    out = []
    for e in examples:
        reply = task.label_reply(e.gold_label)
        out.append(LabeledExample(e.id, e.text, e.gold_label, reply, e.gold_label, OK,
                                  task.student_messages(e.text) + [{"role": "assistant", "content": task.target_reply(reply, e.gold_label)}]))
    return out


def weighted_overall(fid: dict, shares: dict) -> float:
    """Agreement expected on inputs drawn with the training shares: sum over answers of share x agreement."""
    return sum(shares[a] * fid["per_answer"][a]["rate"] for a in shares if fid["per_answer"][a]["n"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=str(ROOT / "examples/language_id/task.toml"))
    p.add_argument("--train", type=int, default=170, help="training inputs")
    p.add_argument("--major", default="ot", help="the answer that dominates the training set")
    p.add_argument("--major-share", type=float, default=0.45)
    p.add_argument("--per-answer", type=int, default=5, help="held-out inputs per answer")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(ROOT / "runs/bench-rare-answers"))
    p.add_argument("--only", choices=["none", "answers"], help="train and score only this student (its answers are saved in "
                   "--work; run the two in parallel, then once without --only, which reuses them)")
    args = p.parse_args()

    import torch
    from peft import PeftModel

    from promptdistill.teachers.local import label_distribution
    from promptdistill.teachers.records import label_candidates
    from promptdistill.models import LoadedModel, load_model
    from promptdistill.training.recipe import train_student

    cfg = load_config(args.task)
    task = Task(cfg.task)
    examples = read_inputs(cfg.resolve_path(cfg.data.inputs))
    train, heldout = draw(examples, task.labels, args.major, args.major_share, args.train, args.per_answer, args.seed)
    records = teacher_records(task, train)
    counts = Counter(r.label for r in records)
    shares = {a: counts[a] / len(records) for a in task.labels}
    teacher = [e.gold_label for e in heldout]
    print(f"training answers: {dict(counts.most_common())}")

    rows = []
    surface = evaluate_surface_baseline([r.text for r in records], [r.label for r in records], [e.text for e in heldout], teacher,
                                        labels=task.labels)
    if surface.get("available"):
        rows.append(("surface baseline", per_answer_fidelity(teacher, surface["predictions"], task.labels), None))
    rows.append((f"majority ('{majority_floor([r.label for r in records])['label']}')",
                 per_answer_fidelity(teacher, [majority_floor([r.label for r in records])["label"]] * len(heldout), task.labels), None))

    work = Path(args.work)
    models = dataclasses.replace(cfg.models, device="cpu", dtype="float32")
    for name, balance in (("student, default", "none"), ("student, balance=answers", "answers")):
        saved = work / f"answers-{balance}.json"
        settings = [vars(args)[k] for k in ("task", "train", "major", "major_share", "per_answer", "steps", "batch_size", "seed")]
        if args.only is not None and args.only != balance:
            continue
        if args.only is None and saved.exists() and json.loads(saved.read_text())["settings"] == settings:
            kept = json.loads(saved.read_text())
            rows.append((name, per_answer_fidelity(teacher, kept["answers"], task.labels), tuple(kept["cost"])))
            continue
        train_cfg = dataclasses.replace(cfg.train, max_steps=args.steps, batch_size=args.batch_size, grad_accum=1,
                                        warmup_steps=min(cfg.train.warmup_steps, args.steps // 5),
                                        save_every=10_000, eval_every=10_000, seed=args.seed, balance=balance)
        run_dir = work / f"train-{balance}"
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        summary = train_student(dataclasses.replace(cfg, train=train_cfg, models=models), records, run_dir, progress=True)
        seconds = time.perf_counter() - t0
        base = load_model(cfg.models.student, "cpu", "float32")
        student = LoadedModel(PeftModel.from_pretrained(base.model, str(run_dir / "adapter")).eval(), base.tokenizer, name, "cpu")
        candidates = label_candidates(task, student.tokenizer, task.student_messages("x"))
        with torch.no_grad():
            probs = [label_distribution(task, student, task.student_messages(e.text), candidates) for e in heldout]
        answers = [max(q, key=q.get) for q in probs]
        rows.append((name, per_answer_fidelity(teacher, answers, task.labels), (summary["steps"], seconds)))
        saved.write_text(json.dumps({"settings": settings, "answers": answers, "cost": [summary["steps"], seconds]}))
        del student, base

    print()
    print(f"{len(records)} training inputs ({100 * shares[args.major]:.0f}% '{args.major}'), "
          f"{len(heldout)} held-out ({args.per_answer} per answer), SmolLM2-135M-Instruct student, "
          f"{args.steps} steps x batch {args.batch_size}")
    head = f"{'system':<26} {'overall':>8} {'held-out':>9} {'macro':>7}  {'worst answers':<40} {'train':>12}"
    print(head)
    print("-" * len(head))
    for name, fid, cost in rows:
        worst = ", ".join(f"{a} {100 * fid['per_answer'][a]['rate']:.0f}%" for a in fid["worst"])
        steps = "" if cost is None else f"{cost[0]} st {cost[1]:.0f} s"
        print(f"{name:<26} {100 * weighted_overall(fid, shares):>7.1f}% {100 * fid['agreement']['rate']:>8.1f}% "
              f"{100 * fid['macro_agreement']:>6.1f}%  {worst:<40} {steps:>12}")
    print("\nper answer (agreement on its held-out inputs):")
    print(f"{'answer':<8} {'train n':>7} " + " ".join(f"{n[:14]:>14}" for n, _, _ in rows))
    for a in task.labels:
        print(f"{a:<8} {counts[a]:>7} " + " ".join(f"{100 * fid['per_answer'][a]['rate']:>13.0f}%" for _, fid, _ in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
