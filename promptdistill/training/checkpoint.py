"""Training checkpoints: everything needed to continue a run exactly.

A checkpoint folder `checkpoints/step-NNNNNN/` holds

    adapter_config.json, adapter_model.safetensors   the PEFT adapter (loadable on its own)
    optimizer.safetensors                            AdamW moments and the torch RNG state
    trainer_state.json                               step, scheduler state, losses, settings

Tensors are stored with safetensors only, so loading a checkpoint never runs
code from it. A folder is written under a temporary name and renamed into
place, so a checkpoint is either whole or absent. The position in the data
is not stored: the batches of a run are a pure function of the seed, so
resuming at step N skips the first N batches. A checkpoint is resumed only
under the settings it records (`checkpoint_settings`); one made with others
is removed and training starts over (`io.resume_or_refuse` with force: the
stage's own settings are guarded by the run's stage marker).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import Config, reply_filter_settings, training_settings
from ..io import atomic_directory, atomic_write_json, atomic_write_text, fingerprint
from ..rundir import adapter_fingerprint
from .precision import autocast_name


def checkpoint_settings(records, cfg: Config, general_mix: list[dict] | None = None) -> dict:
    """What a checkpoint is only valid for, by name: the records and their targets,
    the training settings, the student, the weights training started from
    (train.init_adapter, by its weights: retrained in place it is another start,
    moved the same one), the general items mixed in (data.mix_general,
    `general_mix` the rows of general_mix.py's file) and the precision the base
    is held and run in (models.load_in_4bit; train.autocast as resolved on this
    machine: "auto" is bf16 on one GPU and none on a CPU). The precision keys
    appear only when they are on: off, they change nothing, and runs trained
    before they existed stay valid."""
    train = training_settings(cfg.train)
    train.pop("init_adapter", None)
    if autocast_name(cfg) == "bf16":
        train["autocast"] = "bf16"
    return {
        "records": fingerprint([[r.id, r.status, r.messages] for r in records]),
        "train": train,
        "student": cfg.models.student,
        "init_adapter": adapter_fingerprint(cfg.resolve_path(cfg.train.init_adapter)) if cfg.train.init_adapter else None,
        "mix_general": cfg.data.mix_general,
        "general_items": fingerprint([[r["id"], r["reply"], r["stopped"]] for r in general_mix or []]),
        **reply_filter_settings(cfg),
        **({"load_in_4bit": True} if cfg.models.load_in_4bit else {}),
    }


def checkpoint_dir(run_dir, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(run_dir, step: int, model, optimizer, scheduler, settings: dict, extra: dict) -> Path:
    from safetensors.torch import save_file

    target = checkpoint_dir(run_dir, step)
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        opt = optimizer.state_dict()
        tensors, scalars = {"rng.torch": torch.get_rng_state()}, {}
        for index, state in opt["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{index}.{key}"] = value
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        atomic_write_json(tmp / "trainer_state.json", {
            "step": step,
            "settings": settings,
            "param_groups": opt["param_groups"],
            "optimizer_scalars": scalars,
            "scheduler": scheduler.state_dict(),
            **extra,
        })
    return target


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint folder (temporary folders are ignored)."""
    folder = Path(run_dir) / "checkpoints"
    found = sorted(p for p in folder.glob("step-*") if (p / "trainer_state.json").exists()) if folder.exists() else []
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore adapter weights, optimizer, scheduler and RNG; return trainer_state.json."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    device = next(model.parameters()).device
    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors"), device=str(device)))
    tensors = load_file(str(path / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    per_param: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        per_param.setdefault(int(index), {})[key] = value.to(device) if key != "step" else value
    for name, value in state["optimizer_scalars"].items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    return state


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric lines of steps up to `step` (all of them are redone after it)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and _step_of(line) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 60  # a torn line: drop it
