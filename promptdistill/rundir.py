"""A run directory: one folder that holds everything a distillation run made.

Every command that reads or writes a run goes through `RunDir`, so the
layout is written down once, here:

    RUN/config.json                    the resolved configuration (what predict/export/eval read back)
    RUN/synth/                         inputs written by synthesis (data.synthesize), its raw generations and report
    RUN/split/{train,heldout}.jsonl    the inputs of each side of the split
    RUN/labels/{train,heldout}.jsonl   the teacher's labels (+ .rejects.jsonl, .meta.json), summary.json
    RUN/train/                         metrics.jsonl, checkpoints/, adapter/, train_summary.json,
                                       general_mix.jsonl (data.mix_general)
    RUN/eval/                          report.json, report.md, report.html, *.png, predictions.jsonl
    RUN/stages/<stage>.json            a finished stage's settings, their fingerprint, and its summary
    RUN/.lock                          held while a command works on the run

Every entry is named once, in `RUN_ENTRIES` and the constants beside it;
the properties of `RunDir`, what the pipeline claims, and what counts as a
run's own (`check_outside_runs`) are read from them. A stage marker records
the settings the stage depended on (and their fingerprint); a rerun skips
stages whose marker matches and refuses, naming the changed keys
(`io.resume_or_refuse`), or with force redoes, those whose settings changed.

The claims on a run directory live here too: a run a command reads must be
a run (`check_run_dir`); a run `run` or `train` writes into must be new,
empty or already a run (`claim_run_dir`); and nothing may be written inside
a run from outside it (`check_outside_runs`), except a new folder directly in
the run an export is made from (RUN/merged keeps a run's things together)
and, from Python, a stage's own entry (labels/ for `label_inputs`, synth/
for `synthesize`, train/ for `train_student`), as the pipeline and a
notebook working on that run write them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from .config import Config, config_from_dict
from .errors import PromptDistillError
from .io import (DirectoryLock, atomic_write_json, check_no_symlinks, check_output_folder, changed_settings, fingerprint,
                 read_settings, real_path, resume_or_refuse)

STAGES = ("split", "label", "train", "eval")
# The folder each stage writes, under the run directory.
STAGE_OUTPUTS = {"split": "split", "label": "labels", "train": "train", "eval": "eval"}
CONFIG, LOCK, MARKERS, SYNTH = "config.json", ".lock", "stages", "synth"
# Everything a run directory holds of its own: nothing else may be written there.
RUN_ENTRIES = (CONFIG, LOCK, MARKERS, SYNTH, *STAGE_OUTPUTS.values())
# The sections of a promptdistill configuration (the tables of a task file, as a run's config.json holds them).
_RUN_SECTIONS = set(Config().to_dict())


class RunDir:
    """The files of one run directory, and the models they describe."""

    def __init__(self, path):
        self.path = Path(path)

    # -- layout -------------------------------------------------------------

    def entries(self) -> dict[str, Path]:
        """Every entry of the run (RUN_ENTRIES), by the name a refusal gives it."""
        return {f"the run's {name}": self.path / name for name in RUN_ENTRIES}

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    @property
    def synth_dir(self) -> Path:
        return self.path / SYNTH

    def split_file(self, side: str) -> Path:
        """The inputs of one side of the split ('train' or 'heldout')."""
        return self.path / STAGE_OUTPUTS["split"] / f"{side}.jsonl"

    def labels_file(self, side: str) -> Path:
        return self.path / STAGE_OUTPUTS["label"] / f"{side}.jsonl"

    def rejects_file(self, side: str) -> Path:
        """The teacher's answers to one side that the task did not accept (their status says why)."""
        return self.path / STAGE_OUTPUTS["label"] / f"{side}.rejects.jsonl"

    @property
    def labels_summary(self) -> Path:
        return self.path / STAGE_OUTPUTS["label"] / "summary.json"

    @property
    def train_dir(self) -> Path:
        return self.path / STAGE_OUTPUTS["train"]

    @property
    def adapter_dir(self) -> Path:
        return self.train_dir / "adapter"

    @property
    def metrics_path(self) -> Path:
        return self.train_dir / "metrics.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.path / STAGE_OUTPUTS["eval"]

    @property
    def report_path(self) -> Path:
        return self.eval_dir / "report.json"

    @property
    def report_md(self) -> Path:
        return self.eval_dir / "report.md"

    def check_no_links(self) -> None:
        """No entry of the run (RUN_ENTRIES), nor anything directly inside one, is a
        symlink: commands write there, and a run folder from someone else could
        link eval/ or labels/train.jsonl to a user's files to have them overwritten."""
        for name in RUN_ENTRIES:
            entry = self.path / name
            check_no_symlinks(entry, f"the run's {name}")
            if entry.is_dir():
                for inner in entry.iterdir():
                    check_no_symlinks(inner, f"the run's {name}/{inner.name}")

    def lock(self) -> DirectoryLock:
        """Held while a command works on this run: a second command on it fails at once."""
        return DirectoryLock(self.lock_path, "this run directory")

    # -- configuration ------------------------------------------------------

    def load_config(self) -> Config:
        """The configuration this run was made with (config.json)."""
        if not self.config_path.exists():
            raise PromptDistillError("not a run directory (no config.json)", path=self.path)
        try:
            raw = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PromptDistillError(f"corrupt run configuration ({e}); rerun the command that made this run", path=self.config_path) from None
        if not isinstance(raw, dict):
            raise PromptDistillError("corrupt run configuration (not a JSON object)", path=self.config_path)
        # The run's own record: made under --no-limits perhaps, so read without
        # the limits; it never grants trust_remote_code (only the flag does).
        models = raw.get("models")
        trusted = isinstance(models, dict) and models.get("trust_remote_code") is True
        cfg = config_from_dict(raw, source=self.config_path, limits=False, remote_code=trusted)
        cfg.models.trust_remote_code = False
        return cfg

    # -- models -------------------------------------------------------------

    def adapter(self) -> Path:
        """The trained adapter folder, checked to exist and to be readable: its
        adapter_config.json a JSON object, its weights a whole safetensors file."""
        if not (self.adapter_dir / "adapter_config.json").exists():
            raise PromptDistillError("no trained adapter in this run directory; run the train stage first", path=self.adapter_dir)
        check_adapter_folder(self.adapter_dir, "rerun the train stage (delete train/adapter first)")
        return self.adapter_dir

    def check_files(self) -> None:
        """Every file of the run a command reads back is readable, or one clear
        error names it and says what to do: stage markers, checkpoints'
        trainer_state.json, train/metrics.jsonl, the labels, and an interrupted
        evaluation's predictions.partial.jsonl. (config.json and the adapter are
        checked when read: `load_config`, `adapter`.)"""
        for stage in STAGES:
            if self.marker(stage).exists():
                _read_json_object(self.marker(stage), "corrupt stage marker; delete it to redo this stage")
        checkpoints = self.train_dir / "checkpoints"
        if checkpoints.is_dir():
            for step in sorted(checkpoints.glob("step-*")):
                state = step / "trainer_state.json"
                if state.exists():
                    _read_json_object(state, f"corrupt checkpoint; delete {step} to resume from an earlier one")
                    if (step / "adapter_model.safetensors").exists():
                        _check_safetensors(step / "adapter_model.safetensors", f"corrupt checkpoint; delete {step} to resume from an earlier one")
        if self.metrics_path.exists():
            _check_jsonl(self.metrics_path, "corrupt training metrics; delete train/metrics.jsonl (rerun the train stage to rewrite it)",
                         torn_ok=True)
        for side in ("train", "heldout"):
            for path in (self.labels_file(side), self.rejects_file(side)):
                if path.exists():
                    _check_jsonl(path, "corrupt labeled record; fix or delete this line (it is relabeled on rerun)", torn_ok=True)
        partial = self.eval_dir / "predictions.partial.jsonl"
        if partial.exists():
            _check_jsonl(partial, "corrupt interrupted evaluation; delete this file to evaluate from the start", torn_ok=True)

    def load_student(self, cfg: Config | None = None, *, device: str | None = None, dtype: str | None = None):
        """The trained student: the base model with this run's adapter (a PEFT model), as a `LoadedModel`."""
        from peft import PeftModel

        from .models import LoadedModel, load_model

        cfg = cfg or self.load_config()
        adapter = self.adapter()
        base = load_model(cfg.models.student, device or cfg.models.device, dtype or cfg.models.dtype)
        try:
            peft_model = PeftModel.from_pretrained(base.model, str(adapter)).eval()
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PromptDistillError(f"the adapter does not load onto {cfg.models.student!r} ({first[:200]}); "
                                     "rerun the train stage", path=adapter) from None
        return LoadedModel(peft_model, base.tokenizer, cfg.models.student, base.device)

    @staticmethod
    def base_of(student):
        """The base model under a loaded student: the same weights with the adapter
        switched off, so base and student are held in memory once."""
        from .models import AdapterDisabled, LoadedModel

        return LoadedModel(AdapterDisabled(student.model), student.tokenizer, student.name, student.device)

    # -- stages -------------------------------------------------------------

    def marker(self, stage: str) -> Path:
        return self.path / MARKERS / f"{stage}.json"

    def stored_settings(self, stage: str) -> dict | None:
        """The settings a finished stage recorded (None: never finished, not run or interrupted)."""
        return read_settings(self.marker(stage), key="settings", corrupt="corrupt stage marker; delete it to redo this stage")

    def mark_done(self, stage: str, settings: dict, summary: dict) -> None:
        atomic_write_json(self.marker(stage), {"settings": settings, "fingerprint": fingerprint(settings),
                                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary})

    def plan(self, settings: "dict[str, dict | Callable[[], dict]]", force: bool) -> list[str]:
        """The stages to run, given each stage's settings (a dict, or a function
        computing it, called only for a stage whose marker is compared: the train
        stage's settings hash the labeled records, read only once the labels are
        known to be current). The first stage finished with other settings is
        refused, naming the changed keys, unless `force`, which deletes its
        outputs and every later stage's; outputs of an interrupted stage are kept
        so it can resume."""
        stored = {s: self.stored_settings(s) for s in STAGES}
        done, stale, current = [], None, None
        for s in STAGES:
            if stored[s] is None:
                continue
            current = settings[s]() if callable(settings[s]) else settings[s]
            if changed_settings(stored[s], current):
                stale = s  # every later stage is redone with it: no need to compare theirs
                break
            done.append(s)
        if stale is not None:
            later = STAGES[STAGES.index(stale):]
            resume_or_refuse(stored[stale], current, force=force, what=f"stage '{stale}' already ran here",
                             discards="its outputs and every later stage's, or choose another --run-dir", path=self.path,
                             discard=lambda: [shutil.rmtree(self.path / STAGE_OUTPUTS[s], ignore_errors=True) for s in later])
        todo = next((i for i, s in enumerate(STAGES) if s not in done), len(STAGES))
        for s in STAGES[todo:]:
            self.marker(s).unlink(missing_ok=True)
        return list(STAGES[todo:])


# -- claims: what a command may read as a run, and write into one -------------------

def is_run_config(path) -> bool:
    """Whether `path` (a config.json) holds a promptdistill configuration."""
    try:
        raw = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and "task" in raw and set(raw) <= _RUN_SECTIONS


def looks_like_run(path) -> bool:
    """A folder some promptdistill command made a run of (possibly with a damaged config.json)."""
    p = Path(path)
    if not (p / CONFIG).is_file():
        return False
    return is_run_config(p / CONFIG) or any((p / sub).is_dir() for sub in (MARKERS, *STAGE_OUTPUTS.values()) if sub != "eval")


def check_run_dir(path, what: str = "run directory") -> Path:
    """A run directory a command reads (eval, predict, export): it exists, is a folder, and is a run."""
    p = Path(path)
    if not p.exists():
        raise PromptDistillError(f"{what} not found", path=p)
    if not p.is_dir():
        raise PromptDistillError(f"{what} is a file, expected a run directory", path=p)
    if not os.access(p, os.R_OK | os.X_OK):
        raise PromptDistillError(f"{what} cannot be read (permission denied)", path=p)
    if not (p / CONFIG).exists():
        raise PromptDistillError("not a run directory (no config.json); pass the folder `run` or `train` wrote", path=p)
    RunDir(p).check_no_links()
    return p


def check_outside_runs(path, what: str, *, own_run=None, own_entries: tuple[str, ...] = ()) -> None:
    """Refuse writing inside a run directory. Into `own_run` (the run an export
    is made from) only a new folder beside the run's own entries is allowed,
    e.g. RUN/merged: never into config.json, stages/, split/, labels/, train/ or eval/.
    `own_entries` are the entries of any run a stage's Python function writes
    itself (labels/ for `label_inputs`, train/ for `train_student`), as the
    pipeline and a notebook working on that run do."""
    real = real_path(path)
    for parent in real.parents:
        top = real.relative_to(parent).parts[0]
        if own_run is not None and parent == real_path(own_run):
            if top in RUN_ENTRIES:
                raise PromptDistillError(f"{what} is inside the run's own {top}; choose a path outside the run, "
                                         "or a new folder directly in it (such as RUN/merged)", path=path)
            continue
        if looks_like_run(parent) and top not in own_entries:
            raise PromptDistillError(f"{what} is inside the run directory {parent}; a run's files are written only by the "
                                     "commands that work on that run: choose a path outside it", path=path)


def claim_run_dir(path, what: str = "--run-dir") -> Path:
    """A run directory `run` or `train` will write into: new, empty, or already a run."""
    p = Path(path)
    if not (p / CONFIG).is_file():
        # A new run may not be made inside another run (its folders are that run's).
        check_outside_runs(p, what)
    if not check_output_folder(p, what):
        return p
    RunDir(p).check_no_links()
    config = p / CONFIG
    if config.exists():
        if config.is_file() and is_run_config(config):
            return p
        raise PromptDistillError("config.json is not a promptdistill configuration (corrupt, or another tool's); "
                                 "if this is a run, delete config.json and rerun, otherwise choose another --run-dir", path=config)
    # Left by a command that stopped before writing config.json (its lock), or
    # config.json being written right now (another process of a torchrun launch): ours too.
    other = sorted(e.name for e in p.iterdir()
                   if e.name != LOCK and not (e.name.startswith(f".{CONFIG}.") and e.name.endswith(".tmp")))
    if other:
        shown = ", ".join(other[:3]) + (" ..." if len(other) > 3 else "")
        raise PromptDistillError(f"{what} exists and is not a run directory (it holds {shown}); choose a new or empty folder", path=p)
    return p


# -- reading a run's files back -----------------------------------------------------

def _read_json_object(path: Path, what_to_do: str) -> dict:
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    except OSError as e:
        raise PromptDistillError(f"cannot be read ({e.strerror})", path=path) from None
    if not isinstance(obj, dict):
        raise PromptDistillError(what_to_do, path=path)
    return obj


def _check_jsonl(path: Path, what_to_do: str, *, torn_ok: bool) -> None:
    """Every line a JSON object; a last line without its newline (cut by a kill) is allowed when `torn_ok`."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PromptDistillError(f"cannot be read ({e.strerror})", path=path) from None
    lines = data.split(b"\n")
    last = len(lines)
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            ok = isinstance(json.loads(line.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok and not (torn_ok and n == last):
            raise PromptDistillError(what_to_do, path=path, line=n)


def _check_safetensors(path: Path, what_to_do: str) -> None:
    """A whole safetensors file: an 8-byte header length, a JSON header, and
    exactly the data the header describes (read without torch)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = json.loads(f.read(n).decode("utf-8")) if 0 < n <= size - 8 else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    except OSError as e:
        raise PromptDistillError(f"cannot be read ({e.strerror})", path=path) from None
    ok = isinstance(header, dict)
    if ok:
        try:
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (TypeError, KeyError, IndexError, ValueError):
            ends = None
        ok = ends is not None and (max(ends, default=0) == size - 8 - n)
    if not ok:
        raise PromptDistillError(f"corrupt or incomplete weights file; {what_to_do}", path=path)


def check_adapter_folder(folder: Path, what_to_do: str) -> None:
    """A PEFT adapter folder readable without loading it: its config a JSON object, its weights whole."""
    config = _read_json_object(folder / "adapter_config.json", f"corrupt adapter configuration; {what_to_do}")
    if "peft_type" not in config:
        raise PromptDistillError(f"not a PEFT adapter configuration (no peft_type); {what_to_do}", path=folder / "adapter_config.json")
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        raise PromptDistillError(f"adapter weights missing (adapter_model.safetensors); {what_to_do}", path=folder)
    _check_safetensors(weights, what_to_do)


def finished_adapter(run, what: str) -> Path:
    """The adapter run directory `run` finished training (RUN/train/adapter), or one
    line, naming `what` asked for it, saying there is none."""
    try:
        adapter = RunDir(check_run_dir(run)).adapter_dir
    except PromptDistillError as e:
        raise PromptDistillError(f"{what}: {e.message}", path=e.path) from None
    if not (adapter / "adapter_config.json").is_file():
        raise PromptDistillError(f"{what}: this run has no finished adapter (train/adapter); finish its train stage first, "
                                 "or pass --init-adapter FOLDER", path=run)
    return adapter


def adapter_fingerprint(folder: Path) -> str:
    """A hash of an adapter folder's configuration and weights (train.init_adapter:
    a run started from an adapter is only valid for that adapter's weights)."""
    folder = Path(folder)
    return fingerprint(None, (folder / "adapter_config.json").read_bytes(), (folder / "adapter_model.safetensors").read_bytes())
