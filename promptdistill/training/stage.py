"""The train stage on a run directory: `promptdistill train`, and its Python twin `train_run`.

Everything the stage reads is checked, and the run claimed, before anything
is written: the labeled files exist and parse, the run directory is new,
empty or a run (`rundir.claim_run_dir`), no input lies among the run's
config.json and train/ (the adapter training starts from included), the
run's existing files are readable, train.max_length fits the student, and
its precision settings fit this machine (4-bit needs CUDA and bitsandbytes).
Only then is the run locked and its config.json written, in the layout
`run` writes, so `eval`, `predict` and `export` work on the folder.
"""

from __future__ import annotations

import contextlib
import shutil

from ..config import Config, save_config, task_settings
from ..errors import PromptDistillError
from ..inputs import check_max_length
from ..models import resolve_device
from ..overrides import check_training_precision
from ..io import check_file, check_paths, fingerprint, resume_or_refuse
from ..records import read_labeled
from ..rundir import STAGE_OUTPUTS, RunDir, claim_run_dir
from .checkpoint import checkpoint_settings
from .distributed import Distributed
from .init_adapter import init_adapter_folder
from .recipe import train_folder


def train_run(cfg: Config, labeled, run_dir, *, heldout=None, task_file=None, progress: bool = True, force: bool = False) -> dict:
    """Train the student of run directory `run_dir` on the labeled file `labeled`
    (held-out loss on `heldout`, a labeled file, if given); return the summary.
    A run already trained with other data or settings is refused, naming them,
    unless `force`, which discards its training and evaluation first.
    Under torchrun every process calls this; the first one writes."""
    labeled = check_file(labeled, "labeled file")
    heldout = check_file(heldout, "held-out file") if heldout else None
    run = RunDir(claim_run_dir(run_dir))
    check_paths({"--labeled": labeled, "--heldout": heldout, "the task file": task_file, "train.init_adapter": init_adapter_folder(cfg)},
                {"the run's config.json": run.config_path, "the run's train/ folder": run.train_dir})
    run.check_files()
    records = read_labeled(labeled)
    if not records:
        raise PromptDistillError("no labeled records", path=labeled)
    heldout_records = read_labeled(heldout) if heldout else None
    check_max_length(cfg)
    check_training_precision(cfg)
    settings = train_settings(cfg, records, heldout_records)
    # Under a launcher every process reads the files itself: they agree on what they read
    # (and on the training the run records) before any of them decides or discards anything.
    dist = Distributed(cpu=resolve_device(cfg.models.device) == "cpu")
    dist.agree({"labeled records": settings["records"], "held-out records": settings["heldout"],
                "settings": fingerprint(cfg.to_dict()), "the run's recorded training": fingerprint(run.stored_settings("train"))},
               "their data or settings")
    claim_training(run, settings, force=force, discard=False)  # refused here, nothing is written
    with run.lock() if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            # Again under the lock: another command may have trained this run since the check above.
            claim_training(run, settings, force=force, discard=True)
            save_config(cfg, run.config_path)
        summary = train_folder(cfg, records, run.train_dir, heldout=heldout_records, progress=progress)
        if dist.is_main:
            run.mark_done("train", settings, summary)
        return summary


def claim_training(run: RunDir, settings: dict, *, force: bool, discard: bool) -> None:
    """May this run be trained with `settings`? Its recorded training (the train stage's
    marker, `run`'s and `train`'s alike) with the same settings resumes; with others it
    is refused naming the keys, unless `force`. With `discard` (under the run's lock),
    what force discards, and the markers a new adapter makes stale, are removed:
    train/ and eval/ with their markers."""
    stored = run.stored_settings("train")
    if stored is None and (run.adapter_dir / "adapter_config.json").exists():
        stored = {}  # a finished adapter nobody recorded the settings of: not known to be this training
    changed = resume_or_refuse(stored, settings, force=force, what="this run was already trained",
                               discards="its training and evaluation (train/, eval/), or choose another --run-dir",
                               discard=lambda: None, path=run.path)
    if not discard:
        return
    for stage in ("train", "eval"):
        if changed:
            shutil.rmtree(run.path / STAGE_OUTPUTS[stage], ignore_errors=True)
        if stored is None or changed:
            # A new adapter: the evaluation of the old one no longer describes this run.
            run.marker(stage).unlink(missing_ok=True)


def train_settings(cfg: Config, records, heldout) -> dict:
    """What a run's training is only valid for (its stage marker): the checkpoints'
    settings (records, train settings, student, start weights), the held-out
    records and the task (what the targets and the prompt are)."""
    return {**checkpoint_settings(records, cfg), "task": task_settings(cfg.task),
            "heldout": fingerprint([[r.id, r.messages] for r in heldout or ()])}
