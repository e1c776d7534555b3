"""promptdistill: bake a long prompt into a model's weights.

A teacher that sees the long prompt labels inputs; a student is LoRA-trained on
input -> teacher answer without the prompt; held-out evaluation compares the
two. One module per stage:

    config     task files (TOML) -> dataclasses
    task       prompt rendering and answer parsing
    records    input readers and the labeled record
    models     model loading (hub id, folder, built-in SmolLM2)
    engine     token-level generation and continuation scoring
    teacher    label_inputs
    render     conversation -> token ids + loss weights
    train      train_student
    evaluate   evaluate_systems
    split      train / held-out split
    pipeline   run_pipeline: all stages, resumable
    predict    answering with a trained student

Heavy libraries (torch, transformers) load on first use, so `import
promptdistill` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "config",
    "load_config": "config",
    "Task": "task",
    "Example": "records",
    "LabeledExample": "records",
    "read_inputs": "records",
    "read_labeled": "records",
    "load_model": "models",
    "label_inputs": "teacher",
    "render_example": "render",
    "train_student": "train",
    "evaluate_systems": "evaluate",
    "split_examples": "split",
    "run_pipeline": "pipeline",
    "load_student": "predict",
    "predict_texts": "predict",
    "PromptDistillError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'promptdistill' has no attribute {name!r}")
