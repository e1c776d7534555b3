"""promptdistill: bake a long prompt into a model's weights.

A teacher that sees the long prompt labels inputs; a student is LoRA-trained on
input -> teacher answer without the prompt; held-out evaluation compares the
two. The layers, each importing only those below it (README, "How the code
is laid out"; checked by `make lint`):

    cli                     the command line
    pipeline                run_pipeline (all stages, resumable), evaluate_run
    labeling                label_inputs: durable, resumable labeling through any teacher
    training/               train_student: the recipe in named steps, losses, checkpoints
    evaluation/             evaluate_systems, fidelity, agreement, the report and its pictures
    export, predict         the student as a merged folder or adapter; answering with it
    scaffold                write_task_file: a first task file from a prompt (`init`)
    rundir, rundata         a run directory's layout and files; its data for notebooks
    teachers/               the Teacher interface and its backends: load_teacher
    ground                  config, task, records, render, models, engine, prefix_cache,
                            io, progress, split, jsonreply, compat, errors

In a notebook, the steps are (see examples/tutorial.ipynb):

    cfg = load_config("task.toml"); task = Task(cfg.task)
    teacher = load_teacher(cfg)                       # models.teacher_backend decides who runs it
    label_inputs(cfg, read_inputs("data.jsonl"), teacher, "run/labels/train.jsonl")
    records = read_labeled("run/labels/train.jsonl")
    token_counts(records, teacher.tokenizer)          # tokens and trained tokens per example
    train_student(cfg, records, "run/train")
    read_metrics("run")                               # loss per step
    report = evaluate_run(cfg, "run", heldout)        # teacher vs base vs student
    print(results_table(report))
    predict_texts(*load_student("run"), ["some input"])

Heavy libraries (torch, transformers) load on first use, so `import
promptdistill` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "config",
    "write_task_file": "scaffold",
    "load_config": "config",
    "config_from_dict": "config",
    "save_config": "config",
    "Task": "task",
    "Example": "records",
    "LabeledExample": "records",
    "read_inputs": "records",
    "read_labeled": "records",
    "load_model": "models",
    "load_tokenizer": "models",
    "label_inputs": "labeling",
    "load_teacher": "teachers",
    "RunDir": "rundir",
    "Teacher": "teachers",
    "render_example": "render",
    "train_student": "training.recipe",
    "train_run": "training.stage",
    "evaluate_systems": "evaluation.systems",
    "Systems": "evaluation.systems",
    "results_table": "evaluation.report",
    "evaluate_run": "pipeline",
    "evaluate": "pipeline",
    "token_counts": "rundata",
    "read_metrics": "rundata",
    "load_report": "rundata",
    "write_run_report": "evaluation.run_report",
    "export_merged": "export",
    "export_adapter": "export",
    "export_run": "export",
    "export_gguf": "export",
    "split_examples": "split",
    "subsample": "split",
    "write_examples": "records",
    "run_pipeline": "pipeline",
    # where the data comes from when there are few inputs (synthesis) or the answers exist (chat logs)
    "synthesize": "synthesis",
    "import_chats": "chatlogs",
    "load_student": "predict",
    "predict_texts": "predict",
    "PromptDistillError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("promptdistill")
    except PackageNotFoundError:  # a source tree that was never installed
        return "(not installed)"


def __getattr__(name):
    if name == "__version__":  # read from the installed metadata on first use: pyproject.toml holds the one version
        return _installed_version()
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'promptdistill' has no attribute {name!r}")
