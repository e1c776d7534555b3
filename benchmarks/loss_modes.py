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
  off-task    the gap closed on the example's off-task inputs (eval.offtask_inputs:
              greetings, questions, code...), where the teacher still has the prompt
  general     the general-ability check (general.py, 50 prompts) without any prompt,
              and the mean KL(base || student) per token over the base's replies there
  wall s      training time

Two-stage rows (`sft -> on-policy`, `kd -> on-policy`) train half the steps
with the first loss, then the other half on-policy from that adapter
(train.init_adapter): the same total step budget as the one-loss rows.
`kd + mix 0.2` and `kd + mix 0.5` are kd with data.mix_general = 0.2 and 0.5
(one item in five, one in two, is the base's own answer to a general prompt).

    .venv/bin/python benchmarks/loss_modes.py [--train 160] [--heldout 48] [--steps 30]

Labels are cached in --work (default runs/bench-loss-modes) and reused.

A free-text task (`task.reply_format = "text"`, e.g. examples/concise_chat)
gets its own table, from the evaluation `promptdistill eval` runs
(evaluation/systems.py) on the task's held-out file (data.heldout_inputs):

  passes      the share of replies that pass every [[eval.checks]] rule
  effect      prompt effect recovered on that share, (student - base) /
              (teacher - base), with its paired bootstrap interval (effect.py)
  judge       win + tie against the teacher (the teacher, with the prompt, judges
              both orders) and the judge's reliability (verdicts that survive the swap)
  KL/token    mean KL(teacher || system) per token of the teacher's replies
  general     the general-ability score without any prompt, beside the base's

with the modes TEXT_MODES (sft, kd, on-policy from the sft adapter, and sft
on the replies that pass the checks, train.reply_filter, each with and
without data.mix_general = 0.2). The training inputs are labeled once with
the teacher's top-20 token distributions (for kd); the teacher's and the
base's held-out replies are made once and reused by every mode through the
evaluation's own resume file, and the judge's verdicts on the base likewise,
also by a later run in the same --work folder with the same settings.

    .venv/bin/python benchmarks/loss_modes.py --task examples/concise_chat/task.toml [--steps 40] [--modes sft,kd]
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
from promptdistill.evaluation.general_ability import general_ability  # noqa: E402
from promptdistill.models import LoadedModel, load_model  # noqa: E402
from promptdistill.records import read_inputs, read_labeled  # noqa: E402
from promptdistill.rundir import RunDir  # noqa: E402
from promptdistill.split import split_examples, subsample  # noqa: E402
from promptdistill.task import Task  # noqa: E402
from promptdistill.labeling import label_inputs  # noqa: E402
from promptdistill.teachers.local import LocalTeacher  # noqa: E402
from promptdistill.training.recipe import train_student  # noqa: E402

# name -> stages of (train settings, data settings); a second stage starts from the first one's adapter
# and each stage gets an equal share of --steps.
MODES = {
    "sft": [({"loss": "sft"}, {})],
    "kd": [({"loss": "kd"}, {})],
    "kd+ce 0.5": [({"loss": "kd", "kd_alpha": 0.5}, {})],
    "on-policy": [({"loss": "on-policy"}, {})],
    "sft -> on-policy": [({"loss": "sft"}, {}), ({"loss": "on-policy"}, {})],
    "kd -> on-policy": [({"loss": "kd"}, {}), ({"loss": "on-policy"}, {})],
    "kd + mix 0.2": [({"loss": "kd"}, {"mix_general": 0.2})],
    "kd + mix 0.5": [({"loss": "kd"}, {"mix_general": 0.5})],
}


# The text table's modes; `+ mix` is data.mix_general = 0.2 in every stage, `filtered` train.reply_filter = "checks".
# Every mode names both settings, whatever the task file says: the modes differ only where their names say.
MIX, NO_MIX = {"mix_general": 0.2}, {"mix_general": 0.0}
SFT, KD, ON_POLICY = ({"loss": loss, "reply_filter": "none"} for loss in ("sft", "kd", "on-policy"))
TEXT_MODES = {
    "sft": [(SFT, NO_MIX)],
    "sft + mix": [(SFT, MIX)],
    "kd": [(KD, NO_MIX)],
    "kd + mix": [(KD, MIX)],
    "sft -> on-policy": [(SFT, NO_MIX), (ON_POLICY, NO_MIX)],
    "sft -> on-policy + mix": [(SFT, MIX), (ON_POLICY, MIX)],
    "sft filtered": [({**SFT, "reply_filter": "checks"}, NO_MIX)],
    "sft filtered + mix": [({**SFT, "reply_filter": "checks"}, MIX)],
}


SETTINGS_FILE = "loss_modes.settings.json"  # what a mode's evaluation was made under, beside its report


def folder_name(mode: str) -> str:
    return mode.replace(" ", "_").replace(">", "")


def train_mode(cfg, records, stages, steps: int, batch_size: int, root: Path) -> str:
    """Train the stages of one mode (a second stage starts from the first one's adapter,
    each gets an equal share of `steps`); return the last adapter folder."""
    shutil.rmtree(root, ignore_errors=True)
    init = None
    for k, (train_settings, data_settings) in enumerate(stages):
        n = steps // len(stages) + (steps % len(stages) if k == 0 else 0)
        train_cfg = dataclasses.replace(cfg.train, max_steps=n, batch_size=batch_size, grad_accum=1, save_every=10_000,
                                        eval_every=10_000, warmup_steps=min(cfg.train.warmup_steps, n // 5),
                                        init_adapter=init, **train_settings)
        run_cfg = dataclasses.replace(cfg, train=train_cfg, data=dataclasses.replace(cfg.data, **data_settings),
                                      models=dataclasses.replace(cfg.models, device="cpu", dtype="float32"))
        train_student(run_cfg, records, root / f"stage-{k + 1}", progress=True)
        init = str(root / f"stage-{k + 1}" / "adapter")
    return init


def text_table(args, cfg) -> int:
    """The free-text table: every mode trained on the same labels and evaluated as `eval` does."""
    import json

    from peft import PeftModel

    from promptdistill.evaluation.systems import Systems, evaluate_systems

    wanted = args.modes.split(",") if args.modes else list(TEXT_MODES)
    if unknown := [m for m in wanted if m not in TEXT_MODES]:
        raise SystemExit(f"unknown modes {unknown}; known: {', '.join(TEXT_MODES)}")
    work = Path(args.work) / cfg.task.name  # beside a label task's labels, never over them
    cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, top_logprobs=20),  # kd's soft targets
                              models=dataclasses.replace(cfg.models, device="cpu", dtype="float32"))
    task = Task(cfg.task)
    train_inputs = read_inputs(cfg.resolve_path(cfg.data.inputs))[: args.train or None]
    heldout = read_inputs(cfg.resolve_path(cfg.data.heldout_inputs))[: args.heldout or None]
    teacher = LocalTeacher.load(cfg.models.teacher, "cpu", "float32")
    t0 = time.perf_counter()
    label_inputs(cfg, train_inputs, teacher, work / "labels.jsonl", batch_size=16, progress=True)
    records = read_labeled(work / "labels.jsonl")
    print(f"labels: {sum(r.trainable for r in records)} of {len(train_inputs)} training replies usable "
          f"({time.perf_counter() - t0:.0f} s, cached in {work})")
    settings = dataclasses.replace(cfg.eval, latency_requests=0, max_examples=0, include_base=True, general_ability=True)
    # The evaluation's resume file, without the student's identity: the teacher's and the base's
    # predictions of the first mode are reused by the others (and the judge's verdicts on the base).
    resume = {"benchmark": "loss_modes", "task": cfg.to_dict(), "heldout": [(e.id, e.key) for e in heldout]}
    # An earlier run's evaluation in the same folder gives its teacher and base predictions too,
    # when it was made with these settings (SETTINGS_FILE, written beside its report).
    reference = next((folder for folder in (work / f"eval-{folder_name(m)}" for m in TEXT_MODES)
                      if (folder / "predictions.jsonl").exists() and (folder / SETTINGS_FILE).exists()
                      and json.loads((folder / SETTINGS_FILE).read_text()) == json.loads(json.dumps(resume))), None)
    rows = []
    for name in wanted:
        t0 = time.perf_counter()
        adapter = train_mode(cfg, records, TEXT_MODES[name], args.steps, args.batch_size, work / f"train-{folder_name(name)}")
        seconds = time.perf_counter() - t0
        loaded = load_model(cfg.models.student, "cpu", "float32")
        student = LoadedModel(PeftModel.from_pretrained(loaded.model, adapter).eval(), loaded.tokenizer, name, "cpu")
        base = RunDir.base_of(student)  # the same weights with the adapter off, as `eval` does
        out = work / f"eval-{folder_name(name)}"
        kept, judged = [], None  # read before `out` is cleared: it may be the reference itself
        if reference is not None:
            kept = [line for line in (reference / "predictions.jsonl").read_text().splitlines()
                    if json.loads(line)["system"] in ("teacher", "base")]
            judged = (reference / "judge.jsonl").read_text() if (reference / "judge.jsonl").exists() else None
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        if kept:
            (out / "predictions.partial.jsonl").write_text("\n".join([json.dumps({"settings": resume}), *kept]) + "\n")
        if judged is not None:
            (out / "judge.jsonl").write_text(judged)
        report = evaluate_systems(task, heldout, out, Systems(teacher, student, base), settings, seed=cfg.data.seed,
                                  resume_settings=resume, progress=True)
        (out / SETTINGS_FILE).write_text(json.dumps(resume))
        reference = reference or out
        rows.append((name, report, seconds))
        print(f"[loss_modes] {name}: trained in {seconds:.0f} s, evaluated in {time.perf_counter() - t0 - seconds:.0f} s", flush=True)
        # The table so far after every mode: a long run stopped early still leaves its rows.
        print_text_table(rows, f"{sum(r.trainable for r in records)} training replies, {len(heldout)} held-out conversations, "
                         f"{args.steps} steps x batch {args.batch_size}")
    return 0


def print_text_table(rows: list, heading: str) -> None:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    print()
    print(heading)
    first = rows[0][1]
    print(f"teacher passes {pct(first['prompt_effect']['overall']['teacher'])}, base {pct(first['prompt_effect']['overall']['base'])}; "
          f"KL/token base {first['fidelity']['kl_base']:.3f}; general ability base {pct(first['general_ability']['base_score'])}; "
          f"judge on base: win+tie {pct(_judged(first, 'base', 'win_or_tie'))}, reliability {pct(_judged(first, 'base', 'reliability'))}")
    print(f"{'mode':<24} {'passes':>7} {'effect [95% interval]':>24} {'judge w+t':>9} {'reliab.':>7} {'KL/token':>8} "
          f"{'general':>8} {'train s':>7}")
    for name, report, seconds in rows:
        effect = report["prompt_effect"]["overall"]
        interval = f"{pct(effect['recovered'])} [{pct(effect['low'])}, {pct(effect['high'])}]"
        print(f"{name:<24} {pct(effect['student']):>7} {interval:>24} {pct(_judged(report, 'student', 'win_or_tie')):>9} "
              f"{pct(_judged(report, 'student', 'reliability')):>7} {report['fidelity']['kl_student']:>8.3f} "
              f"{pct(report['general_ability']['student_score']):>8} {seconds:>7.0f}", flush=True)


def _judged(report: dict, system: str, key: str) -> float | None:
    """A rate of the judge section (win_or_tie, reliability) for `system`; None without a judge."""
    return report.get("judge", {}).get("systems", {}).get(system, {}).get(key, {}).get("rate")


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
    p.add_argument("--train", type=int, default=None, help="training inputs (default: 160; a text task's whole data.inputs)")
    p.add_argument("--heldout", type=int, default=None, help="held-out inputs (default: 48; a text task's whole held-out file)")
    p.add_argument("--steps", type=int, default=None, help="steps per mode (default: 30; 40 for a text task, the example's one epoch)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--work", default=str(ROOT / "runs/bench-loss-modes"))
    p.add_argument("--modes", default=None, help="comma-separated subset of the modes (MODES, or TEXT_MODES for a text task)")
    p.add_argument("--offtask", default=str(ROOT / "examples/language_id/offtask.jsonl"), help="off-task inputs ('' to skip)")
    args = p.parse_args()
    cfg = load_config(args.task)
    if cfg.task.reply_format == "text":
        args.steps = args.steps or 40
        return text_table(args, cfg)
    args.steps, args.heldout, args.train = args.steps or 30, args.heldout or 48, args.train or 160
    wanted = args.modes.split(",") if args.modes else list(MODES)
    if unknown := [m for m in wanted if m not in MODES]:
        p.error(f"unknown modes {unknown}; known: {', '.join(MODES)}")

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
    offtask = read_inputs(args.offtask) if args.offtask else []
    offtask_scorer = FidelityScorer(task, teacher)  # its own cache: off-task ids may repeat held-out ids
    base_model = LoadedModel(teacher.loaded.model, teacher.tokenizer, "base", "cpu")
    base_agree, base_kl = fidelity(task, scorer, base_model, heldout)
    base_off = fidelity(task, offtask_scorer, base_model, offtask)[1] if offtask else None
    base_general = general_ability(base_model, base_model, max_drop=1.0, progress=False)[0]
    rows = [("base (no training)", base_agree, base_kl, None, None, base_general["base_score"], 0.0, 0.0)]
    for name in wanted:
        t0 = time.perf_counter()
        init = train_mode(cfg, records, MODES[name], args.steps, args.batch_size, work / f"train-{folder_name(name)}")
        seconds = time.perf_counter() - t0
        from peft import PeftModel

        base = load_model(cfg.models.student, "cpu", "float32")
        student = LoadedModel(PeftModel.from_pretrained(base.model, init).eval(), base.tokenizer, name, "cpu")
        agree, kl = fidelity(task, scorer, student, heldout)
        off_gap = 1 - fidelity(task, offtask_scorer, student, offtask)[1] / base_off if offtask else None
        general = general_ability(base_model, student, max_drop=1.0, progress=False)[0]
        rows.append((name, agree, kl, 1 - kl / base_kl, off_gap, general["student_score"], general["kl_base_student"], seconds))
    print()
    print(f"{len(records)} training records, {len(heldout)} held-out inputs, {len(offtask)} off-task inputs, "
          f"{args.steps} steps x batch {args.batch_size}")
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    print(f"{'mode':<20} {'agreement':>9} {'KL':>8} {'gap closed':>10} {'off-task gap':>12} {'general':>8} {'KL(base||.)':>11} {'wall s':>7}")
    for name, agree, kl, gap, off_gap, general, general_kl, seconds in rows:
        print(f"{name:<20} {pct(agree):>9} {kl:>8.3f} {pct(gap):>10} {pct(off_gap):>12} {pct(general):>8} {general_kl:>11.3f} {seconds:>7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
