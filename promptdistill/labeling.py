"""Labeling: the teacher answers every input, durably and resumably.

This module is the orchestration only; who runs the model is a `Teacher`
(teachers/: transformers in this process, vLLM's engine, or an
OpenAI-compatible server), and how answers become records is
teachers/records.py, the same for every backend. Two answer modes:

- `generate`: the teacher writes a free reply; the task's regex reads the
  label. Replies that do not parse, or parse to a label outside the label set,
  go to the rejects file with their status; nothing is dropped silently.
- `choose`: for tasks with a closed label set. Every allowed answer, written
  as the teacher's reply (`Final Answer: <label>` plus end-of-turn), is
  scored after prompt + input; the most likely label wins and the whole
  distribution is stored as a soft label. Every input gets a valid label,
  which matters for small teachers that rarely follow the format.

Output is appended and flushed record by record as the teacher yields them
(teachers yield in input order), so an interrupted run keeps what it wrote;
rerunning labels only the missing inputs and ends with the uninterrupted
run's file. A sidecar `<output>.meta.json` records what produced the labels
(teacher, backend, prompt hash, decoding settings, seed), and a rerun with
different settings is refused unless `force` is set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


from .config import Config
from .dataset_inputs import check_input_source, input_location, local_path
from .errors import PromptDistillError
from .inputs import prepare_inputs
from .io import (DirectoryLock, JsonlAppender, atomic_write_json, check_no_symlinks, check_output_file, check_paths,
                 claim_side_file, is_lock_file, read_settings, resume_or_refuse, torn_tail_length)
from .progress import progress_bar
from .records import Example, iter_jsonl, iter_lines
from .rundir import STAGE_OUTPUTS, check_outside_runs
from .task import TRUNCATED, Task
from .teachers import Teacher, load_teacher

__all__ = ["check_label_outputs", "claim_labels_file", "label_file", "label_inputs", "summarize_labels"]


def label_file(cfg: Config, inputs, out_path, rejects_path=None, *, limit: int = 0, task_file=None, log=print,
               dedupe_hint: str = "data.dedupe = true", **options) -> dict:
    """The `label` command: label the inputs of a file (`inputs`, default data.inputs)
    into `out_path`; return the summary. The input file is checked and the
    outputs claimed (`check_label_outputs`, which never writes into a run)
    before the inputs are read (`inputs.prepare_inputs`, the same selection as
    `run`'s split); `limit` keeps the first N; `options` are label_inputs'. With
    `push_to_hub` (ORG/NAME, checked first: hub.check_push), the labeled file is
    then uploaded to that dataset repo (the rejects and the sidecar stay local)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise PromptDistillError(f"limit must be a whole number >= 0 (0: all inputs), got {limit!r}", field="--limit")
    _check_batch_size(options.get("batch_size"))  # before the teacher is loaded
    push_to_hub = options.pop("push_to_hub", None)
    if push_to_hub:
        from .hub import check_push

        check_push(push_to_hub)
    inputs = inputs or (input_location(cfg, cfg.data.inputs) if cfg.data.inputs else None)
    if inputs is None:
        raise PromptDistillError("no inputs: pass --inputs or set data.inputs", field="data.inputs")
    inputs = check_input_source(inputs, "input file")
    out_path, rejects_path = check_label_outputs(out_path, rejects_path, reads={"--inputs": local_path(inputs), "the task file": task_file})
    examples = prepare_inputs(cfg, Task(cfg.task), inputs, log, dedupe_hint=dedupe_hint)[: limit or None]
    summary = _label(cfg, examples, load_teacher(cfg), out_path, rejects_path, **options)
    if push_to_hub:
        from .hub import push_file

        summary["hub"] = push_file(out_path, push_to_hub, repo_type="dataset", message="Upload labels made by promptdistill")
    return summary


def check_label_outputs(out_path, rejects_path=None, *, reads: dict | None = None, more_writes: dict | None = None,
                        own_entries: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """What a command that writes labeled records writes, checked before anything is:
    --out, --rejects (default `<out>.rejects.jsonl`), the sidecar, the lock and
    `more_writes` apart from the command's inputs (`reads`) and from one another,
    outside any run directory (but for a run's `own_entries`), and --out and
    --rejects each new, empty or holding labeled records. Returns (out, rejects)."""
    out = Path(out_path)
    rejects = Path(rejects_path) if rejects_path else out.with_name(out.stem + ".rejects.jsonl")
    writes = {"--out": out, "--rejects": rejects, "--out's sidecar": out.with_name(out.name + ".meta.json"),
              "--out's lock file": out.with_name(out.name + ".lock"), **(more_writes or {})}
    check_paths(reads or {}, writes)
    for name, path in writes.items():
        check_outside_runs(path, name, own_entries=own_entries)
    claim_labels_file(out, "--out")
    claim_labels_file(rejects, "--rejects", sidecars=False)
    # Who wrote each side file is what --out's sidecar records (its own name in
    # the sidecar's "rejects", "foreign"), never what the lines look like.
    sidecar = read_sidecar(out)
    claim_side_file(rejects, "--rejects", ours=sidecar.get("rejects") == rejects.name,
                    marker=f"{out.name}.meta.json does not name it as --out's rejects")
    named = {v for v in sidecar.values() if isinstance(v, str)}
    for name, path in (more_writes or {}).items():
        claim_side_file(path, name, ours=Path(path).name in named, marker=f"{out.name}.meta.json does not name it")
    lock = out.with_name(out.name + ".lock")
    claim_side_file(lock, "--out's lock file", ours=bool(sidecar) or is_lock_file(lock), marker="not a lock file it left")
    return out, rejects


def read_sidecar(out: Path) -> dict:
    """--out's sidecar (<out>.meta.json) as a dict; {} when there is none."""
    meta = out.with_name(out.name + ".meta.json")
    try:
        obj = json.loads(meta.read_bytes().decode("utf-8")) if meta.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        obj = {}
    return obj if isinstance(obj, dict) else {}


def label_inputs(
    cfg: Config,
    examples: list[Example],
    teacher: Teacher,
    out_path,
    rejects_path=None,
    *,
    mode: str | None = None,
    batch_size: int | None = None,
    force: bool = False,
    progress: bool = True,
    reuse_prefix: bool = True,
    reads: dict | None = None,
) -> dict:
    """Label `examples` with `teacher` into `out_path` (JSONL); return a summary.

    The task is `cfg.task`; sampled answers are seeded from `cfg.data.seed`
    (per input and sample, see teachers.records.sample_seed). `mode`
    overrides task.answer_mode. `batch_size` is the backend's unit of work
    (inputs per generate batch locally, default 64; per engine call with
    vLLM, default 256; the server backend ignores it). With `reuse_prefix`
    (the default) a local teacher runs the prompt tokens shared by every
    request once; `reuse_prefix=False` sends every request whole, as a plain
    loop would. `reads` names the files the examples came from ({"--inputs": path}):
    an output that is one of them is refused, as every output that is not the
    tool's own (`check_label_outputs`), before anything is written.
    """
    if not isinstance(cfg, Config) or not isinstance(teacher, Teacher):
        # The signature changed (the config first, a Teacher instead of a loaded model): say so instead of an AttributeError.
        raise TypeError(f"label_inputs(cfg, examples, teacher, out_path) takes the Config and a teachers.Teacher "
                        f"(teachers.load_teacher(cfg), or teachers.local.LocalTeacher(loaded_model)); got "
                        f"{type(cfg).__name__} and {type(teacher).__name__}")
    # From Python the same checks as the command's, but a run's own labels/ may be written (the pipeline, a notebook).
    out_path, rejects_path = check_label_outputs(out_path, rejects_path, reads=reads, own_entries=(STAGE_OUTPUTS["label"],))
    return _label(cfg, examples, teacher, out_path, rejects_path, mode=mode, batch_size=batch_size, force=force,
                  progress=progress, reuse_prefix=reuse_prefix)


def _label(cfg: Config, examples: list[Example], teacher: Teacher, out_path: Path, rejects_path: Path, *, mode: str | None = None,
           batch_size: int | None = None, force: bool = False, progress: bool = True, reuse_prefix: bool = True) -> dict:
    """Label `examples` into the checked `out_path` and `rejects_path` (see label_inputs)."""
    _check_batch_size(batch_size)
    task = Task(cfg.task)
    mode = mode or task.config.answer_mode
    if mode == "choose" and not task.closed:
        raise PromptDistillError("answer mode 'choose' needs task.labels", field="task.labels")
    seed = cfg.data.seed
    meta = {
        "teacher": teacher.name,
        "task_fingerprint": task.fingerprint(),
        "answer_mode": mode,
        "max_new_tokens": task.config.max_new_tokens,
        "teacher_max_new_tokens": task.teacher_max_new_tokens,
        "temperature": task.config.temperature,
        "seed": seed,
        # The rejects file this sidecar vouches for (claim_side_file: a rejects file is ours when named here).
        "rejects": rejects_path.name,
        # Every backend adds its name, and where its model runs.
        **teacher.meta(),
    }
    with DirectoryLock(out_path.with_name(out_path.name + ".lock"), str(out_path)):
        _check_or_write_meta(out_path, rejects_path, meta, force)
        # Opening the appenders first cuts a torn last line, so it is relabeled.
        with JsonlAppender(out_path) as good, JsonlAppender(rejects_path) as bad:
            tally = LabelTally(e.id for e in examples).read(out_path, rejected=False).read(rejects_path, rejected=True)
            todo = [e for e in examples if e.id not in tally.done]
            bar = progress_bar(total=len(examples), initial=len(examples) - len(todo), unit="input", desc=f"label ({mode})",
                       disable=not progress)
            limit = cfg.models.teacher_max_cost
            _check_budget(usage_cost(tally.usage, cfg.models), limit)
            for record in teacher.label(todo, task, mode, seed, batch_size, reuse_prefix=reuse_prefix):
                obj = record.to_json()
                (good if record.trainable else bad).append(obj)
                tally.add(obj, rejected=not record.trainable)
                bar.update(1)
                _check_budget(usage_cost(tally.usage, cfg.models), limit)
        bar.close()
    return tally.summary(out_path, rejects_path, cfg.models)


def usage_cost(usage: dict, models) -> float:
    """What `usage` (prompt and completion tokens) costs at models.teacher_price_in/out per million tokens."""
    return (usage.get("prompt_tokens", 0) * models.teacher_price_in + usage.get("completion_tokens", 0) * models.teacher_price_out) / 1e6


def _check_budget(spent: float, limit: float) -> None:
    """Stop once models.teacher_max_cost is spent: everything labeled so far is kept, and a rerun with a higher limit continues."""
    if limit and spent >= limit:
        raise PromptDistillError(f"labeling stopped: the teacher's API use cost {spent:.4f} of models.teacher_max_cost = {limit:g}; "
                                 "everything labeled so far is kept: raise the limit (--set models.teacher_max_cost=...) and "
                                 "rerun the same command to continue", field="models.teacher_max_cost")


def _check_batch_size(batch_size) -> None:
    """None (the backend's default) or a whole number >= 1: a batch of -1 would label nothing and report success."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise PromptDistillError(f"batch size must be a whole number >= 1, got {batch_size!r}", field="--batch-size")


def _check_or_write_meta(out_path: Path, rejects_path: Path, meta: dict, force: bool) -> None:
    """Labels made with other settings (a key only the old labels have, say a server
    URL, is a change too) are refused, or with `force` discarded; then the sidecar
    records the current settings."""
    meta_path = out_path.with_name(out_path.name + ".meta.json")

    def discard():
        for p in (out_path, rejects_path):
            p.unlink(missing_ok=True)

    stored = read_settings(meta_path, corrupt="corrupt labels sidecar; delete it and rerun with --force to relabel")
    if stored is None and force:  # labels nobody recorded the settings of
        discard()
    resume_or_refuse(stored, meta, force=force, what="existing labels were made", path=out_path,
                     discards="them and relabels, or write to another file", discard=discard)
    atomic_write_json(meta_path, meta)


def claim_labels_file(path, what: str, *, sidecars: bool = True) -> Path:
    """A labeled JSONL file `label` appends to: new, empty, or holding labeled records
    (label cuts a torn last line, which would truncate anything else). With
    `sidecars`, its sidecar (<file>.meta.json) and lock (<file>.lock) must
    not be folders, and the sidecar must be readable JSON."""
    p = check_output_file(path, what)
    check_no_symlinks(p, what)
    meta = p.with_name(p.name + ".meta.json")
    if sidecars:
        check_output_file(meta, f"{what}'s sidecar")
        check_output_file(p.with_name(p.name + ".lock"), f"{what}'s lock file")
    if sidecars:
        check_no_symlinks(meta, f"{what}'s sidecar")
    if sidecars and meta.exists():
        try:
            obj = json.loads(meta.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            obj = None
        if not isinstance(obj, dict):
            raise PromptDistillError("corrupt labels sidecar; delete it and rerun with --force to relabel", path=meta)
        if "task_fingerprint" not in obj:
            raise PromptDistillError(f"{what}'s sidecar exists and was not written by promptdistill (no task_fingerprint); "
                                     "move it or choose another --out", path=meta)
    if not p.exists() or p.stat().st_size == 0:
        return p
    with open(p, "rb") as f:  # text after the last newline: a record cut by a kill, cut on resume
        torn_length = torn_tail_length(f)
        f.seek(-torn_length, os.SEEK_END)
        torn = f.read(min(torn_length, 1 << 16))
    records = 0
    for n, line in iter_lines(p, binary=True):
        if not line.endswith(b"\n") or not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
            ok = isinstance(obj, dict) and "id" in obj and "status" in obj
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            ok = False
        if not ok and records == 0:
            raise PromptDistillError(f"{what} exists and is not a labeled JSONL file written by `label` (line {n}); "
                                     "choose another file", path=p)
        if not ok:
            raise PromptDistillError("corrupt labeled record; fix or delete this line", path=p, line=n)
        records += 1
    if torn.strip() and not (torn.startswith(b'{"') and (records or meta.exists())):
        raise PromptDistillError(f"{what} exists and is not a labeled JSONL file written by `label` (its last line); "
                                 "choose another file", path=p)
    if sidecars and not meta.is_file():
        # Labels are ours by the sidecar `label` writes before its first record, not by their lines' shape.
        raise PromptDistillError(f"{what} exists and was not written by promptdistill (no {meta.name} beside it); "
                                 "choose another file (--force does not replace it)", path=p)
    return p


class LabelTally:
    """What a labels file and its rejects hold, counted as they are read and as
    records are appended: the ids done (every record's, so none is labeled
    twice) and the summary's counts (only `wanted` ids, when given). One pass
    over the files at start; `add` keeps it current, so the summary needs no
    second read. Only ids and counters are kept, never the records."""

    def __init__(self, wanted=None):
        self.wanted = set(wanted) if wanted is not None else None
        self.done: set[str] = set()
        self.labeled = self.rejected = self.gold = self.correct = 0
        self.by_status: dict[str, int] = {}
        self.entropy_sum, self.entropy_count = 0.0, 0
        # An API teacher's token usage over every record in the files (what was spent, wanted or not).
        self.usage: dict[str, int] = {}

    def read(self, path: Path, *, rejected: bool) -> "LabelTally":
        if path.exists():
            for n, obj in iter_jsonl(path):
                if not isinstance(obj.get("id"), str) or not isinstance(obj.get("status"), str):
                    raise PromptDistillError("corrupt labeled record; fix or delete this line", path=path, line=n)
                self.add(obj, rejected=rejected)
        return self

    def add(self, record: dict, *, rejected: bool) -> None:
        self.done.add(record["id"])
        for k, v in ((record.get("meta") or {}).get("teacher_usage") or {}).items():
            self.usage[k] = self.usage.get(k, 0) + v
        if self.wanted is not None and record["id"] not in self.wanted:
            return
        if rejected:
            self.rejected += 1
        else:
            self.labeled += 1
            if record.get("entropy") is not None:
                self.entropy_sum += record["entropy"]
                self.entropy_count += 1
        self.by_status[record["status"]] = self.by_status.get(record["status"], 0) + 1
        if record.get("gold_label") is not None:
            self.gold += 1
            self.correct += record.get("label") == record["gold_label"]

    def summary(self, out_path, rejects_path, models=None) -> dict:
        """The counts; with an API teacher that reports usage, its tokens and (with `models`' prices) their cost."""
        api = {}
        if self.usage:
            api["teacher_usage"] = dict(self.usage)
            if models is not None and (models.teacher_price_in or models.teacher_price_out):
                api["teacher_cost"] = usage_cost(self.usage, models)
                api["teacher_cost_per_request"] = api["teacher_cost"] / max(1, self.usage.get("requests", 1))
        return {
            **api,
            "total": self.labeled + self.rejected,
            "labeled": self.labeled,
            "rejected": self.rejected,
            "by_status": self.by_status,
            # Text replies cut at the reply limit, kept (task.truncated_replies = "keep") or rejected.
            "truncated": self.by_status.get(TRUNCATED, 0),
            "teacher_accuracy": self.correct / self.gold if self.gold else None,
            "gold_count": self.gold,
            "mean_label_entropy": self.entropy_sum / self.entropy_count if self.entropy_count else None,
            "output": str(out_path),
            "rejects": str(rejects_path),
        }


def summarize_labels(out_path, rejects_path, ids: list[str] | None = None, models=None) -> dict:
    """Counts by status and the teacher's accuracy against gold labels (of `ids`, when given)."""
    out_path, rejects_path = Path(out_path), Path(rejects_path)
    tally = LabelTally(ids).read(out_path, rejected=False).read(rejects_path, rejected=True)
    return tally.summary(out_path, rejects_path, models)
