"""`run`: split -> label -> train -> eval, into one run directory.

Each stage writes its outputs, then a marker holding a fingerprint of the
settings it depended on (`stage_settings`). Rerunning skips every stage whose
marker matches; a stage whose settings changed is refused unless `force`, in
which case it and every later stage run again. The directory's layout is
`rundir.RunDir`'s.
"""

from __future__ import annotations

import json
from dataclasses import replace

from .config import Config, eval_settings, task_settings, training_settings
from .errors import PromptDistillError
from .io import atomic_write_json, fingerprint
from .records import check_gold_labels, read_inputs, read_labeled, report_duplicates, write_examples
from .rundir import RunDir
from .split import split_examples, subsample
from .task import Task


def stage_settings(cfg: Config) -> dict[str, dict]:
    """The configuration each stage depends on (including its predecessors)."""
    d = cfg.to_dict()
    split = {
        "data": d["data"],
        "inputs": str(cfg.resolve_path(cfg.data.inputs)) if cfg.data.inputs else None,
        # what decides which inputs are too long for the student
        "fit": [cfg.train.max_length, cfg.task.max_new_tokens, cfg.models.student],
    }
    label = {**split, "task": task_settings(cfg.task), "teacher": d["models"]["teacher"]}
    if cfg.models.teacher_backend != "transformers":
        # Only then, so run directories labeled before backends existed keep their fingerprint.
        label["teacher_backend"] = [cfg.models.teacher_backend, cfg.models.teacher_url]
    train = {**label, "train": training_settings(cfg.train), "student": d["models"]["student"], "task_target": d["task"]["student_target"]}
    evaluate = {**train, "eval": eval_settings(cfg.eval)}
    return {"split": split, "label": label, "train": train, "eval": evaluate}


def run_pipeline(cfg: Config, run_dir, *, force: bool = False, progress: bool = True, log=print) -> dict:
    """Run every stage not already complete; return the evaluation report."""
    if not cfg.data.inputs:
        raise PromptDistillError("set data.inputs to the input file", field="data.inputs")
    run = RunDir(run_dir)
    with run.lock():
        return _run_stages(cfg, run, force=force, progress=progress, log=log)


def _run_stages(cfg: Config, run: RunDir, *, force: bool, progress: bool, log) -> dict:
    from .evaluation.report import results_table
    from .labeling import label_inputs, load_teacher
    from .training.recipe import train_student

    task = Task(cfg.task)
    prints = {stage: fingerprint(settings) for stage, settings in stage_settings(cfg).items()}
    todo = run.plan(prints, force)
    # Written only once the settings are accepted: predict reads the model and task from it.
    run.save_config(cfg)

    def stage_needed(stage: str) -> bool:
        if stage not in todo:
            log(f"[promptdistill] {stage}: already complete, skipping")
            return False
        return True

    if stage_needed("split"):
        inputs_path = cfg.resolve_path(cfg.data.inputs)
        examples = read_inputs(inputs_path)
        check_gold_labels(examples, task.labels, inputs_path)
        examples = report_duplicates(examples, inputs_path, cfg.data.dedupe, lambda m: log(f"[promptdistill] {m}"), "data.dedupe = true")
        examples = fit_inputs(examples, task, cfg, inputs_path, log)
        examples = subsample(examples, cfg.data.limit, cfg.data.seed)
        train, heldout = split_examples(examples, cfg.data.heldout_fraction, cfg.data.seed)
        write_examples(run.split_file("train"), train)
        write_examples(run.split_file("heldout"), heldout)
        run.mark_done("split", prints["split"], {"train": len(train), "heldout": len(heldout)})
        log(f"[promptdistill] split: {len(train)} train, {len(heldout)} held-out")

    train_inputs = read_inputs(run.split_file("train"))
    heldout_inputs = read_inputs(run.split_file("heldout"))

    if stage_needed("label"):
        teacher = load_teacher(cfg)
        summaries = {}
        for name, exs in (("train", train_inputs), ("heldout", heldout_inputs)):
            summaries[name] = label_inputs(cfg, exs, teacher, run.labels_file(name), force=force, progress=progress)
            s = summaries[name]
            log(f"[promptdistill] label {name}: {s['labeled']} labeled, {s['rejected']} rejected "
                f"{s['by_status']}; teacher accuracy vs gold: {_pct(s['teacher_accuracy'])}")
        atomic_write_json(run.labels_summary, summaries)
        run.mark_done("label", prints["label"], summaries)
        del teacher

    if stage_needed("train"):
        # Only records of the current split, whatever else a labels file holds.
        train_ids, heldout_ids = {e.id for e in train_inputs}, {e.id for e in heldout_inputs}
        summary = train_student(
            cfg, [r for r in read_labeled(run.labels_file("train")) if r.id in train_ids], run.train_dir,
            heldout=[r for r in read_labeled(run.labels_file("heldout")) if r.id in heldout_ids], progress=progress,
        )
        run.mark_done("train", prints["train"], summary)
        log(f"[promptdistill] train: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
            f"held-out loss {summary['final_heldout_loss'] if summary['final_heldout_loss'] is not None else '-'}")

    if stage_needed("eval"):
        report = evaluate_run(cfg, run.path, heldout_inputs, progress=progress)
        run.mark_done("eval", prints["eval"], {name: {k: v for k, v in m.items() if k != "confusion"} for name, m in report["systems"].items()})
    report = json.loads(run.report_path.read_text(encoding="utf-8"))
    log("")
    log(results_table(report))
    log(f"\nreport: {run.report_md}")
    return report


def evaluate_run(cfg: Config, run_dir, examples, *, progress: bool = True) -> dict:
    """Evaluate the teacher, base and trained student of a run directory on
    `examples` and write the report with its pictures into RUN/eval; return the report."""
    from .evaluation.report import write_run_report
    from .evaluation.systems import evaluate_systems
    from .teachers import load_teacher

    run = RunDir(run_dir)
    task = Task(cfg.task)
    if cfg.eval.max_examples:
        examples = examples[: cfg.eval.max_examples]
    adapter = run.adapter()
    student = run.load_student(cfg)
    # The base row and (when it is the same model on the transformers backend)
    # the teacher share the student's weights with the adapter switched off: one copy in memory.
    base_view = run.base_of(student)
    teacher = load_teacher(cfg, base=base_view)
    # An interrupted evaluation resumes only with the same settings, inputs and adapter.
    inputs_print = fingerprint([cfg.to_dict(), [(e.id, e.text) for e in examples]], (adapter / "adapter_model.safetensors").read_bytes())
    report = evaluate_systems(
        task, examples, run.eval_dir, teacher=teacher, student=student, seed=cfg.data.seed,
        base=base_view if cfg.eval.include_base else None, progress=progress, fingerprint=inputs_print,
        train_records=_train_records(run), teacher_resamples=cfg.eval.teacher_resamples,
    )
    # Pictures (confusion matrices, loss curves, cost) into eval/, report.md and report.html.
    write_run_report(run.path)
    return report


def _train_records(run: RunDir) -> list | None:
    """The training split's labeled records (what the surface baseline is fitted on), or None before labeling."""
    path = run.labels_file("train")
    if not path.exists() or not run.split_file("train").exists():
        return None
    train_ids = {e.id for e in read_inputs(run.split_file("train"))}
    return [r for r in read_labeled(path) if r.id in train_ids]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def fit_inputs(examples, task: Task, cfg: Config, path, log) -> list:
    """Report inputs too long for the student (prompt + reply within train.max_length);
    skip them or truncate their text, as data.too_long says."""
    from .models import load_tokenizer
    from .render import render_prompt

    tok = load_tokenizer(cfg.models.student)
    budget = cfg.train.max_length - cfg.task.max_new_tokens
    kept, too_long = [], []
    for e in examples:
        extra = len(render_prompt(tok, task.student_messages(e.text))) - budget
        if extra <= 0:
            kept.append(e)
            continue
        too_long.append(e)
        if cfg.data.too_long == "truncate":
            ids = tok(e.text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            if extra < len(ids):
                kept.append(replace(e, text=tok.decode(ids[: len(ids) - extra]).strip()))
    if too_long:
        lines = ", ".join(str(e.line or e.id) for e in too_long[:20]) + (" ..." if len(too_long) > 20 else "")
        action = "truncated to fit" if cfg.data.too_long == "truncate" else "skipped (data.too_long = \"truncate\" keeps them shortened)"
        log(f"[promptdistill] {path}: {len(too_long)} inputs too long for train.max_length={cfg.train.max_length} "
            f"with room for {cfg.task.max_new_tokens} reply tokens, {action}: lines {lines}")
    return kept
