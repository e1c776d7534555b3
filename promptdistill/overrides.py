"""A task file as a command runs it: `--set` overrides and flag settings applied,
and the models it names checked against this machine before anything is written.

The command line's flags map to settings in one table (cli.FLAG_SETTINGS);
this module applies the resulting "section.key" values, so the Python API
(`load_task_config(path, ["train.max_steps=4"])`) reads a task file exactly
as the commands do.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from .config import HTTP_BACKENDS, Config, check_device, config_from_dict, load_config
from .errors import PromptDistillError
from .io import check_model_folder


def load_task_config(task_file, overrides=(), settings: dict | None = None, *, limits: bool = True) -> Config:
    """The task file with `overrides` ("SECTION.KEY=VALUE", VALUE read as TOML, falling
    back to a plain string) and then `settings` ("section.key" -> value) applied, its
    models checked (`check_models`). Only `settings` (a flag, not the file or --set)
    may grant models.trust_remote_code; `limits` off lifts config.LIMITS."""
    path = Path(task_file)
    cfg = load_config(path, limits=limits)
    raw = cfg.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise PromptDistillError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        if section not in raw:
            raise PromptDistillError(f"unknown section {section!r}", field=key)
        raw[section][name] = _toml_value(value)
    settings = settings or {}
    for key, value in settings.items():
        section, name = key.split(".")
        raw[section][name] = value
    base_dir = cfg.base_dir
    cfg = config_from_dict(raw, source=f"{path} (with --set overrides)" if overrides else path, limits=limits,
                           remote_code=settings.get("models.trust_remote_code") is True)
    cfg.base_dir = base_dir
    check_models(cfg.models)
    return cfg


def flag_settings(values: dict, table: dict[str, str], conversions: dict) -> dict:
    """The settings ("section.key" -> value) the given flags stand for: `values` by
    flag name (argparse's dest; None or False: not given), `table` the flag ->
    setting table, `conversions` how a flag's value becomes its setting's."""
    return {key: conversions.get(flag, lambda v: v)(values[flag]) for flag, key in table.items()
            if values.get(flag) is not None and values.get(flag) is not False}


def count(minimum: int):
    """An argparse type for an integer flag of at least `minimum`: `--batch-size -1`
    or `--limit -3` is refused on the command line instead of labeling nothing, or
    silently dropping the last inputs (a negative slice)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, got {value}")
        return value

    parse.__name__ = "count"  # argparse names the type in its messages
    return parse


def _toml_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def check_models(models) -> None:
    """Models given as local folders must hold a model (a server's teacher is a name, not checked),
    and a device asked for by name must be on this machine, before anything is written."""
    if models.teacher_backend not in HTTP_BACKENDS:
        check_model_folder(models.teacher, "models.teacher")
    check_model_folder(models.student, "models.student")
    check_device_present(models.device, "models.device")


def check_device_present(device: str | None, field: str) -> None:
    """`device` (checked in form already) is on this machine; torch is imported only for a named accelerator."""
    if device not in (None, "auto", "cpu"):
        from .models import resolve_device

        resolve_device(device, field)


def check_training_precision(cfg: Config) -> None:
    """What the student trains in is possible on this machine, before anything is written:
    models.load_in_4bit needs bitsandbytes and CUDA (models.check_load_in_4bit), and
    train.autocast = "bf16" on a CUDA device needs one with bf16. Only the commands
    that train call it: the 4-bit setting of a run trained on a GPU does not stop
    its evaluation or export on a CPU (they load the base in models.dtype)."""
    from .models import check_load_in_4bit, resolve_device

    if cfg.models.load_in_4bit:
        check_load_in_4bit(cfg.models.device)
    if cfg.train.autocast == "bf16" and resolve_device(cfg.models.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_bf16_supported():
            raise PromptDistillError("bf16 autocast needs a GPU with bfloat16 support, and this one has none; "
                                     "set train.autocast = \"none\"", field="train.autocast")


def check_device_flag(device: str | None, field: str) -> None:
    """A --device flag (None: not given): well-formed and on this machine."""
    if device is not None:
        check_device(device, field_name=field)
        check_device_present(device, field)
