"""Evaluation: teacher (with the prompt), base student and trained student (without).

On held-out inputs that the student never trained on, each system answers
every input one request at a time, so latency is per request:

- teacher: the teacher with the long prompt, in the task's answer mode,
  answering through its `Teacher` backend (`models.teacher_backend`) with
  the labeling code, so it answers as it labeled;
- base: the student's base model without the prompt (what you get for free);
- student: the base plus the trained LoRA adapter, without the prompt.

Per system we report accuracy against gold labels (where present), agreement
with the teacher, parse rate, a confusion matrix (gold x predicted), mean
prompt tokens per request and median latency. Results go to report.json and
predictions.jsonl in the output folder (report.py writes report.md and report.html from them).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..progress import progress_bar

from .. import engine
from ..io import JsonlAppender, atomic_write_json, atomic_write_jsonl, drop_torn_last_line
from ..jsonreply import json_metrics
from ..models import LoadedModel
from ..records import Example
from ..render import end_of_turn_ids, render_prompt
from ..task import OK, Task
from ..teachers import Teacher
from .fidelity import FidelityScorer

UNPARSED = "??"


@dataclass
class Prediction:
    id: str
    system: str
    label: str | None
    reply: str
    status: str
    prompt_tokens: int
    latency_s: float
    # The system's distribution over labels (choose mode, or computed for the
    # fidelity metrics on label-constrained tasks), else None.
    label_probs: dict | None = None
    # KL(teacher || this system) on this input (see fidelity.py); None for the teacher.
    kl: float | None = None


def generate_answer(task: Task, loaded: LoadedModel, messages: list[dict]) -> tuple[str, int]:
    """Greedy (or sampled, per the task) reply to `messages`; returns (reply, prompt tokens)."""
    tok = loaded.tokenizer
    prompt = render_prompt(tok, messages)
    out = engine.generate(
        loaded.model, [prompt], max_new_tokens=task.config.max_new_tokens, eos_ids=end_of_turn_ids(tok),
        pad_id=tok.pad_token_id, temperature=task.config.temperature, seed=0,
    )[0]
    return tok.decode(out, skip_special_tokens=True), len(prompt)


def predict_system(task: Task, loaded: LoadedModel, examples: list[Example], system: str, *, progress=True,
                   done: dict | None = None, sink=None, fidelity: FidelityScorer | None = None,
                   teacher_preds: dict | None = None) -> list[Prediction]:
    """A system without the prompt (base or student): every example answered
    one request at a time, timed per request.

    With a `fidelity` scorer and the teacher's predictions by id, each
    prediction also gets its KL from the teacher (computed outside the timing).
    """
    def answer(e: Example) -> Prediction:
        t0 = time.perf_counter()
        reply, n_prompt = generate_answer(task, loaded, task.student_messages(e.text))
        latency = time.perf_counter() - t0
        label, status = task.parse_answer(reply)
        kl = probs = None
        if fidelity is not None and teacher_preds and e.id in teacher_preds:
            kl, probs = fidelity.kl(loaded, e.id, e.text, teacher_preds[e.id].reply)
        return Prediction(e.id, system, label, reply, status, n_prompt, latency, probs, kl)

    return _predict_each(examples, system, answer, progress, done, sink)


def predict_teacher(task: Task, teacher: Teacher, examples: list[Example], *, mode: str, seed: int = 0, progress=True,
                    done: dict | None = None, sink=None) -> list[Prediction]:
    """The teacher row: every example answered by `teacher.label`, one request at
    a time and timed per request, with the labeling seed so it answers as it labeled.

    Each request is sent whole (`reuse_prefix=False`), so the latency is what a
    request carrying the prompt costs, and no top-k log-probabilities are asked
    for (the row does not store them).
    """
    row_task = Task(replace(task.config, top_logprobs=0))
    prefill = task.config.reply_prefix if mode == "generate" else ""

    def answer(e: Example) -> Prediction:
        t0 = time.perf_counter()
        (record,) = teacher.label([e], row_task, mode, seed, 1, reuse_prefix=False)
        latency = time.perf_counter() - t0
        # The parse status, not the labeling status: low confidence is still an answer here.
        label, status = task.parse_answer(record.teacher_reply)
        n_prompt = len(render_prompt(teacher.tokenizer, task.teacher_messages(e.text), prefill))
        return Prediction(e.id, "teacher", label, record.teacher_reply, status, n_prompt, latency, record.label_probs)

    return _predict_each(examples, "teacher", answer, progress, done, sink)


def _predict_each(examples: list[Example], system: str, answer, progress, done: dict | None, sink) -> list[Prediction]:
    """`answer(e)` for each example, in order. `done` maps example ids to
    predictions kept from an interrupted run (reused, not recomputed); each
    new prediction is passed to `sink`."""
    preds = []
    done = done or {}
    for e in progress_bar(examples, desc=f"eval {system}", unit="input", disable=not progress):
        if e.id in done:
            preds.append(done[e.id])
            continue
        preds.append(answer(e))
        if sink is not None:
            sink(preds[-1])
    return preds


def system_metrics(task: Task, examples: list[Example], preds: list[Prediction], teacher_preds: list[Prediction] | None) -> dict:
    gold = [(e.gold_label, p.label) for e, p in zip(examples, preds) if e.gold_label is not None]
    agreement = None
    if teacher_preds is not None:
        pairs = [(p.label, t.label) for p, t in zip(preds, teacher_preds) if t.label is not None]
        agreement = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
    labels = task.labels or sorted({g for g, _ in gold} | {p for _, p in gold if p})
    confusion = {g: {p: 0 for p in labels + [UNPARSED]} for g in labels}
    for g, p in gold:
        if g in confusion:
            confusion[g][p if p in confusion[g] else UNPARSED] += 1
    return {
        "n": len(preds),
        "accuracy": sum(g == p for g, p in gold) / len(gold) if gold else None,
        "agreement": agreement,
        "parse_rate": sum(p.status == OK for p in preds) / len(preds) if preds else None,
        "mean_prompt_tokens": statistics.fmean(p.prompt_tokens for p in preds) if preds else None,
        "median_latency_ms": 1000 * statistics.median(p.latency_s for p in preds) if preds else None,
        # mean KL(teacher || system) over inputs (fidelity.py); None for the teacher
        "kl_to_teacher": statistics.fmean(kls) if (kls := [p.kl for p in preds if p.kl is not None]) else None,
        "confusion": confusion,
        "json": json_metrics(task, preds, teacher_preds) if task.json_reply else None,
    }


def evaluate_systems(
    task: Task,
    examples: list[Example],
    out_dir,
    *,
    teacher: Teacher,
    student: LoadedModel,
    base: LoadedModel | None = None,
    teacher_mode: str | None = None,
    seed: int = 0,
    progress: bool = True,
    fingerprint: str | None = None,
) -> dict:
    """Run teacher, base and student on `examples`; write and return the report.

    `teacher` is any backend (teachers.load_teacher); `seed` is the labeling
    seed (data.seed), for sampled teacher answers. `base` may share the student's weights (see models.AdapterDisabled);
    pass `base=None` to skip the base row. With a `fingerprint` (a hash of
    the models, adapter and inputs), predictions are also appended to
    `predictions.partial.jsonl` as they are made, and a rerun with the same
    fingerprint after an interruption reuses them.
    """
    out_dir = Path(out_dir)
    teacher_mode = teacher_mode or task.config.answer_mode
    partial = out_dir / "predictions.partial.jsonl"
    done = _partial_predictions(partial, fingerprint)
    with JsonlAppender(partial) as log:
        if fingerprint is not None and partial.stat().st_size == 0:
            log.append({"fingerprint": fingerprint})
        sink = (lambda p: log.append(asdict(p))) if fingerprint is not None else None
        run = dict(progress=progress, sink=sink)
        all_preds = {"teacher": predict_teacher(task, teacher, examples, mode=teacher_mode, seed=seed,
                                                done=done.get("teacher"), **run)}
        fidelity = FidelityScorer(task, teacher, seed)
        for p in all_preds["teacher"]:
            fidelity.remember(p.id, p.label_probs)
        run.update(fidelity=fidelity, teacher_preds={p.id: p for p in all_preds["teacher"]})
        if base is not None:
            all_preds["base"] = predict_system(task, base, examples, "base", done=done.get("base"), **run)
        all_preds["student"] = predict_system(task, student, examples, "student", done=done.get("student"), **run)

    teacher_labels = [p.label for p in all_preds["teacher"] if p.label is not None]
    majority = max(set(teacher_labels), key=teacher_labels.count) if teacher_labels else None
    report = {
        "task": task.name,
        "n_examples": len(examples),
        "teacher_mode": teacher_mode,
        # What always answering the teacher's most frequent label would score:
        # the floor that agreement should be read against.
        "majority_label": majority,
        "majority_agreement": teacher_labels.count(majority) / len(teacher_labels) if teacher_labels else None,
        "models": {"teacher": teacher.name, "student": student.name},
        "fidelity": _fidelity_summary(task, all_preds, fidelity.unavailable),
        "systems": {
            name: {"uses_prompt": name == "teacher", **system_metrics(task, examples, preds, all_preds["teacher"])}
            for name, preds in all_preds.items()
        },
    }
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_jsonl(out_dir / "predictions.jsonl", [asdict(p) for name in all_preds for p in all_preds[name]])
    partial.unlink(missing_ok=True)
    return report


def _fidelity_summary(task: Task, all_preds: dict, unavailable: str | None) -> dict:
    """KL of base and student from the teacher, and the share of the gap the student closes."""
    kl = {name: statistics.fmean(v) if (v := [p.kl for p in preds if p.kl is not None]) else None
          for name, preds in all_preds.items() if name != "teacher"}
    base, student = kl.get("base"), kl.get("student")
    return {
        "kind": "label distribution" if task.closed else "per reply token",
        # why there is no KL at all (a teacher backend without full distributions), else None
        "unavailable": unavailable,
        "kl_base": base,
        "kl_student": student,
        "gap_closed": 1 - student / base if base and student is not None else None,
    }


def _partial_predictions(path: Path, fingerprint: str | None) -> dict[str, dict[str, Prediction]]:
    """Predictions of an interrupted evaluation with the same fingerprint, by system and id."""
    if fingerprint is None or not path.exists():
        path.unlink(missing_ok=True)
        return {}
    drop_torn_last_line(path)  # a prediction cut by a kill is recomputed
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").split("\n") if line.strip()]
    try:
        header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
        if header.get("fingerprint") != fingerprint:
            raise ValueError("other settings")
        done: dict[str, dict[str, Prediction]] = {}
        for row in rows:
            done.setdefault(row["system"], {})[row["id"]] = Prediction(**row)
        return done
    except (IndexError, ValueError, KeyError, TypeError):
        # another evaluation's (or an unreadable) partial file: start over
        path.unlink()
        return {}
