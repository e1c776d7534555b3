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
    RUN/stages/<stage>.json            a finished stage's settings fingerprint and summary
    RUN/.lock                          held while a command works on the run

Why one place: the same paths were spelled in the pipeline, predict, export
and the notebook helpers, and "load the trained student of a run" was
written three times. A stage marker records the fingerprint (`io.fingerprint`)
of the settings the stage depended on; a rerun skips stages whose marker
matches and refuses (or, with force, redoes) those whose settings changed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .config import Config, config_from_dict
from .errors import PromptDistillError
from .io import DirectoryLock, atomic_write_json, fingerprint

STAGES = ("split", "label", "train", "eval")
# The folder each stage writes, under the run directory.
STAGE_OUTPUTS = {"split": "split", "label": "labels", "train": "train", "eval": "eval"}


class RunDir:
    """The files of one run directory, and the models they describe."""

    def __init__(self, path):
        self.path = Path(path)

    # -- layout -------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def synth_dir(self) -> Path:
        return self.path / "synth"

    def split_file(self, side: str) -> Path:
        """The inputs of one side of the split ('train' or 'heldout')."""
        return self.path / "split" / f"{side}.jsonl"

    def labels_file(self, side: str) -> Path:
        return self.path / "labels" / f"{side}.jsonl"

    @property
    def labels_summary(self) -> Path:
        return self.path / "labels" / "summary.json"

    @property
    def train_dir(self) -> Path:
        return self.path / "train"

    @property
    def adapter_dir(self) -> Path:
        return self.train_dir / "adapter"

    @property
    def metrics_path(self) -> Path:
        return self.train_dir / "metrics.jsonl"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def report_path(self) -> Path:
        return self.eval_dir / "report.json"

    @property
    def report_md(self) -> Path:
        return self.eval_dir / "report.md"

    def lock(self) -> DirectoryLock:
        """Held while a command works on this run: a second command on it fails at once."""
        return DirectoryLock(self.path / ".lock", "this run directory")

    # -- configuration ------------------------------------------------------

    def save_config(self, cfg: Config) -> None:
        atomic_write_json(self.config_path, cfg.to_dict())

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
        return config_from_dict(raw, source=self.config_path)

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
            labels = self.labels_file(side)
            for path in (labels, labels.with_name(labels.stem + ".rejects.jsonl")):
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
        return self.path / "stages" / f"{stage}.json"

    def state(self, stage: str, fingerprint: str) -> str:
        """'done' (finished with these settings), 'stale' (finished with other
        settings) or 'missing' (never finished: not run, or interrupted)."""
        m = self.marker(stage)
        if not m.exists():
            return "missing"
        try:
            old = json.loads(m.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise PromptDistillError("corrupt stage marker; delete it to redo this stage", path=m) from None
        return "done" if isinstance(old, dict) and old.get("fingerprint") == fingerprint else "stale"

    def mark_done(self, stage: str, fingerprint: str, summary: dict) -> None:
        atomic_write_json(self.marker(stage), {"fingerprint": fingerprint, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "summary": summary})

    def plan(self, fingerprints: dict[str, str], force: bool) -> list[str]:
        """The stages to run. Stale outputs are deleted (only with `force`);
        outputs of an interrupted stage are kept so it can resume."""
        states = {s: self.state(s, fingerprints[s]) for s in STAGES}
        stale = [s for s in STAGES if states[s] == "stale"]
        if stale and not force:
            raise PromptDistillError(
                f"stage '{stale[0]}' already ran here with different settings; use --force to redo it "
                "(and every later stage) or choose another --run-dir",
                path=self.path,
            )
        todo = next((i for i, s in enumerate(STAGES) if states[s] != "done"), len(STAGES))
        for s in STAGES[todo:]:
            self.marker(s).unlink(missing_ok=True)
        if stale:
            for s in STAGES[STAGES.index(stale[0]):]:
                shutil.rmtree(self.path / STAGE_OUTPUTS[s], ignore_errors=True)
        return list(STAGES[todo:])


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


def adapter_fingerprint(folder: Path) -> str:
    """A hash of an adapter folder's configuration and weights (train.init_adapter:
    a run started from an adapter is only valid for that adapter's weights)."""
    folder = Path(folder)
    return fingerprint(None, (folder / "adapter_config.json").read_bytes(), (folder / "adapter_model.safetensors").read_bytes())
