"""The command line: parsing, the flag table, and printing; every stage is a library call.

    promptdistill init    TASK --prompt FILE [--labels a,b]  a minimal task file to start from
    promptdistill label   TASK --inputs FILE --out FILE      teacher labels inputs
    promptdistill render  TASK --labeled FILE                tokens per example
    promptdistill train   TASK --labeled FILE --run-dir RUN  LoRA-train the student
    promptdistill eval    TASK --run-dir RUN [--inputs FILE] teacher vs base vs student (or --student MODEL|URL --out DIR)
    promptdistill run     TASK [--run-dir RUN]               all stages, resumable
    promptdistill predict --run-dir RUN [TEXT ...]           answer with the student
    promptdistill export  --run-dir RUN --merged DIR | --adapter DIR | --gguf DIR   the student as a model others load
    promptdistill synthesize   TASK --n N --out FILE         inputs written by a generator from the prompt
    promptdistill import-chats TASK --logs FILE --out FILE   labeled records from production chat logs

Each command calls its stage's function, which checks every path and file it
will read before anything is written, as for a Python caller. `--set
section.key=VALUE` overrides a setting (VALUE read as TOML, else a string).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from . import __version__
from .errors import PromptDistillError
from .overrides import count
from .rundir import finished_adapter


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
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
    from .config import REPORT_TO, TEACHER_BACKENDS

    p = argparse.ArgumentParser(prog="promptdistill", description="Bake a long prompt into a model's weights.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--verbose", action="store_true", help="show tracebacks for input errors")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name, func, help, *, task=True, models=False, teacher_backend=False):
        sp = sub.add_parser(name, help=help)
        sp.set_defaults(func=func)
        if task:
            sp.add_argument("task", help="task TOML file")
            sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                            help="override a setting of the task file (repeatable)")
            sp.add_argument("--no-limits", action="store_true", help="lift the upper bounds on counts and concurrency (config.LIMITS)")
        if models:
            sp.add_argument("--teacher", help="teacher model (hub id, folder, or smollm2-135m-instruct)")
            sp.add_argument("--student", help="student model")
            sp.add_argument("--device", help="auto, cpu, cuda, cuda:N")
            sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
            sp.add_argument("--trust-remote-code", action="store_true", help="let the teacher's repository run its code (vLLM)")
        if teacher_backend:
            sp.add_argument("--teacher-backend", choices=TEACHER_BACKENDS, help="sets models.teacher_backend")
            sp.add_argument("--teacher-url", metavar="URL", help="sets models.teacher_url (with a chat or vllm-server backend)")
            sp.add_argument("--allow-insecure-http", action="store_true", help="sets models.teacher_allow_insecure_http")
            sp.add_argument("--concurrency", type=count(1), help="requests in flight to the server (sets models.teacher_concurrency)")
        return sp

    def training_flags(sp):
        sp.add_argument("--force", action="store_true", help="redo what other settings made (run: changed stages; train: the run's training)")
        sp.add_argument("--loss", choices=["sft", "kd", "on-policy"], help="training loss (sets train.loss; default sft)")
        sp.add_argument("--kd-alpha", type=float, help="kd: weight of hard-label cross-entropy in the loss (sets train.kd_alpha)")
        group = sp.add_mutually_exclusive_group()
        group.add_argument("--init-from", metavar="RUN", help="start from the adapter RUN trained (sets train.init_adapter)")
        group.add_argument("--init-adapter", metavar="FOLDER", help="start from this PEFT LoRA adapter (sets train.init_adapter)")
        sp.add_argument("--report-to", choices=REPORT_TO, help="also log training and eval metrics to a tracker (sets train.report_to)")

    sp = command("init", cmd_init, "write a minimal task file from a prompt file (and a label list)", task=False)
    sp.add_argument("task", help="task TOML file to write (refused if it exists)")
    sp.add_argument("--prompt", required=True, help="text file holding the prompt")
    sp.add_argument("--labels", help="comma-separated labels of a classification task")
    sp.add_argument("--inputs", help="input file the task reads (sets data.inputs)")
    sp.add_argument("--name", help="task name (default: the task file's name)")

    sp = command("label", cmd_label, "label inputs with the teacher", models=True, teacher_backend=True)
    sp.add_argument("--inputs", help="input file (.txt, .jsonl, .csv, .parquet, .arrow), dataset folder or hf://datasets/ORG/NAME")
    sp.add_argument("--push-to-hub", metavar="ORG/NAME", help="then upload the labeled set to this Hugging Face dataset repo")
    sp.add_argument("--out", required=True, help="labeled JSONL to write (appended, resumable)")
    sp.add_argument("--rejects", help="where unparsed answers go (default: OUT with .rejects.jsonl)")
    sp.add_argument("--mode", choices=["generate", "choose"], help="answer mode (default: task.answer_mode)")
    sp.add_argument("--batch-size", type=count(1), help="inputs per generate batch (default 64) or per vLLM engine call (default 256)")
    sp.add_argument("--limit", type=count(0), default=0, help="label only the first N inputs (after data.dedupe, too_long, limit)")
    sp.add_argument("--force", action="store_true", help="discard labels made with other settings")
    sp.add_argument("--dedupe", action="store_true", help="label only the first of inputs with the same text")
    sp.add_argument("--samples", type=count(1), help="self-consistency: answers drawn per input (sets task.samples)")
    sp.add_argument("--temperature", type=float, help="sampling temperature (sets task.temperature)")
    sp.add_argument("--min-confidence", type=float, help="reject answers less sure than this (sets task.min_confidence)")
    sp.add_argument("--no-prefix-reuse", action="store_true", help="send every request whole (slower)")

    sp = command("render", cmd_render, "show tokens and trained tokens per example", models=True)
    sp.add_argument("--labeled", required=True)
    sp.add_argument("--limit", type=count(0), default=20, help="examples to print (0: all)")

    sp = command("train", cmd_train, "LoRA-train the student on labeled data", models=True)
    sp.add_argument("--labeled", required=True, help="labeled JSONL from `label`")
    sp.add_argument("--heldout", help="labeled JSONL for the held-out loss")
    sp.add_argument("--run-dir", required=True)
    training_flags(sp)

    sp = command("eval", cmd_eval, "compare teacher, base and student on held-out inputs", models=True)
    where = sp.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", help="run directory holding train/adapter")
    where.add_argument("--out", help="report folder, evaluating --student (hub id, model or PEFT adapter folder, or URL) without a run")
    sp.add_argument("--student-model", metavar="NAME", help="with --student URL (an OpenAI-compatible API): the model name it serves")
    sp.add_argument("--student-api-key-env", metavar="VAR", help="with --student URL: the environment variable holding its API key")
    sp.add_argument("--inputs", help="held-out inputs: file, dataset folder, hf://datasets/ORG/NAME[:split] (default: RUN/split/heldout.jsonl)")

    sp = command("run", cmd_run, "split, label, train, eval; skips completed stages", models=True, teacher_backend=True)
    sp.add_argument("--run-dir", help="default: runs/<task name>")
    training_flags(sp)

    sp = command("predict", cmd_predict, "answer with a trained student, without the prompt", task=False)
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("texts", nargs="*", help="texts to classify (default: one per line from stdin)")
    sp.add_argument("--raw", action="store_true", help="print the whole reply, not just the label")
    sp.add_argument("--json", action="store_true", help='stdin holds JSON lines, {"text": ...} or {"messages": [...]}; prints one JSON line each')
    sp.add_argument("--device")

    sp = command("export", cmd_export, "write the student as a merged transformers folder and/or a PEFT adapter folder", task=False)
    sp.add_argument("--run-dir", required=True, help="run directory holding train/adapter")
    sp.add_argument("--merged", metavar="DIR", help="standalone model folder (LoRA merged into the base)")
    sp.add_argument("--adapter", metavar="DIR", help="PEFT adapter folder (e.g. for vllm serve --enable-lora)")
    sp.add_argument("--gguf", metavar="DIR", help="GGUF file + Ollama Modelfile folder (llama.cpp, Ollama, LM Studio)")
    sp.add_argument("--gguf-type", default="f16", choices=("f16", "q8_0", "f32"), help="GGUF weight type (default: f16)")
    sp.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload the exported folder to this Hugging Face model repo")
    sp.add_argument("--device", default="cpu", help="device used for merging (default: cpu)")
    sp.add_argument("--dtype", help="dtype of the merged weights (default: models.dtype of the run)")
    sp.add_argument("--overwrite", action="store_true",
                    help="replace an existing folder even if it holds files promptdistill did not write (never the run itself)")

    sp = command("synthesize", cmd_synthesize, "write inputs with a generator model from the task's prompt (and seed inputs)",
                 models=True, teacher_backend=True)
    sp.add_argument("--n", type=count(1), required=True, help="inputs to keep after the quality gates")
    sp.add_argument("--out", required=True, help="inputs JSONL to write (raw generations beside it, resumable)")
    sp.add_argument("--seeds", help="real inputs to paraphrase and edit (sets synthesize.seed_inputs)")
    sp.add_argument("--strategies", help="comma-separated: prompt, magpie, seeds (sets synthesize.strategies)")
    sp.add_argument("--generator", help="generator model (default: the teacher; sets synthesize.generator)")
    sp.add_argument("--force", action="store_true", help="discard generations made with other settings")
    sp.add_argument("--labeled", help="after `label` on OUT: add the teacher's label distribution against the quotas to the report")

    sp = command("import-chats", cmd_import_chats, "labeled records from chat logs that already hold the teacher's answers")
    sp.add_argument("--logs", required=True, help="chat-format JSONL ({\"messages\": [system, user, assistant]} per line)")
    sp.add_argument("--out", required=True, help="labeled JSONL to write")
    sp.add_argument("--rejects", help="unparsable replies (default: OUT with .rejects.jsonl)")
    return p


# Command-line flags that set a config key: argparse dest -> "section.key"; one table, so they cannot drift apart.
FLAG_SETTINGS = {
    "teacher": "models.teacher", "student": "models.student", "device": "models.device", "teacher_url": "models.teacher_url",
    "teacher_backend": "models.teacher_backend", "concurrency": "models.teacher_concurrency", "init_adapter": "train.init_adapter",
    "allow_insecure_http": "models.teacher_allow_insecure_http", "trust_remote_code": "models.trust_remote_code",
    "samples": "task.samples", "temperature": "task.temperature", "min_confidence": "task.min_confidence",
    "loss": "train.loss", "kd_alpha": "train.kd_alpha", "report_to": "train.report_to", "init_from": "train.init_adapter",
    "seeds": "synthesize.seed_inputs", "strategies": "synthesize.strategies", "generator": "synthesize.generator",
}

# How a flag's value becomes its setting's, where not taken as given. A path on the command line is relative
# to the current folder, one in the task file to the file's folder: these become absolute.
FLAG_CONVERSIONS = {
    "init_from": lambda run: os.path.abspath(finished_adapter(run, "--init-from")),
    "init_adapter": os.path.abspath,
    "seeds": os.path.abspath,
    "strategies": lambda text: [s.strip() for s in text.split(",") if s.strip()],
}


def load_task_config(args):
    """The command's task file with its --set overrides and the flags of FLAG_SETTINGS applied."""
    from .overrides import flag_settings, load_task_config as load

    settings = flag_settings(vars(args), FLAG_SETTINGS, FLAG_CONVERSIONS)
    return load(args.task, args.overrides, {**settings, **({"data.dedupe": True} if getattr(args, "dedupe", False) else {})},
                limits=not args.no_limits)


_log = lambda message: print(message, file=sys.stderr)  # noqa: E731
_print_json = lambda obj: print(json.dumps(obj, indent=2))  # noqa: E731


def cmd_init(args):
    from .scaffold import write_task_file
    print(write_task_file(args.task, args.prompt, labels=args.labels, inputs=args.inputs, name=args.name))


def cmd_label(args):
    from .labeling import label_file

    _print_json(label_file(load_task_config(args), args.inputs, args.out, args.rejects, limit=args.limit, task_file=args.task, log=_log,
                           dedupe_hint="--dedupe", mode=args.mode, batch_size=args.batch_size, force=args.force,
                           progress=not args.no_progress, reuse_prefix=not args.no_prefix_reuse, push_to_hub=args.push_to_hub))


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
    from .training.distributed import end_process_group, launched_rank
    from .training.stage import train_run

    summary = train_run(load_task_config(args), args.labeled, args.run_dir, heldout=args.heldout, task_file=args.task,
                        progress=not args.no_progress, force=args.force)
    if launched_rank() == 0:  # under torchrun / accelerate launch every process runs this command; one prints
        _print_json(summary)
    end_process_group()


def cmd_eval(args):
    from .evaluation.report import results_table
    from .pipeline import evaluate_file, evaluate_student
    from .rundir import RunDir

    student = vars(args).pop("student") if args.out else None  # the student evaluated; the task's models.student: its base
    if args.run_dir and (args.student_model or args.student_api_key_env):
        raise PromptDistillError("a student behind a URL is evaluated with --student URL --out DIR, not --run-dir", field="--student-model")
    report = (evaluate_student(load_task_config(args), student, args.inputs, args.out, reads={"the task file": args.task}, log=_log,
                               progress=not args.no_progress, student_model=args.student_model,
                               student_api_key_env=args.student_api_key_env) if args.out else
              evaluate_file(load_task_config(args), args.run_dir, args.inputs, task_file=args.task, progress=not args.no_progress, log=_log))
    print(results_table(report))
    print(f"\nreport: {os.path.join(args.out, 'report.md') if args.out else RunDir(args.run_dir).report_md}")


def cmd_run(args):
    from .pipeline import run_pipeline

    run_pipeline(load_task_config(args), args.run_dir, force=args.force, progress=not args.no_progress,
                 reads={"the task file": args.task})


def cmd_predict(args):
    from .predict import predict_run, read_texts
    from .task import UNPARSED

    texts, source = read_texts(args.texts, sys.stdin.buffer, json_lines=args.json)
    answers = predict_run(args.run_dir, texts, device=args.device, source=source, log=_log)
    for label, reply in answers:
        print(json.dumps({"label": label, "reply": reply}, ensure_ascii=False) if args.json
              else reply if args.raw else (label if label is not None else UNPARSED))


def cmd_export(args):
    from .export import export_run
    kw = {k: getattr(args, k) for k in ("merged", "adapter", "gguf", "gguf_type", "device", "dtype", "overwrite", "push_to_hub")}
    for kind, folder in export_run(args.run_dir, **kw).items():
        print(f"{'merged model' if kind == 'merged' else kind}: {folder}")


def cmd_synthesize(args):
    from .synthesis import synthesize_file

    _print_json(synthesize_file(load_task_config(args), args.n, args.out, labeled=args.labeled, task_file=args.task,
                                force=args.force, progress=not args.no_progress))


def cmd_import_chats(args):
    from .chatlogs import import_chats
    from .task import Task

    _print_json(import_chats(Task(load_task_config(args).task), args.logs, args.out, args.rejects, reads={"the task file": args.task}))
