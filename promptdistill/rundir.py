"""A run directory: one folder that holds everything a distillation run made.

Every command that reads or writes a run goes through `RunDir`, so the
layout is written down once, here:

    RUN/config.json                    the resolved configuration (what predict/export/eval read back)
    RUN/split/{train,heldout}.jsonl    the inputs of each side of the split
    RUN/labels/{train,heldout}.jsonl   the teacher's labels (+ .rejects.jsonl, .meta.json), summary.json
    RUN/train/                         metrics.jsonl, checkpoints/, adapter/, train_summary.json
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
from .io import DirectoryLock, atomic_write_json

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
        """The trained adapter folder (checked to exist)."""
        if not (self.adapter_dir / "adapter_config.json").exists():
            raise PromptDistillError("no trained adapter in this run directory; run the train stage first", path=self.adapter_dir)
        return self.adapter_dir

    def load_student(self, cfg: Config | None = None, *, device: str | None = None, dtype: str | None = None):
        """The trained student: the base model with this run's adapter (a PEFT model), as a `LoadedModel`."""
        from peft import PeftModel

        from .models import LoadedModel, load_model

        cfg = cfg or self.load_config()
        adapter = self.adapter()
        base = load_model(cfg.models.student, device or cfg.models.device, dtype or cfg.models.dtype)
        peft_model = PeftModel.from_pretrained(base.model, str(adapter)).eval()
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
