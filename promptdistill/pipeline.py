"""`run`: split -> label -> train -> eval, into one run directory.

Each stage writes its outputs, then a marker holding a fingerprint of the
settings it depended on (`stage_settings`). Rerunning skips every stage whose
marker matches; a stage whose settings changed is refused unless `force`, in
which case it and every later stage run again. The directory's layout is
`rundir.RunDir`'s.

Which inputs get labeled is decided once, by `prepare_inputs`, for both the
split stage and `promptdistill label`: data.dedupe, data.too_long (inputs
too long for train.max_length or for the student's or teacher's context
window, reported with their lines) and data.limit mean the same in both.
Before the run directory is locked, `run_pipeline` checks it may write there
(outputs.py): nothing is written for a refused run.
"""

from __future__ import annotations

import json
from dataclasses import replace

from .config import Config, eval_settings, task_settings, training_settings
from .errors import PromptDistillError
from .io import atomic_write_json, fingerprint
from .records import check_gold_labels, read_inputs, read_labeled, report_duplicates, write_examples
from .rundir import RunDir, adapter_fingerprint
from .split import split_examples, subsample
from .task import Task


def stage_settings(cfg: Config) -> dict[str, dict]:
    """The configuration each stage depends on (including its predecessors)."""
    d = cfg.to_dict()
    # Training data only (the split and the labels do not depend on it).
    mix_general = d["data"].pop("mix_general")
    split = {
        "data": d["data"],
        "inputs": str(cfg.resolve_path(cfg.data.inputs)) if cfg.data.inputs else None,
        # what decides which inputs are too long for the student
        "fit": [cfg.train.max_length, cfg.task.max_new_tokens, cfg.models.student],
    }
    if cfg.data.synthesize:
        # What writes the synthetic inputs (without synthesis, none of it matters to the split).
        split["synthesize"] = {**d["synthesize"], "teacher": d["models"]["teacher"], "teacher_backend": cfg.models.teacher_backend,
                               "task": task_settings(cfg.task)}
    label = {**split, "task": task_settings(cfg.task), "teacher": d["models"]["teacher"],
             "teacher_backend": [cfg.models.teacher_backend, cfg.models.teacher_url]}
    train = {**label, "train": training_settings(cfg.train), "student": d["models"]["student"],
             "task_target": d["task"]["student_target"], "mix_general": mix_general}
    if cfg.train.init_adapter:
        # The adapter's weights, not only its path: retraining it elsewhere invalidates this run's training.
        train["init_adapter"] = adapter_fingerprint(cfg.resolve_path(cfg.train.init_adapter))
    evaluate = {**train, "eval": eval_settings(cfg.eval)}
    return {"split": split, "label": label, "train": train, "eval": evaluate}


def run_pipeline(cfg: Config, run_dir, *, force: bool = False, progress: bool = True, log=print, reads: dict | None = None) -> dict:
    """Run every stage not already complete; return the evaluation report.

    Before the run directory is locked or written: the input file (if any)
    must be readable, the run directory new, empty or a run
    (`outputs.claim_run_dir`), no input (data.inputs, or the paths in `reads`,
    e.g. the task file, or train.init_adapter, the adapter training starts
    from) may lie among the run's outputs, and the run's existing files must
    be readable."""
    from .io import check_file, check_paths
    from .rundir import claim_run_dir
    from .training.init_adapter import init_adapter_folder

    if not cfg.data.inputs and not cfg.data.synthesize:
        raise PromptDistillError("set data.inputs to the input file, or data.synthesize to a number of inputs to write",
                                 field="data.inputs")
    reads = dict(reads or {})
    if cfg.data.inputs:
        reads["data.inputs"] = check_file(cfg.resolve_path(cfg.data.inputs), "input file (data.inputs)")
    if cfg.eval.offtask_inputs:
        reads["eval.offtask_inputs"] = check_file(cfg.resolve_path(cfg.eval.offtask_inputs), "off-task input file (eval.offtask_inputs)")
        read_offtask(cfg)
    if cfg.train.init_adapter is not None:
        reads["train.init_adapter"] = init_adapter_folder(cfg)
    run = RunDir(claim_run_dir(run_dir))
    check_paths(reads, run.entries())
    run.check_files()
    check_max_length(cfg)
    with run.lock():
        return _run_stages(cfg, run, force=force, progress=progress, log=log)


def _run_stages(cfg: Config, run: RunDir, *, force: bool, progress: bool, log) -> dict:
    from .evaluation.report import results_table
    from .labeling import label_inputs, load_teacher
    from .training.recipe import train_student

    task = Task(cfg.task)
    settings = stage_settings(cfg)
    todo = run.plan(settings, force)
    # Written only once the settings are accepted: predict reads the model and task from it.
    run.save_config(cfg)

    def stage_needed(stage: str) -> bool:
        if stage not in todo:
            log(f"[promptdistill] {stage}: already complete, skipping")
            return False
        return True

    if stage_needed("split"):
        train, heldout = [], []
        if cfg.data.inputs:
            examples = prepare_inputs(cfg, task, cfg.resolve_path(cfg.data.inputs), log)
            train, heldout = split_examples(examples, cfg.data.heldout_fraction, cfg.data.seed)
        summary = {}
        if cfg.data.synthesize:
            train, heldout, summary = add_synthetic_inputs(cfg, run, task, train, heldout, force=force, progress=progress, log=log)
        write_examples(run.split_file("train"), train)
        write_examples(run.split_file("heldout"), heldout)
        run.mark_done("split", settings["split"], {"train": len(train), "heldout": len(heldout), **summary})
        log(f"[promptdistill] split: {len(train)} train, {len(heldout)} held-out")

    train_inputs = read_inputs(run.split_file("train"))
    heldout_inputs = read_inputs(run.split_file("heldout"))

    if stage_needed("label"):
        # The split was fitted to the teacher it was made with; the teacher may have changed since.
        sides = {side: fit_context(exs, task, cfg, run.split_file(side), log, roles=("teacher",))
                 for side, exs in (("train", train_inputs), ("heldout", heldout_inputs))}
        teacher = load_teacher(cfg)
        summaries = {}
        for name, exs in sides.items():
            summaries[name] = label_inputs(cfg, exs, teacher, run.labels_file(name), force=force, progress=progress)
            s = summaries[name]
            log(f"[promptdistill] label {name}: {s['labeled']} labeled, {s['rejected']} rejected "
                f"{s['by_status']}; teacher accuracy vs gold: {_pct(s['teacher_accuracy'])}")
        atomic_write_json(run.labels_summary, summaries)
        if cfg.data.synthesize:
            synthetic_label_report(run)
        run.mark_done("label", settings["label"], summaries)
        del teacher

    if stage_needed("train"):
        # Only records of the current split, whatever else a labels file holds.
        train_ids, heldout_ids = {e.id for e in train_inputs}, {e.id for e in heldout_inputs}
        summary = train_student(
            cfg, [r for r in read_labeled(run.labels_file("train")) if r.id in train_ids], run.train_dir,
            heldout=[r for r in read_labeled(run.labels_file("heldout")) if r.id in heldout_ids], progress=progress,
        )
        run.mark_done("train", settings["train"], summary)
        log(f"[promptdistill] train: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
            f"held-out loss {summary['final_heldout_loss'] if summary['final_heldout_loss'] is not None else '-'}")

    if stage_needed("eval"):
        report = evaluate_run(cfg, run.path, heldout_inputs, progress=progress)
        run.mark_done("eval", settings["eval"], {name: {k: v for k, v in m.items() if k != "confusion"} for name, m in report["systems"].items()})
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
    offtask = read_offtask(cfg)
    # An interrupted evaluation resumes only with the same settings, inputs and adapter.
    inputs_print = fingerprint([cfg.to_dict(), [(e.id, e.text) for e in examples], [(e.id, e.text) for e in offtask or ()]],
                               (adapter / "adapter_model.safetensors").read_bytes())
    report = evaluate_systems(
        task, examples, run.eval_dir, teacher=teacher, student=student, seed=cfg.data.seed,
        base=base_view if cfg.eval.include_base else None, progress=progress, fingerprint=inputs_print,
        latency_requests=cfg.eval.latency_requests,
        train_records=_train_records(run), teacher_resamples=cfg.eval.teacher_resamples,
        offtask=offtask, offtask_source=cfg.eval.offtask_inputs or "", untrained=base_view,
        general_max_drop=cfg.eval.general_max_drop if cfg.eval.general_ability else None,
    )
    _record_heldout_source(run, examples)
    # Pictures (confusion matrices, loss curves, cost) into eval/, report.md and report.html.
    write_run_report(run.path)
    return report


def read_offtask(cfg: Config) -> list | None:
    """eval.offtask_inputs read and checked (None when unset); `run` and `eval` call it
    before writing anything, so a bad file fails before an hour of labeling and training."""
    if not cfg.eval.offtask_inputs:
        return None
    return read_inputs(cfg.resolve_path(cfg.eval.offtask_inputs))


def _train_records(run: RunDir) -> list | None:
    """The training split's labeled records (what the surface baseline is fitted on), or None before labeling."""
    path = run.labels_file("train")
    if not path.exists() or not run.split_file("train").exists():
        return None
    train_ids = {e.id for e in read_inputs(run.split_file("train"))}
    return [r for r in read_labeled(path) if r.id in train_ids]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def prepare_inputs(cfg: Config, task: Task, path, log, *, dedupe_hint: str = "data.dedupe = true") -> list:
    """The inputs of the input file that get labeled, the same for `run` (its
    split stage) and `label`: read and checked (gold labels in the label set),
    duplicates reported (only the first kept with data.dedupe), inputs too
    long for the student or the teacher reported with their lines (skipped or
    truncated per data.too_long), then data.limit of them drawn with data.seed."""
    examples = read_inputs(path)
    check_gold_labels(examples, task.labels, path)
    examples = report_duplicates(examples, path, cfg.data.dedupe, lambda m: log(f"[promptdistill] {m}"), dedupe_hint)
    examples = fit_inputs(examples, task, cfg, path, log)
    examples = fit_context(examples, task, cfg, path, log, roles=("teacher",))
    examples = subsample(examples, cfg.data.limit, cfg.data.seed)
    if not examples:
        raise PromptDistillError("no inputs left after dropping those too long (see above); raise train.max_length or "
                                 "set data.too_long = \"truncate\"", path=path)
    return examples


def fit_inputs(examples, task: Task, cfg: Config, path, log) -> list:
    """Report inputs too long for the student (prompt + reply within train.max_length,
    and within the student model's context); skip them or truncate their text, as
    data.too_long says."""
    from .models import load_tokenizer

    tok = load_tokenizer(cfg.models.student)
    limit, what = cfg.train.max_length, f"train.max_length={cfg.train.max_length}"
    context = model_context(cfg.models.student, tok)
    if context is not None and context < limit:
        limit, what = context, f"the student {cfg.models.student}'s context of {context} tokens"
    return _fit(examples, tok, task.student_messages, "", limit - cfg.task.max_new_tokens, what, cfg, path, log)


def fit_context(examples, task: Task, cfg: Config, path, log, roles=("teacher", "student")) -> list:
    """Report inputs whose prompt plus max_new_tokens exceed the teacher's (its
    prompt included) or the student's context window, with their lines; skip
    or truncate them per data.too_long. A server's teacher (openai backend) is
    measured against the context the server reports for it (vLLM's
    max_model_len), asked before anything is written; a server that reports
    none is not checked."""
    from .models import load_tokenizer

    m = cfg.models
    for role in roles:
        name = m.teacher if role == "teacher" else m.student
        if role == "teacher" and m.teacher_backend == "openai":
            from .teachers import teacher_for

            server = teacher_for(m)
            context = server.served_context()
            tok = server.tokenizer if context is not None else None
        else:
            tok = load_tokenizer(name)
            context = model_context(name, tok)
        if role == "teacher" and m.teacher_backend == "vllm" and isinstance(m.vllm_options.get("max_model_len"), int):
            context = m.vllm_options["max_model_len"]
        if context is None:
            continue
        messages, prefix = (task.teacher_messages, cfg.task.reply_prefix) if role == "teacher" else (task.student_messages, "")
        examples = _fit(examples, tok, messages, prefix, context - cfg.task.max_new_tokens,
                        f"the {role} {name}'s context of {context} tokens", cfg, path, log)
    return examples


def check_max_length(cfg: Config) -> None:
    """train.max_length may not exceed the student's context: training examples
    longer than the model's positions would fail, or train on garbage."""
    from .models import load_tokenizer

    context = model_context(cfg.models.student, load_tokenizer(cfg.models.student))
    if context is not None and cfg.train.max_length > context:
        raise PromptDistillError(f"{cfg.train.max_length} exceeds the student {cfg.models.student}'s context of {context} tokens; "
                                 f"set train.max_length <= {context}", field="train.max_length")


def model_context(name: str, tokenizer) -> int | None:
    """The most tokens a model takes: its config's max_position_embeddings (or the
    equivalent key), capped by the tokenizer's model_max_length when that is set."""
    from transformers import AutoConfig

    from .models import model_path

    limits = []
    try:
        mc = AutoConfig.from_pretrained(model_path(name))
    except (OSError, ValueError, KeyError):
        mc = None
    for c in (mc, getattr(mc, "text_config", None)):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(c, key, None) if c is not None else None
            if isinstance(value, int) and value > 0:
                limits.append(value)
                break
        if limits:
            break
    cap = getattr(tokenizer, "model_max_length", None)
    if isinstance(cap, int) and 0 < cap < 10**8:
        limits.append(cap)
    return min(limits) if limits else None


def _fit(examples, tok, messages, reply_prefix: str, budget: int, what: str, cfg: Config, path, log) -> list:
    from .render import render_prompt

    # The prompt's tokens around an empty text, plus the text's own: exact up to a
    # few tokens where they meet, so inputs near the budget are rendered whole.
    around = len(render_prompt(tok, messages(""), reply_prefix))
    kept, too_long = [], []
    for e in examples:
        ids = tok(e.text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        size = around + len(ids)
        if size > budget - 16:
            size = len(render_prompt(tok, messages(e.text), reply_prefix))
        extra = size - budget
        if extra <= 0:
            kept.append(e)
            continue
        too_long.append(e)
        if cfg.data.too_long == "truncate" and extra < len(ids):
            kept.append(replace(e, text=tok.decode(ids[: len(ids) - extra]).strip()))
    if too_long:
        lines = ", ".join(str(e.line or e.id) for e in too_long[:20]) + (" ..." if len(too_long) > 20 else "")
        action = "truncated to fit" if cfg.data.too_long == "truncate" else "skipped (data.too_long = \"truncate\" keeps them shortened)"
        log(f"[promptdistill] {path}: {len(too_long)} inputs too long for {what} "
            f"with room for {cfg.task.max_new_tokens} reply tokens, {action}: lines {lines}")
    return kept


# -- synthetic inputs (issue 16) -------------------------------------------


def add_synthetic_inputs(cfg: Config, run: RunDir, task: Task, train: list, heldout: list, *, force: bool, progress: bool,
                         log) -> tuple[list, list, dict]:
    """`data.synthesize` inputs written into RUN/synth (synthesis.py), joined to the split.

    With real inputs, the synthetic ones go to the training side only and the
    held-out set stays real: a student scored on the generator's own inputs
    measures how well it imitates the generator's distribution, not how it
    does on the inputs it will meet. The seeds strategy paraphrases the real
    training inputs only, and the near-duplicate gate compares against them, so
    no held-out input leaks in as a paraphrase. With no real inputs, the
    synthetic ones are split as real ones would be and the report says the
    held-out set is synthetic.
    """
    from .synthesis import synthesize

    out = run.synth_dir / "inputs.jsonl"
    seeds = train if train and "seeds" in cfg.synthesize.strategies else None
    report = synthesize(cfg, cfg.data.synthesize, out, seeds=seeds, avoid=heldout, force=force, progress=progress, log=log)
    synthetic = fit_inputs(read_inputs(out), task, cfg, out, log) if report["kept"] else []
    log(f"[promptdistill] synthesize: {report['kept']} inputs kept of {report['requests']} generated "
        f"(dropped {report['dropped_by_reason']}); report: {out.with_name('inputs.synthesis.md')}")
    if train or heldout:
        return train + synthetic, heldout, {"synthetic_train": len(synthetic), "heldout_source": "real"}
    if not synthetic:
        raise PromptDistillError("synthesis kept no inputs; see the synthesis report", path=out.with_name("inputs.synthesis.md"))
    train, heldout = split_examples(synthetic, cfg.data.heldout_fraction, cfg.data.seed)
    return train, heldout, {"synthetic_train": len(train), "heldout_source": "synthetic"}


def synthetic_label_report(run: RunDir) -> None:
    """The teacher's labels of the synthetic inputs against the quotas they were asked for."""
    from .synthesis import quota_report

    out = run.synth_dir / "inputs.jsonl"
    if not out.with_name("inputs.synthesis.json").exists():
        return
    labeled, rejected = [], 0
    for side in ("train", "heldout"):
        path = run.labels_file(side)
        labeled += [r.to_json() for r in read_labeled(path) if r.meta.get("synthetic")] if path.exists() else []
        rejects = path.with_name(path.stem + ".rejects.jsonl")
        rejected += sum(1 for r in read_labeled(rejects) if r.meta.get("synthetic")) if rejects.exists() else 0
    quota_report(out, labeled, rejected)


def heldout_source(examples) -> str:
    """"real", "synthetic" or "mixed": where the held-out inputs come from (synthesis marks its inputs)."""
    synthetic = sum(1 for e in examples if (e.meta or {}).get("synthetic"))
    return "real" if synthetic == 0 else "synthetic" if synthetic == len(examples) else "mixed"


def _record_heldout_source(run: RunDir, examples) -> None:
    """report.json says whether the held-out set is real (report.md says it in a sentence)."""
    report = json.loads(run.report_path.read_text(encoding="utf-8"))
    report["heldout_source"] = heldout_source(examples)
    train_split = run.split_file("train")
    if train_split.exists():
        report["synthetic_train"] = sum(1 for e in read_inputs(train_split) if e.meta.get("synthetic"))
    atomic_write_json(run.report_path, report)
