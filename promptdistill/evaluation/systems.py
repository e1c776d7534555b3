"""Evaluation: teacher (with the prompt), base student and trained student (without).

On held-out inputs that the student never trained on:

- teacher: the teacher with the long prompt, in the task's answer mode,
  answering through its `Teacher` backend (`models.teacher_backend`) with
  the labeling code, so it answers as it labeled;
- base: the student's base model without the prompt (what you get for free);
- student: the base plus the trained LoRA adapter, without the prompt (or any
  model, or one served behind a chat API: api_student.py).

Per system we report accuracy against gold labels (where present), agreement
with the teacher, parse rate, a confusion matrix (gold x predicted), mean
prompt tokens per request and median latency. Results go to report.json and
predictions.jsonl in the output folder (run_report.py writes report.md and report.html from them).

Quality and latency are measured apart, because they want different things.
The answers behind the quality metrics are computed in batches (the teacher
through `Teacher.label` with its prompt prefix reused, the others decoded
together), which gives the same answers as one request at a time and is
several times faster. Latency is what one request costs, measured one
request at a time on a sample, the same way for every row (latency.py).

The off-task inputs (offtask.py) are answered by the same function as the
held-out ones (`predict_systems`), under their own system names.

report.json's `reference_points` (and `json_reference_points` per field of a
JSON task) read the agreement against floors and a ceiling (agreement.py):
per-answer fidelity with intervals, the majority answer, a surface
baseline fitted on the training inputs' teacher labels (when the caller
passes them), and the teacher's self-consistency: from its stored label
distribution in choose mode, or from `teacher_resamples` new sampled answers
per input in generate mode (kept in teacher_resamples.jsonl).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..progress import progress_bar

from .. import engine
from ..config import GENERATE_BATCH_SIZE, EvalConfig
from ..io import JsonlAppender, atomic_write_json, atomic_write_jsonl, drop_torn_last_line, resume_or_refuse
from ..jsonreply import json_metrics
from ..models import LoadedModel
from ..records import Example
from ..render import end_of_turn_ids, render_prompt
from ..task import OK, UNPARSED, Task
from ..teachers import Teacher
from .api_student import UNAVAILABLE as KL_NEEDS_LOCAL_STUDENT, ApiStudent
from .effect import agreement_effect, kl_effect
from .agreement import (json_reference_points, reference_points, self_consistency_ceiling_from_probs,
                        self_consistency_ceiling_from_samples)
from .fidelity import FidelityScorer, distribution_kl, kl_unavailable
from .general_ability import general_ability
from .latency import latency_section, measure_latency, model_request, prompt_cost, teacher_request
from .offtask import PREFIX as OFFTASK_PREFIX, offtask_summary
from .surface_baseline import evaluate_surface_baseline
from .text_replies import text_sections


@dataclass
class Prediction:
    id: str
    system: str
    label: str | None
    reply: str
    status: str
    prompt_tokens: int
    # Seconds one generated answer to this request took, asked alone
    # (latency.py); None for inputs outside the latency sample.
    latency_s: float | None
    # The system's distribution over labels (choose mode, or computed for the
    # fidelity metrics on label-constrained tasks), else None.
    label_probs: dict | None = None
    # KL(teacher || this system) on this input (see fidelity.py); None for the teacher.
    kl: float | None = None


def generate_answers(task: Task, loaded: LoadedModel, messages: list[list[dict]]) -> list[tuple[str, int]]:
    """(reply, prompt tokens) of `loaded`'s greedy (or sampled, per the task) answer to each
    conversation, decoded together (`answer_messages`)."""
    return answer_messages(loaded, messages, task.config.max_new_tokens, task.config.temperature)


def answer_messages(loaded: LoadedModel, messages: list[list[dict]], max_new_tokens: int,
                    temperature: float = 0.0) -> list[tuple[str, int]]:
    """(reply, prompt tokens) per conversation, decoded together
    (`engine.decode_with_prefix`: the prompts' common opening cached once, the
    rest left-padded, each row computing what it computes alone up to float
    rounding; sampled rows each seeded 0, as one request is)."""
    tok = loaded.tokenizer
    prompts = [render_prompt(tok, m) for m in messages]
    # The chat template's opening, shared by every prompt, is computed once.
    prefix, suffixes = engine.common_prefix_cache(loaded.model, prompts)
    got = engine.decode_with_prefix(
        prefix, suffixes, max_new_tokens=max_new_tokens, eos_ids=end_of_turn_ids(tok), pad_id=tok.pad_token_id,
        temperature=temperature, seeds=[0] * len(prompts),
    )
    return [(tok.decode(d.text_ids, skip_special_tokens=True), len(p)) for d, p in zip(got, prompts)]


def predict_system(task: Task, loaded: LoadedModel | ApiStudent, examples: list[Example], system: str, *, progress=True,
                   done: dict | None = None, sink=None, fidelity: FidelityScorer | None = None,
                   teacher_preds: dict | None = None, batch_size: int | None = None) -> list[Prediction]:
    """A system without the prompt (base or student): the examples answered in
    batches (`generate_answers`); latency is measured apart (latency.py).

    With a `fidelity` scorer and the teacher's predictions by id, each
    prediction also gets its KL from the teacher; a student behind an API
    (ApiStudent) answers through it and gets none (its distributions are not given).
    """
    if isinstance(loaded, ApiStudent):
        fidelity = None

    def answer(batch: list[Example]) -> Iterator[Prediction]:
        """The batch's predictions, each yielded as it is made (an API's replies arrive one by one:
        each is kept before the next, so an interruption re-asks none of them)."""
        scored = [e for e in batch if fidelity is not None and teacher_preds and e.id in teacher_preds]
        # Label tasks: the distributions of the whole batch in batched forwards, then each KL.
        batch_probs = (dict(zip([e.id for e in scored], fidelity.model_label_probs_batch(loaded, [e.conversation() for e in scored])))
                       if scored and fidelity.kind == "label" else {})
        replies = (loaded.answer(task, batch) if isinstance(loaded, ApiStudent)
                   else generate_answers(task, loaded, [task.student_messages(e.conversation()) for e in batch]))
        for e, (reply, n_prompt) in zip(batch, replies):
            label, status = task.parse_answer(reply)
            kl = probs = None
            if e.id in batch_probs:
                probs = batch_probs[e.id]
                kl = distribution_kl(fidelity.teacher_label_probs(e.id, e.conversation()), probs)
            elif fidelity is not None and teacher_preds and e.id in teacher_preds:
                kl, probs = fidelity.kl(loaded, e.id, e.conversation(), teacher_preds[e.id].reply)
            yield Prediction(e.id, system, label, reply, status, n_prompt, None, probs, kl)

    return _predict_batches(examples, system, answer, batch_size, progress, done, sink)


def predict_teacher(task: Task, teacher: Teacher, examples: list[Example], *, mode: str, seed: int = 0, progress=True,
                    done: dict | None = None, sink=None, batch_size: int | None = None, system: str = "teacher") -> list[Prediction]:
    """The teacher row: the examples answered by `teacher.label` in batches, with
    the prompt prefix reused and the labeling seed, so it answers as it labeled;
    latency is measured apart (latency.py). No top-k log-probabilities
    are asked for (the row does not store them).
    """
    row_task = Task(replace(task.config, top_logprobs=0))

    def answer(batch: list[Example]) -> list[Prediction]:
        records = {r.id: r for r in teacher.label(batch, row_task, mode, seed, len(batch))}
        return [teacher_prediction(task, teacher, e, records[e.id], mode, system) for e in batch]

    return _predict_batches(examples, system, answer, batch_size, progress, done, sink)


def teacher_prediction(task: Task, teacher: Teacher, example: Example, record, mode: str, system: str = "teacher") -> Prediction:
    """The teacher row's prediction from its labeled record of `example` (`Teacher.label`'s
    answer, made now or by the label stage)."""
    # The parse status, not the labeling status: low confidence is still an answer here.
    label, status = task.parse_answer(record.teacher_reply)
    # A chat API's teacher has no tokenizer here: its prompt tokens are what the API counted.
    usage = (record.meta or {}).get("teacher_usage")
    prefill = task.config.reply_prefix if mode == "generate" else ""
    n_prompt = (usage["prompt_tokens"] // max(1, usage["requests"]) if usage
                else len(render_prompt(teacher.tokenizer, task.teacher_messages(example.conversation()), prefill)))
    return Prediction(example.id, system, label, record.teacher_reply, status, n_prompt, None, record.label_probs)


def labeled_teacher_predictions(task: Task, teacher: Teacher, examples: list[Example], records: dict) -> dict[str, Prediction]:
    """The teacher row's predictions for the examples that `records` (labeled records by
    id, accepted or rejected) already answer: the same id and the same conversation."""
    return {e.id: teacher_prediction(task, teacher, e, records[e.id], task.config.answer_mode)
            for e in examples if e.id in records and records[e.id].conversation() == e.conversation()}


def _predict_batches(examples: list[Example], system: str, answer, batch_size: int, progress, done: dict | None,
                     sink) -> list[Prediction]:
    """`answer(batch)` over the examples not in `done` (predictions kept from an
    interrupted run, reused, not recomputed), in batches; predictions in input
    order, each new one passed to `sink` as `answer` yields it."""
    done, batch_size = done or {}, batch_size or GENERATE_BATCH_SIZE
    todo = [e for e in examples if e.id not in done]
    new: dict[str, Prediction] = {}
    bar = progress_bar(total=len(examples), initial=len(examples) - len(todo), desc=f"eval {system}", unit="input",
                       disable=not progress)
    for i in range(0, len(todo), batch_size):
        for p in answer(todo[i : i + batch_size]):
            new[p.id] = p
            if sink is not None:
                sink(p)
        bar.update(min(batch_size, len(todo) - i))
    bar.close()
    return [done[e.id] if e.id in done else new[e.id] for e in examples]


def system_metrics(task: Task, examples: list[Example], preds: list[Prediction], teacher_preds: list[Prediction] | None) -> dict:
    """A system's row. A text task's answer is its whole reply: agreement, accuracy
    and the confusion table compare answers as labels, so they are None there
    (its quality is text_sections'); parse rate is the share of non-empty replies."""
    if task.text_reply:
        teacher_preds = None
        examples = [replace(e, gold_label=None) for e in examples]
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
        "median_latency_ms": 1000 * statistics.median(lat) if (lat := [p.latency_s for p in preds if p.latency_s is not None]) else None,
        # mean KL(teacher || system) over inputs (fidelity.py); None for the teacher
        "kl_to_teacher": statistics.fmean(kls) if (kls := [p.kl for p in preds if p.kl is not None]) else None,
        "confusion": confusion if not task.text_reply else {},
        "json": json_metrics(task, preds, teacher_preds) if task.json_reply else None,
    }


@dataclass
class Systems:
    """The loaded models an evaluation compares."""

    # With the prompt: any backend (teachers.load_teacher), answering as it labeled.
    teacher: Teacher
    # The base plus the trained adapter (or any model, or one behind a chat API), without the prompt.
    student: LoadedModel | ApiStudent
    # The untrained model, without the prompt: the base row (eval.include_base) and the
    # reference of the off-task and general-ability checks; it may share the student's
    # weights (models.AdapterDisabled). None: no base row and neither check.
    base: LoadedModel | None = None
    # Who judges free-text replies (judge.py) when it is not the teacher (eval.judge_model).
    judge: Teacher | None = None


def predict_systems(task: Task, systems: Systems, examples: list[Example], *, include_base: bool, seed: int, done: dict,
                    sink, progress: bool, prefix: str = "") -> dict[str, list[Prediction]]:
    """Teacher, base (with `include_base`) and student predictions on `examples`, by system name.

    The held-out and the off-task inputs alike: the teacher answers first, in
    the task's answer mode, and the others get their KL from its answers.
    Predictions are stored under `prefix` + the system name (`done`: the ones
    an interrupted evaluation kept, by stored name; `sink`: each new one).
    """
    run = dict(progress=progress, sink=sink)
    name = prefix + "teacher"
    preds = {"teacher": predict_teacher(task, systems.teacher, examples, mode=task.config.answer_mode, seed=seed, system=name,
                                        done=done.get(name), **run)}
    # One scorer per input set: off-task ids may repeat held-out ids.
    fidelity = FidelityScorer(task, systems.teacher, seed)
    for p in preds["teacher"]:
        fidelity.remember(p.id, p.label_probs)
    run.update(fidelity=fidelity, teacher_preds={p.id: p for p in preds["teacher"]})
    rows = [("base", systems.base)] if include_base and systems.base is not None else []
    for row, loaded in rows + [("student", systems.student)]:
        preds[row] = predict_system(task, loaded, examples, prefix + row, done=done.get(prefix + row), **run)
    return preds


def evaluate_systems(task: Task, examples: list[Example], out_dir, systems: Systems, settings: EvalConfig | None = None, *,
                     seed: int = 0, train_records: list | None = None, offtask: list[Example] | None = None,
                     resume_settings: dict | None = None, teacher_records: dict | None = None, progress: bool = True) -> dict:
    """Run teacher, base and student on `examples`; write and return the report.

    `settings` (default EvalConfig()) say what to measure: the base row, the
    latency sample, teacher resamples for the ceiling, the general-ability
    check. `seed` is the labeling seed (data.seed), for sampled teacher
    answers. `train_records` (the training split's labeled records) fit the
    surface baseline. `offtask` (the inputs of eval.offtask_inputs) are
    answered by all three (offtask.py); it and the general-ability check
    (general_ability.py) need `systems.base`.

    With `resume_settings` (what the predictions depend on: settings, models,
    adapter, inputs), predictions are also appended to
    `predictions.partial.jsonl` as they are made, and a rerun with the same
    settings after an interruption reuses them; with other settings it starts
    over and says which changed (io.resume_or_refuse, the rule every resumable
    output follows). Latency is measured on the first `settings.latency_requests`
    examples, one generated answer per request for every row (latency.py),
    after the answers.

    `teacher_records` (labeled records by id: a run's held-out labels, made by
    the same teacher under the same settings) are the teacher's answers to the
    examples they match, taken instead of asking it again (`labeled_teacher_predictions`).
    """
    settings = settings or EvalConfig()
    out_dir = Path(out_dir)
    teacher, student, base = systems.teacher, systems.student, systems.base
    partial = out_dir / "predictions.partial.jsonl"
    done = _partial_predictions(partial, resume_settings)
    if teacher_records:
        done["teacher"] = {**labeled_teacher_predictions(task, teacher, examples, teacher_records), **done.get("teacher", {})}
    with JsonlAppender(partial) as log:
        if resume_settings is not None and partial.stat().st_size == 0:
            log.append({"settings": resume_settings})
        sink = (lambda p: log.append(asdict(p))) if resume_settings is not None else None
        run = dict(seed=seed, done=done, sink=sink, progress=progress)
        all_preds = predict_systems(task, systems, examples, include_base=settings.include_base, **run)
        resamples = (resample_teacher(task, teacher, examples, settings.teacher_resamples, seed, done=done, sink=sink,
                                      progress=progress)
                     if settings.teacher_resamples else None)
        offtask_preds = (predict_systems(task, systems, offtask, include_base=True, prefix=OFFTASK_PREFIX, **run)
                         if offtask and base is not None else None)

    sample = examples[:settings.latency_requests]
    without_prompt = {"base": base, "student": student}
    for name, preds in all_preds.items():
        request = teacher_request(task, teacher, seed) if name == "teacher" else model_request(task, without_prompt[name])
        seconds = measure_latency(sample, request)
        all_preds[name] = [replace(p, latency_s=seconds.get(p.id)) for p in preds]

    over_api = isinstance(student, ApiStudent)
    # A text task's replies are not labels: no majority answer, no agreement floors.
    teacher_labels = [p.label for p in all_preds["teacher"] if p.label is not None] if not task.text_reply else []
    majority = max(set(teacher_labels), key=teacher_labels.count) if teacher_labels else None
    report = {
        "task": task.name,
        "n_examples": len(examples),
        "teacher_mode": task.config.answer_mode,
        # What always answering the teacher's most frequent label would score:
        # the floor that agreement should be read against.
        "majority_label": majority,
        "majority_agreement": teacher_labels.count(majority) / len(teacher_labels) if teacher_labels else None,
        "models": {"teacher": teacher.name, "student": student.name},
        "latency": latency_section(task, len(sample), prompt_cost(task, teacher), student_url=student.shown_url if over_api else None),
        "fidelity": {**_fidelity_summary(task, all_preds, kl_unavailable(task, teacher)),
                     **({"student_unavailable": KL_NEEDS_LOCAL_STUDENT} if over_api else {})},
        "systems": {
            name: {"uses_prompt": name == "teacher", **system_metrics(task, examples, preds, all_preds["teacher"])}
            for name, preds in all_preds.items()
        },
        **(reference_sections(task, examples, all_preds, train_records, resamples) if not task.text_reply else {}),
    }
    if task.text_reply or settings.checks:
        # Free text: the replies' checks, the prompt effect on them and the judge (text_replies.py), on
        # each system's whole reply per held-out example as the task reads it (a reasoning teacher's
        # thinking cut off; "" when empty), or, for a label task with checks, its raw reply.
        replies = {name: [(p.label or "") if task.text_reply else p.reply for p in preds] for name, preds in all_preds.items()}
        report.update(text_sections(task, settings, examples, replies, systems.judge or teacher, out_dir, seed=seed,
                                    force=True, progress=progress))
    elif "base" in all_preds:
        report["prompt_effect"] = {"agreement": agreement_effect(*([p.label for p in all_preds[s]] for s in ("teacher", "base", "student")))}
    # A teacher behind a paid API: what its requests cost here, against the student's nothing.
    if (api_cost := getattr(teacher, "api_cost", None)) is not None and (section := api_cost()) is not None:
        # a student behind an API has a cost too, unpriced here: its usage is in student_api
        report["api_cost"] = {**section, "student_api_cost_per_request": None} if over_api else section
    if offtask_preds is not None:
        report["offtask"] = offtask_summary(task, offtask, offtask_preds, base, student, settings.offtask_inputs or "")
        atomic_write_jsonl(out_dir / "offtask_predictions.jsonl", [asdict(p) for ps in offtask_preds.values() for p in ps])
    if settings.general_ability and base is not None:
        report["general_ability"], rows = general_ability(base, student, max_drop=settings.general_max_drop, progress=progress)
        atomic_write_jsonl(out_dir / "general_ability.jsonl", rows)
    if over_api:  # where the student was reached, and its usage: every request it was sent is made by now
        report["student_api"] = student.describe()
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_jsonl(out_dir / "predictions.jsonl", [asdict(p) for name in all_preds for p in all_preds[name]])
    if resamples is not None:
        atomic_write_jsonl(out_dir / "teacher_resamples.jsonl",
                           [{"id": e.id, "recorded": t.label, "resamples": r} for e, t, r in zip(examples, all_preds["teacher"], resamples)])
    partial.unlink(missing_ok=True)
    return report


RESAMPLE = "teacher_resample"  # predictions.partial.jsonl's system name of resample j: f"{RESAMPLE}_{j}"


def resample_teacher(task: Task, teacher: Teacher, examples: list[Example], k: int, seed: int, *, done: dict | None = None,
                     sink=None, progress: bool = True) -> list[list[str | None]]:
    """`k` new sampled answers of the teacher per input (generate mode, at task.temperature): the labels, per input.

    Resample j (1..k) is one `teacher.label` pass over the inputs with seed
    `seed + j`, so no resample repeats the draw the recorded answer came from
    (seed `seed`), and each is a single draw (samples = 1) even when labeling
    voted over several: the ceiling compares one draw with the recorded answer.
    Each resample goes through `sink` like a prediction, so an interrupted
    evaluation keeps the ones made (`done`, by system name).
    """
    sample_task = Task(replace(task.config, samples=1, top_logprobs=0, min_confidence=0.0))
    done = done or {}
    labels: list[list[str | None]] = [[] for _ in examples]
    for j in range(1, k + 1):
        system = f"{RESAMPLE}_{j}"
        have = done.get(system, {})
        todo = [e for e in examples if e.id not in have]
        if progress and todo:
            print(f"[promptdistill] teacher resample {j}/{k}: {len(todo)} inputs", flush=True)
        new = {}
        for e, record in zip(todo, teacher.label(todo, sample_task, "generate", seed + j) if todo else ()):
            label, status = task.parse_answer(record.teacher_reply)
            new[e.id] = Prediction(e.id, system, label, record.teacher_reply, status, 0, 0.0)
            if sink is not None:
                sink(new[e.id])
        for i, e in enumerate(examples):
            labels[i].append((have.get(e.id) or new[e.id]).label)
    return labels


def teacher_ceiling(teacher_preds: list[Prediction], resamples: list[list] | None) -> dict | None:
    """The teacher's self-consistency (agreement.py): from resamples when there are
    any, else from the stored label distributions (choose mode), else None."""
    recorded = [p.label for p in teacher_preds]
    if resamples is not None:
        return self_consistency_ceiling_from_samples(recorded, resamples)
    if any(p.label_probs for p in teacher_preds):
        return self_consistency_ceiling_from_probs([p.label_probs for p in teacher_preds], recorded)
    return None


def reference_sections(task: Task, examples: list[Example], all_preds: dict, train_records: list | None,
                       resamples: list[list] | None) -> dict:
    """report.json's `reference_points` (and, for a JSON task, `json_reference_points`
    per field): agreement per answer, floors and ceiling, for every system but the teacher."""
    teacher = [p.label for p in all_preds["teacher"]]
    systems = {name: [p.label for p in preds] for name, preds in all_preds.items() if name != "teacher"}
    fields = task.config.json_fields if task.json_reply else None
    surface = None
    if train_records is not None:
        # The records the student trained on: the same teacher labels, none held out.
        usable = [r for r in train_records if r.status == OK]
        surface = evaluate_surface_baseline([r.text for r in usable], [r.label for r in usable], [e.text for e in examples], teacher,
                                            labels=task.labels or None, json_fields=fields)
    gold = [e.gold_label for e in examples]
    out = {"reference_points": reference_points(teacher, systems, gold_labels=gold if any(g is not None for g in gold) else None,
                                                labels=task.labels or None, surface=surface,
                                                ceiling=teacher_ceiling(all_preds["teacher"], resamples))}
    if fields:
        out["json_reference_points"] = json_reference_points(teacher, systems, fields, surface=surface)
    return out


def _fidelity_summary(task: Task, all_preds: dict, unavailable: str | None) -> dict:
    """KL of base and student from the teacher, and the share of the gap the student closes:
    the prompt effect recovered on KL (effect.py), with its interval, over the inputs both have a KL for."""
    kl = {name: statistics.fmean(v) if (v := [p.kl for p in preds if p.kl is not None]) else None
          for name, preds in all_preds.items() if name != "teacher"}
    base, student = kl.get("base"), kl.get("student")
    effect = (kl_effect([p.kl for p in all_preds["base"]], [p.kl for p in all_preds["student"]])
              if base is not None and student is not None else None)
    return {
        "kind": "label distribution" if task.closed else "per reply token",
        # why there is no KL at all (a teacher backend without full distributions), else None
        "unavailable": unavailable,
        "kl_base": base,
        "kl_student": student,
        "gap_closed": effect["recovered"] if effect else None,
        # the same fraction with its paired bootstrap interval (effect.prompt_effect)
        "gap_closed_effect": effect,
    }


def _partial_predictions(path: Path, settings: dict | None) -> dict[str, dict[str, Prediction]]:
    """Predictions of an interrupted evaluation made with the same settings, by system
    and id. Made with other settings, or unreadable, the file is discarded and the
    evaluation starts over: its predictions are a cache, never the user's work."""
    if settings is None or not path.exists():
        path.unlink(missing_ok=True)
        return {}
    drop_torn_last_line(path)  # a prediction cut by a kill is recomputed
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").split("\n") if line.strip()]
    try:
        header, rows = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
        stored = header.get("settings")
        if not isinstance(stored, dict):
            raise ValueError("no settings recorded")
        changed = resume_or_refuse(stored, settings, force=True, what="an interrupted evaluation was made",
                                   discards="its predictions", discard=path.unlink, path=path)
        if changed:
            print(f"[promptdistill] {path}: an interrupted evaluation made with other settings ({', '.join(changed[:8])}); "
                  "starting over", file=sys.stderr)
            return {}
        done: dict[str, dict[str, Prediction]] = {}
        for row in rows:
            done.setdefault(row["system"], {})[row["id"]] = Prediction(**row)
        return done
    except (IndexError, ValueError, KeyError, TypeError, AttributeError):
        # an unreadable partial file: start over
        path.unlink(missing_ok=True)
        return {}
