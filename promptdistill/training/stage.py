"""The train stage on a run directory: `promptdistill train`, and its Python twin `train_run`.

Everything the stage reads is checked, and the run claimed, before anything
is written: the labeled files exist and parse, the run directory is new,
empty or a run (`rundir.claim_run_dir`), no input lies among the run's
config.json and train/ (the adapter training starts from included), the
run's existing files are readable, and train.max_length fits the student.
Only then is the run locked and its config.json written, in the layout
`run` writes, so `eval`, `predict` and `export` work on the folder.
"""

from __future__ import annotations

import contextlib

from ..config import Config, save_config
from ..errors import PromptDistillError
from ..inputs import check_max_length
from ..io import check_file, check_paths
from ..records import read_labeled
from ..rundir import RunDir, claim_run_dir
from .distributed import launched_rank
from .init_adapter import init_adapter_folder
from .recipe import train_folder


def train_run(cfg: Config, labeled, run_dir, *, heldout=None, task_file=None, progress: bool = True) -> dict:
    """Train the student of run directory `run_dir` on the labeled file `labeled`
    (held-out loss on `heldout`, a labeled file, if given); return the summary.
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
    main_process = launched_rank() == 0
    with run.lock() if main_process else contextlib.nullcontext():
        if main_process:
            save_config(cfg, run.config_path)
        return train_folder(cfg, records, run.train_dir, heldout=heldout_records, progress=progress)
