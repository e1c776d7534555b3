"""The command line: a thin layer over the library.

    promptdistill label   TASK --inputs FILE --out FILE     teacher labels inputs
    promptdistill render  TASK --labeled FILE               tokens per example
    promptdistill train   TASK --labeled FILE --run-dir D   LoRA-train the student
    promptdistill eval    TASK --run-dir D [--inputs FILE]  teacher vs base vs student
    promptdistill run     TASK [--run-dir D]                all stages, resumable
    promptdistill predict --run-dir D [TEXT ...]            answer with the student
    promptdistill export  D --merged DIR | --adapter DIR    the student as a model others load
    promptdistill synthesize TASK --n N --out FILE          inputs written by a generator from the prompt
    promptdistill import-chats LOGS TASK --out FILE         labeled records from production chat logs

No command removes or replaces what it did not create (outputs.py): every
path argument is checked, and the files it will read, before anything is
written.

Any setting of the task file can be overridden with `--set section.key=VALUE`
(VALUE is read as TOML, falling back to a plain string).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tomllib
from pathlib import Path

from .errors import PromptDistillError


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # SIGTERM (a scheduler stopping the job) stops as cleanly as Ctrl-C: what
    # is finished is already on disk, and a rerun continues from there.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    if not sys.stderr.isatty():
        # transformers' and the hub's own bars ("Loading weights") would fill a log
        # with carriage-return frames; ours print a plain line instead (progress.py).
        # Read when transformers is first imported, so set before any stage loads it.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return args.func(args) or 0
    except PromptDistillError as e:
        if args.verbose:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to continue from what was saved", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="promptdistill", description="Bake a long prompt into a model's weights.")
    p.add_argument("--verbose", action="store_true", help="show tracebacks for input errors")
    sub = p.add_subparsers(dest="command", required=True)

    def with_task(sp):
        sp.add_argument("task", help="task TOML file")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a setting of the task file (repeatable)")
        sp.add_argument("--teacher", help="teacher model (hub id, folder, or smollm2-135m-instruct)")
        sp.add_argument("--student", help="student model")
        sp.add_argument("--device", help="auto, cpu, cuda, cuda:N")
        sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
        return sp

    def with_teacher_backend(sp):
        sp.add_argument("--teacher-backend", choices=["transformers", "vllm", "openai"],
                        help="who runs the teacher (sets models.teacher_backend)")
        sp.add_argument("--teacher-url", metavar="URL",
                        help="label through an OpenAI-compatible server, e.g. http://localhost:8000/v1 (sets models.teacher_url "
                             "and teacher_backend = openai); API key from $PROMPTDISTILL_API_KEY or $OPENAI_API_KEY")
        sp.add_argument("--concurrency", type=int, help="requests in flight to the server (sets models.teacher_concurrency)")
        return sp

    sp = with_teacher_backend(with_task(sub.add_parser("label", help="label inputs with the teacher")))
    sp.add_argument("--inputs", help="input file (.txt, .jsonl, .csv); default: data.inputs")
    sp.add_argument("--out", required=True, help="labeled JSONL to write (appended, resumable)")
    sp.add_argument("--rejects", help="where unparsed answers go (default: OUT with .rejects.jsonl)")
    sp.add_argument("--mode", choices=["generate", "choose"], help="answer mode (default: task.answer_mode)")
    sp.add_argument("--batch-size", type=int, help="inputs per generate batch (default 64) or per vLLM engine call (default 256)")
    sp.add_argument("--limit", type=int, default=0, help="label only the first N inputs (after data.dedupe, data.too_long and data.limit, as `run` applies them)")
    sp.add_argument("--force", action="store_true", help="discard labels made with other settings")
    sp.add_argument("--dedupe", action="store_true", help="label only the first of inputs with the same text")
    sp.add_argument("--samples", type=int, help="self-consistency: answers drawn per input (sets task.samples)")
    sp.add_argument("--temperature", type=float, help="sampling temperature (sets task.temperature)")
    sp.add_argument("--min-confidence", type=float,
                    help="reject inputs whose vote share or top label probability is below this (sets task.min_confidence)")
    sp.add_argument("--no-prefix-reuse", action="store_true",
                    help="send every request whole instead of running the shared prompt once (slower; for comparison)")
    sp.set_defaults(func=cmd_label)

    sp = with_task(sub.add_parser("render", help="show tokens and trained tokens per example"))
    sp.add_argument("--labeled", required=True)
    sp.add_argument("--limit", type=int, default=20, help="examples to print (0: all)")
    sp.set_defaults(func=cmd_render)

    sp = with_task(sub.add_parser("train", help="LoRA-train the student on labeled data"))
    sp.add_argument("--labeled", required=True, help="labeled JSONL from `label`")
    sp.add_argument("--heldout", help="labeled JSONL for the held-out loss")
    sp.add_argument("--run-dir", required=True)
    _loss_flags(sp)
    _init_flags(sp)
    _report_to_option(sp)
    sp.set_defaults(func=cmd_train)

    sp = with_task(sub.add_parser("eval", help="compare teacher, base and student on held-out inputs"))
    sp.add_argument("--run-dir", required=True, help="run directory holding train/adapter")
    sp.add_argument("--inputs", help="held-out inputs (default: RUN/split/heldout.jsonl)")
    sp.set_defaults(func=cmd_eval)

    sp = with_teacher_backend(with_task(sub.add_parser("run", help="split, label, train, eval; skips completed stages")))
    sp.add_argument("--run-dir", help="default: runs/<task name>")
    sp.add_argument("--force", action="store_true", help="redo stages whose settings changed")
    _loss_flags(sp)
    _init_flags(sp)
    _report_to_option(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("predict", help="answer with a trained student, without the prompt")
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("texts", nargs="*", help="texts to classify (default: one per line from stdin)")
    sp.add_argument("--raw", action="store_true", help="print the whole reply, not just the label")
    sp.add_argument("--device")
    sp.set_defaults(func=cmd_predict)

    sp = sub.add_parser("export", help="write the student as a merged transformers folder and/or a PEFT adapter folder")
    sp.add_argument("run_dir", help="run directory holding train/adapter")
    sp.add_argument("--merged", metavar="DIR", help="standalone model folder (LoRA merged into the base)")
    sp.add_argument("--adapter", metavar="DIR", help="PEFT adapter folder (e.g. for vllm serve --enable-lora)")
    sp.add_argument("--device", default="cpu", help="device used for merging (default: cpu)")
    sp.add_argument("--dtype", help="dtype of the merged weights (default: models.dtype of the run)")
    sp.add_argument("--overwrite", action="store_true",
                    help="replace an existing folder even if it holds files promptdistill did not write (never the run itself)")
    sp.set_defaults(func=cmd_export)
    _data_source_parsers(sub, with_task, with_teacher_backend)
    return p


def _loss_flags(sp) -> None:
    sp.add_argument("--loss", choices=["sft", "kd", "on-policy"], help="training loss (sets train.loss; default sft)")
    sp.add_argument("--kd-alpha", type=float, help="kd: weight of hard-label cross-entropy in the loss (sets train.kd_alpha)")


def _init_flags(sp) -> None:
    group = sp.add_mutually_exclusive_group()
    group.add_argument("--init-from", metavar="RUN",
                       help="start training from the adapter RUN trained (RUN/train/adapter), e.g. on-policy after sft or kd "
                            "(sets train.init_adapter)")
    group.add_argument("--init-adapter", metavar="FOLDER", help="start training from this PEFT LoRA adapter folder "
                                                                "(sets train.init_adapter)")


def _report_to_option(sp) -> None:
    from .config import REPORT_TO

    sp.add_argument("--report-to", choices=REPORT_TO, help="also log training metrics to a tracker (sets train.report_to)")


# Command-line flags that set a config key: argparse dest -> "section.key".
# One table, so a flag and the setting it stands for cannot drift apart.
FLAG_SETTINGS = {
    "teacher": "models.teacher",
    "student": "models.student",
    "device": "models.device",
    # before teacher_backend: a URL means the server backend unless --teacher-backend says otherwise
    "teacher_url": "models.teacher_url",
    "teacher_backend": "models.teacher_backend",
    "concurrency": "models.teacher_concurrency",
    "samples": "task.samples",
    "temperature": "task.temperature",
    "min_confidence": "task.min_confidence",
    "loss": "train.loss",
    "kd_alpha": "train.kd_alpha",
    "report_to": "train.report_to",
    "init_from": "train.init_adapter",
    "init_adapter": "train.init_adapter",
}


def _adapter_of_run(run: str) -> str:
    """--init-from RUN: the adapter RUN's train stage finished, or one line saying there is none."""
    from .rundir import check_run_dir
    from .rundir import RunDir

    try:
        adapter = RunDir(check_run_dir(run)).adapter_dir
    except PromptDistillError as e:
        raise PromptDistillError(f"--init-from: {e.message}", path=e.path) from None
    if not (adapter / "adapter_config.json").is_file():
        raise PromptDistillError("--init-from: this run has no finished adapter (train/adapter); finish its train stage first, "
                                 "or pass --init-adapter FOLDER", path=run)
    return os.path.abspath(adapter)


# How a flag's value becomes its setting's, where it is not taken as given. A
# path on the command line is relative to the current folder, while a path in
# the task file is relative to the file's folder: these become absolute.
FLAG_CONVERSIONS = {
    "init_from": _adapter_of_run,
    "init_adapter": os.path.abspath,
}


def load_task_config(args):
    """The task file with --set overrides and the flags of FLAG_SETTINGS applied."""
    from .config import config_from_dict, load_config

    path = Path(args.task)
    cfg = load_config(path)
    raw = cfg.to_dict()
    for item in args.overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise PromptDistillError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        if section not in raw:
            raise PromptDistillError(f"unknown section {section!r}", field=key)
        raw[section][name] = _toml_value(value)
    for flag, key in FLAG_SETTINGS.items():
        value = getattr(args, flag, None)
        if value is not None and value is not False:
            section, name = key.split(".")
            raw[section][name] = FLAG_CONVERSIONS.get(flag, lambda v: v)(value)
            if flag == "teacher_url":
                raw["models"]["teacher_backend"] = "openai"
    base_dir = cfg.base_dir
    cfg = config_from_dict(raw, source=f"{path} (with --set overrides)" if args.overrides else path)
    cfg.base_dir = base_dir
    check_models(cfg.models)
    return cfg


def check_models(models) -> None:
    """Models given as local folders must hold a model (a server's teacher is a name, not checked),
    and a device asked for by name must be on this machine, before anything is written."""
    from .io import check_model_folder

    if models.teacher_backend != "openai":
        check_model_folder(models.teacher, "models.teacher")
    check_model_folder(models.student, "models.student")
    check_device_present(models.device, "models.device")


def check_device_present(device: str | None, field: str) -> None:
    """`device` (checked in form already) is on this machine; torch is imported only for a named accelerator."""
    if device not in (None, "auto", "cpu"):
        from .models import resolve_device

        resolve_device(device, field)


def _toml_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _log(message: str) -> None:
    print(message, file=sys.stderr)


# Every command validates all of its arguments and the files it will read
# before it takes a lock or writes a byte (outputs.py has the rule and why).

def _claim_labels_output(args, reads: dict, more_writes) -> tuple[Path, Path]:
    """(--out, --rejects) of a command that writes labeled records, checked before
    anything is written: apart from the command's inputs (`reads`) and from any
    run directory, and each new, empty or holding labeled records (outputs.py).
    `more_writes(out)` names the command's other files beside --out."""
    from .io import check_paths
    from .labeling import claim_labels_file
    from .rundir import check_outside_runs

    out = Path(args.out)
    rejects = Path(args.rejects) if args.rejects else out.with_name(out.stem + ".rejects.jsonl")
    writes = {"--out": out, "--rejects": rejects, "--out's sidecar": out.with_name(out.name + ".meta.json"), **more_writes(out)}
    check_paths(reads, writes)
    for name, path in writes.items():
        check_outside_runs(path, name)
    claim_labels_file(out, "--out")
    claim_labels_file(rejects, "--rejects", sidecars=False)
    return out, rejects


def cmd_label(args):
    from .io import check_file
    from .pipeline import prepare_inputs
    from .task import Task

    cfg = load_task_config(args)
    if args.dedupe:
        cfg.data.dedupe = True
    task = Task(cfg.task)
    inputs = Path(args.inputs) if args.inputs else (cfg.resolve_path(cfg.data.inputs) if cfg.data.inputs else None)
    if inputs is None:
        raise PromptDistillError("no inputs: pass --inputs or set data.inputs", field="data.inputs")
    check_file(inputs, "input file")
    out, rejects = _claim_labels_output(args, {"--inputs": inputs, "the task file": args.task},
                                        lambda out: {"--out's lock file": out.with_name(out.name + ".lock")})
    examples = prepare_inputs(cfg, task, inputs, _log, dedupe_hint="--dedupe")
    if args.limit:
        examples = examples[: args.limit]
    from .labeling import label_inputs
    from .teachers import load_teacher

    teacher = load_teacher(cfg)

    summary = label_inputs(cfg, examples, teacher, out, rejects, mode=args.mode, batch_size=args.batch_size,
                           force=args.force, progress=not args.no_progress, reuse_prefix=not args.no_prefix_reuse)
    print(json.dumps(summary, indent=2))


def cmd_render(args):
    from .models import load_tokenizer
    from .records import read_labeled
    from .rundata import token_counts

    cfg = load_task_config(args)
    rows = token_counts(read_labeled(args.labeled), load_tokenizer(cfg.models.student), cfg.train.max_length)
    for i, row in enumerate(rows[: args.limit or None]):
        flag = "  over max_length" if row["too_long"] else ""
        print(f"Example {i:3d}: {row['tokens']:4d} total tokens, {row['trained_tokens']:3d} trained tokens{flag}")
    print(f"{len(rows)} examples; {sum(r['too_long'] for r in rows)} over max_length={cfg.train.max_length}")


def cmd_train(args):
    from .io import check_file, check_paths
    from .rundir import claim_run_dir
    from .pipeline import check_max_length
    from .records import read_labeled
    from .rundir import RunDir
    from .training.init_adapter import init_adapter_folder

    cfg = load_task_config(args)
    labeled = check_file(args.labeled, "labeled file")
    heldout_path = check_file(args.heldout, "held-out file") if args.heldout else None
    run = RunDir(claim_run_dir(args.run_dir))
    check_paths({"--labeled": labeled, "--heldout": heldout_path, "the task file": args.task,
                 "train.init_adapter": init_adapter_folder(cfg)},
                {"the run's config.json": run.config_path, "the run's train/ folder": run.train_dir})
    run.check_files()
    # Read (and so validate) the labeled data before anything is written into the run.
    records = read_labeled(labeled)
    if not records:
        raise PromptDistillError("no labeled records", path=labeled)
    heldout = read_labeled(heldout_path) if heldout_path else None
    check_max_length(cfg)
    from .training.distributed import end_process_group, launched_rank
    from .training.recipe import train_student

    # Under torchrun / accelerate launch every process runs this command; one writes.
    main_process = launched_rank() == 0
    if main_process:
        # Same layout as `run`, so `eval`, `predict` and `export` work on this folder.
        run.save_config(cfg)
    summary = train_student(cfg, records, run.train_dir, heldout=heldout, progress=not args.no_progress)
    if main_process:
        print(json.dumps(summary, indent=2))
    end_process_group()


def cmd_eval(args):
    from .io import check_file, check_paths
    from .rundir import check_run_dir
    from .pipeline import evaluate_run, fit_context, read_offtask
    from .records import check_gold_labels, read_inputs
    from .rundir import RunDir
    from .task import Task

    cfg = load_task_config(args)
    run = RunDir(check_run_dir(args.run_dir))
    inputs = check_file(args.inputs, "input file") if args.inputs else run.split_file("heldout")
    if not args.inputs and not inputs.exists():
        raise PromptDistillError("no held-out inputs in this run (split/heldout.jsonl); pass --inputs FILE", path=inputs)
    reads = {"--inputs": inputs, "the task file": args.task, "the run's adapter": run.adapter_dir}
    if cfg.eval.offtask_inputs:
        reads["eval.offtask_inputs"] = check_file(cfg.resolve_path(cfg.eval.offtask_inputs), "off-task input file (eval.offtask_inputs)")
    check_paths(reads, {"the run's eval/ folder": run.eval_dir, "the run's lock file": run.path / ".lock"})
    run.adapter()
    run.check_files()
    examples = read_inputs(inputs)
    read_offtask(cfg)
    check_gold_labels(examples, cfg.task.labels, inputs)
    examples = fit_context(examples, Task(cfg.task), cfg, inputs, _log)
    if not examples:
        raise PromptDistillError("no inputs left to evaluate (all too long, see above)", path=inputs)
    with run.lock():
        report = evaluate_run(cfg, run.path, examples, progress=not args.no_progress)
    from .evaluation.report import results_table

    print(results_table(report))
    print(f"\nreport: {run.report_md}")


def cmd_run(args):
    from .pipeline import run_pipeline

    cfg = load_task_config(args)
    if args.run_dir:
        run_dir = args.run_dir
    else:
        name = cfg.task.name
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise PromptDistillError(f"task.name {name!r} is not a folder name; pass --run-dir", field="task.name")
        run_dir = str(Path("runs") / name)
    run_pipeline(cfg, run_dir, force=args.force, progress=not args.no_progress, reads={"the task file": args.task})


def _read_texts(args) -> list[str]:
    from .records import check_encodable

    if args.texts:
        texts = args.texts
    else:
        try:
            data = sys.stdin.buffer.read()
            texts = [line.strip() for line in data.decode("utf-8").removeprefix("\ufeff").split("\n") if line.strip()]
        except UnicodeDecodeError as e:
            raise PromptDistillError(f"invalid UTF-8 at byte {e.start}", path="<stdin>") from None
    for n, text in enumerate(texts, start=1):
        check_encodable(text, "<stdin>" if not args.texts else "<arguments>", n)
    return texts


def cmd_predict(args):
    from .config import check_device
    from .rundir import check_run_dir
    from .pipeline import fit_context
    from .records import Example
    from .rundir import RunDir
    from .task import Task

    run = RunDir(check_run_dir(args.run_dir))
    if args.device is not None:
        check_device(args.device, field_name="--device")
        check_device_present(args.device, "--device")
    cfg = run.load_config()
    check_models(cfg.models)
    run.adapter()
    texts = _read_texts(args)
    if not texts:
        raise PromptDistillError("no texts given (pass them as arguments or on stdin)")
    task = Task(cfg.task)
    # Texts over the student's context: reported by number, truncated or (data.too_long = "skip") answered "??".
    examples = [Example(id=str(n), text=t, line=n) for n, t in enumerate(texts, start=1)]
    fitted = {e.id: e.text for e in fit_context(examples, task, cfg, "<arguments>" if args.texts else "<stdin>", _log, roles=("student",))}
    from .predict import predict_texts

    student = run.load_student(cfg, device=args.device)
    answers = dict(zip(fitted, predict_texts(task, student, list(fitted.values()))))
    for e in examples:
        label, reply = answers.get(e.id, (None, "??"))
        print(reply if args.raw else (label if label is not None else "??"))


def cmd_export(args):
    from .config import DTYPES, check_device
    from .export import check_export_target, export_adapter, export_merged
    from .io import check_paths
    from .rundir import check_run_dir
    from .rundir import RunDir

    if not args.merged and not args.adapter:
        raise PromptDistillError("nothing to export: pass --merged DIR and/or --adapter DIR")
    run = RunDir(check_run_dir(args.run_dir))
    check_device(args.device, field_name="--device")
    check_device_present(args.device, "--device")
    if args.dtype is not None and args.dtype not in DTYPES:
        raise PromptDistillError(f"must be one of {', '.join(DTYPES)}; got {args.dtype!r}", field="--dtype")
    cfg = run.load_config()
    check_models(cfg.models)
    run.adapter()
    # Both targets are checked before either is written.
    check_paths({}, {"--merged": args.merged, "--adapter": args.adapter})
    for flag, target in (("--merged", args.merged), ("--adapter", args.adapter)):
        if target:
            check_export_target(run, target, flag, overwrite=args.overwrite)
    if args.merged:
        print(f"merged model: {export_merged(run.path, args.merged, device=args.device, dtype=args.dtype, overwrite=args.overwrite)}")
    if args.adapter:
        print(f"adapter: {export_adapter(run.path, args.adapter, overwrite=args.overwrite)}")


# -- where the data comes from (issue 16): synthesize and import-chats -------


def _data_source_parsers(sub, with_task, with_teacher_backend) -> None:
    sp = with_teacher_backend(with_task(sub.add_parser(
        "synthesize", help="write inputs with a generator model from the task's prompt (and seed inputs)")))
    sp.add_argument("--n", type=int, required=True, help="inputs to keep after the quality gates")
    sp.add_argument("--out", required=True, help="inputs JSONL to write (raw generations beside it, resumable)")
    sp.add_argument("--seeds", help="real inputs to paraphrase and edit (sets synthesize.seed_inputs)")
    sp.add_argument("--strategies", help="comma-separated: prompt, magpie, seeds (sets synthesize.strategies)")
    sp.add_argument("--generator", help="generator model (default: the teacher; sets synthesize.generator)")
    sp.add_argument("--force", action="store_true", help="discard generations made with other settings")
    sp.add_argument("--labeled", help="after `label` on OUT: add the teacher's label distribution against the quotas to the report")
    sp.set_defaults(func=cmd_synthesize)

    sp = sub.add_parser("import-chats", help="labeled records from chat logs that already hold the teacher's answers")
    sp.add_argument("logs", help="chat-format JSONL ({\"messages\": [system, user, assistant]} per line)")
    sp.add_argument("task", help="task TOML file")
    sp.add_argument("--out", required=True, help="labeled JSONL to write")
    sp.add_argument("--rejects", help="unparsable replies (default: OUT with .rejects.jsonl)")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a setting of the task file (repeatable)")
    sp.set_defaults(func=cmd_import_chats)


def cmd_synthesize(args):
    from .io import check_file, check_paths
    from .rundir import check_outside_runs
    from .synthesis import claim_synthesis_output, synthesize

    if args.seeds:
        args.overrides.append(f"synthesize.seed_inputs={json.dumps(str(Path(args.seeds).resolve()))}")
    if args.strategies:
        args.overrides.append(f"synthesize.strategies={json.dumps([s.strip() for s in args.strategies.split(',') if s.strip()])}")
    if args.generator:
        args.overrides.append(f"synthesize.generator={json.dumps(args.generator)}")
    cfg = load_task_config(args)
    out, raw = claim_synthesis_output(args.out)
    reads = {"the task file": args.task}
    for name, path in (("--seeds", cfg.synthesize.seed_inputs), ("data.inputs", cfg.data.inputs), ("--labeled", args.labeled)):
        if path:
            reads[name] = check_file(cfg.resolve_path(path) if name != "--labeled" else Path(path), name)
    writes = {"--out": out, "its raw generations": raw, "their sidecar": raw.with_name(raw.name + ".meta.json"),
              "the synthesis report": out.with_name(out.stem + ".synthesis.json")}
    check_paths(reads, writes)
    for name, path in writes.items():
        check_outside_runs(path, name)
    summary = synthesize(cfg, args.n, out, force=args.force, progress=not args.no_progress)
    if args.labeled:
        from .records import read_labeled
        from .synthesis import quota_report

        labeled = Path(args.labeled)
        rejects = labeled.with_name(labeled.stem + ".rejects.jsonl")
        summary = quota_report(args.out, [r.to_json() for r in read_labeled(labeled)],
                               len(read_labeled(rejects)) if rejects.exists() else 0)
    print(json.dumps(summary, indent=2))


def cmd_import_chats(args):
    from .chatlogs import import_chats
    from .io import check_file
    from .task import Task

    args.teacher = args.student = args.device = None
    cfg = load_task_config(args)
    logs = check_file(args.logs, "chat log file")
    out, rejects = _claim_labels_output(args, {"the chat logs": logs, "the task file": args.task},
                                        lambda out: {"the set-aside records": out.with_name(out.stem + ".foreign.jsonl")})
    summary = import_chats(Task(cfg.task), logs, out, rejects)
    print(json.dumps(summary, indent=2))
