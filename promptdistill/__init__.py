"""promptdistill: bake a long prompt into a model's weights.

A teacher that sees the long prompt labels inputs; a student is LoRA-trained on
input -> teacher answer without the prompt; held-out evaluation compares the
two. One module per stage:

    config     task files (TOML) -> dataclasses
    task       prompt rendering and answer parsing
    records    input readers and the labeled record
    models     model loading (hub id, folder, built-in SmolLM2)
    engine     token-level generation and continuation scoring
    teachers   the teacher backends (transformers, vLLM, HTTP server): load_teacher
    labeling   label_inputs
    render     conversation -> token ids + loss weights
    train      train_student
    evaluate   evaluate_systems
    split      train / held-out split
    pipeline   run_pipeline: all stages, resumable; evaluate_run
    predict    answering with a trained student
    export     the student as a merged transformers folder or a PEFT adapter
    jsonreply  free-form JSON replies: validity, field-level agreement
    rundata    a run's data for notebooks: token counts, metrics, report
    plots      report pictures (matplotlib)
    report_html  report.md with pictures and a self-contained report.html

In a notebook, the seed's steps are (see examples/tutorial.ipynb):

    cfg = load_config("task.toml"); task = Task(cfg.task)
    teacher = load_teacher(cfg)                       # models.teacher_backend decides who runs it
    label_inputs(cfg, read_inputs("data.jsonl"), teacher, "run/labels/train.jsonl")
    records = read_labeled("run/labels/train.jsonl")
    token_counts(records, teacher.tokenizer)          # tokens and trained tokens per example
    train_student(cfg, records, "run/train")
    read_metrics("run")                               # loss per step
    report = evaluate_run(cfg, task, "run", heldout)  # teacher vs base vs student
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
    "Teacher": "teachers",
    "render_example": "render",
    "train_student": "training.recipe",
    "evaluate_systems": "evaluation.systems",
    "results_table": "evaluation.report",
    "evaluate_run": "pipeline",
    "token_counts": "rundata",
    "read_metrics": "rundata",
    "load_report": "rundata",
    "write_run_report": "evaluation.report",
    "export_merged": "export",
    "export_adapter": "export",
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

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'promptdistill' has no attribute {name!r}")
