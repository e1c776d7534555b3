"""The command line: a thin layer over the library.

    promptdistill label   TASK --inputs FILE --out FILE     teacher labels inputs
    promptdistill render  TASK --labeled FILE               tokens per example
    promptdistill train   TASK --labeled FILE --run-dir D   LoRA-train the student
    promptdistill eval    TASK --run-dir D [--inputs FILE]  teacher vs base vs student
    promptdistill run     TASK [--run-dir D]                all stages, resumable
    promptdistill predict --run-dir D [TEXT ...]            answer with the student

Any setting of the task file can be overridden with `--set section.key=VALUE`
(VALUE is read as TOML, falling back to a plain string).
"""

from __future__ import annotations

import argparse
import json
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

    sp = with_task(sub.add_parser("label", help="label inputs with the teacher"))
    sp.add_argument("--inputs", help="input file (.txt, .jsonl, .csv); default: data.inputs")
    sp.add_argument("--out", required=True, help="labeled JSONL to write (appended, resumable)")
    sp.add_argument("--rejects", help="where unparsed answers go (default: OUT with .rejects.jsonl)")
    sp.add_argument("--mode", choices=["generate", "choose"], help="answer mode (default: task.answer_mode)")
    sp.add_argument("--batch-size", type=int, default=8, help="inputs per generate call")
    sp.add_argument("--limit", type=int, default=0, help="label only the first N inputs")
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
    sp.set_defaults(func=cmd_train)

    sp = with_task(sub.add_parser("eval", help="compare teacher, base and student on held-out inputs"))
    sp.add_argument("--run-dir", required=True, help="run directory holding train/adapter")
    sp.add_argument("--inputs", help="held-out inputs (default: RUN/split/heldout.jsonl)")
    sp.set_defaults(func=cmd_eval)

    sp = with_task(sub.add_parser("run", help="split, label, train, eval; skips completed stages"))
    sp.add_argument("--run-dir", help="default: runs/<task name>")
    sp.add_argument("--force", action="store_true", help="redo stages whose settings changed")
    _loss_flags(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("predict", help="answer with a trained student, without the prompt")
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("texts", nargs="*", help="texts to classify (default: one per line from stdin)")
    sp.add_argument("--raw", action="store_true", help="print the whole reply, not just the label")
    sp.add_argument("--device")
    sp.set_defaults(func=cmd_predict)
    return p


def _loss_flags(sp) -> None:
    sp.add_argument("--loss", choices=["sft", "kd", "on-policy"], help="training loss (sets train.loss; default sft)")
    sp.add_argument("--kd-alpha", type=float, help="kd: weight of hard-label cross-entropy in the loss (sets train.kd_alpha)")


def load_task_config(args):
    """The task file with --set, --teacher, --student and --device applied."""
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
    for flag in ("teacher", "student", "device"):
        if getattr(args, flag, None):
            raw["models"][flag] = getattr(args, flag)
    for flag in ("samples", "temperature", "min_confidence"):
        if getattr(args, flag, None) is not None:
            raw["task"][flag] = getattr(args, flag)
    for flag in ("loss", "kd_alpha"):
        if getattr(args, flag, None) is not None:
            raw["train"][flag] = getattr(args, flag)
    base_dir = cfg.base_dir
    cfg = config_from_dict(raw, source=f"{path} (with --set overrides)" if args.overrides else path)
    cfg.base_dir = base_dir
    return cfg


def _toml_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def cmd_label(args):
    from .models import load_model
    from .records import check_gold_labels, read_inputs, report_duplicates
    from .task import Task

    cfg = load_task_config(args)
    task = Task(cfg.task)
    inputs = Path(args.inputs) if args.inputs else (cfg.resolve_path(cfg.data.inputs) if cfg.data.inputs else None)
    if inputs is None:
        raise PromptDistillError("no inputs: pass --inputs or set data.inputs", field="data.inputs")
    examples = read_inputs(inputs)
    check_gold_labels(examples, task.labels, inputs)
    examples = report_duplicates(examples, inputs, args.dedupe, lambda m: print(m, file=sys.stderr), "--dedupe")
    if args.limit:
        examples = examples[: args.limit]
    teacher = load_model(cfg.models.teacher, cfg.models.device, cfg.models.dtype)
    from .teacher import label_inputs

    summary = label_inputs(examples, task, teacher, args.out, args.rejects, mode=args.mode, batch_size=args.batch_size,
                           force=args.force, progress=not args.no_progress, reuse_prefix=not args.no_prefix_reuse)
    print(json.dumps(summary, indent=2))


def cmd_render(args):
    from .models import load_tokenizer
    from .records import read_labeled
    from .render import render_example
    from .task import OK

    cfg = load_task_config(args)
    tok = load_tokenizer(cfg.models.student)
    records = [r for r in read_labeled(args.labeled) if r.status == OK]
    over = 0
    for i, r in enumerate(records):
        ex = render_example(tok, r.messages)
        over += ex.num_tokens > cfg.train.max_length
        if not args.limit or i < args.limit:
            flag = "  over max_length" if ex.num_tokens > cfg.train.max_length else ""
            print(f"Example {i:3d}: {ex.num_tokens:4d} total tokens, {ex.num_trained:3d} trained tokens{flag}")
    print(f"{len(records)} examples; {over} over max_length={cfg.train.max_length}")


def cmd_train(args):
    from .records import read_labeled
    from .task import Task
    from .train import train_student

    from .io import atomic_write_json

    from .distributed import launched_rank

    cfg = load_task_config(args)
    heldout = read_labeled(args.heldout) if args.heldout else None
    run_dir = Path(args.run_dir)
    # Under torchrun / accelerate launch every process runs this command; one writes.
    main_process = launched_rank() == 0
    if main_process:
        # Same layout as `run`, so `eval` and `predict` work on this folder.
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
    summary = train_student(read_labeled(args.labeled), run_dir / "train", cfg.train, cfg.models, heldout=heldout,
                            progress=not args.no_progress, task=Task(cfg.task))
    if main_process:
        print(json.dumps(summary, indent=2))


def cmd_eval(args):
    from .evaluate import results_table
    from .io import DirectoryLock
    from .pipeline import evaluate_run
    from .records import check_gold_labels, read_inputs
    from .task import Task

    cfg = load_task_config(args)
    task = Task(cfg.task)
    run_dir = Path(args.run_dir)
    inputs = Path(args.inputs) if args.inputs else run_dir / "split" / "heldout.jsonl"
    examples = read_inputs(inputs)
    check_gold_labels(examples, task.labels, inputs)
    with DirectoryLock(run_dir / ".lock", "this run directory"):
        report = evaluate_run(cfg, task, run_dir, examples, progress=not args.no_progress)
    print(results_table(report))
    print(f"\nreport: {run_dir / 'eval' / 'report.md'}")


def cmd_run(args):
    from .pipeline import run_pipeline

    cfg = load_task_config(args)
    run_dir = args.run_dir or str(Path("runs") / cfg.task.name)
    run_pipeline(cfg, run_dir, force=args.force, progress=not args.no_progress)


def cmd_predict(args):
    from .predict import load_student, predict_texts

    texts = args.texts or [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        raise PromptDistillError("no texts given (pass them as arguments or on stdin)")
    task, student = load_student(args.run_dir, device=args.device)
    for text, (label, reply) in zip(texts, predict_texts(task, student, texts)):
        print(reply if args.raw else (label if label is not None else "??"))
