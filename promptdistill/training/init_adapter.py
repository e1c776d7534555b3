"""Where the student's LoRA starts: fresh adapters, or a trained one (train.init_adapter).

On-policy training learns from the student's own samples, so it can only
refine what the student already does: started from the untrained base,
which never writes the task's answer format, it has nothing to sharpen
(BENCHMARKS.md, "Training losses"). `train.init_adapter` (`--init-from RUN`
on the command line) starts instead from a trained adapter, such as an sft
or kd run's RUN/train/adapter, with any loss.

The adapter's own LoRA shape is used (rank, alpha, target modules, and
whatever else its adapter_config.json says): its weights only fit that
shape. The task file's lora_rank, lora_alpha and target_modules are then
not used, and one line says so when they differ. lora_dropout is a training
setting rather than part of the shape, so the task file's applies.

The adapter is only read. The path resolves against the task file's folder,
like data.inputs, and is checked with the command's other inputs before
anything is written (`init_adapter_folder`, called by cli.py and
pipeline.run_pipeline, which also refuse an adapter inside the run directory
that training writes).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Config, TrainConfig
from ..errors import PromptDistillError
from ..rundir import check_adapter_folder

_WHAT_TO_DO = "train.init_adapter names a trained adapter folder, such as RUN/train/adapter (--init-from RUN)"


def init_adapter_folder(cfg: Config) -> Path | None:
    """train.init_adapter resolved against the task file's folder and checked to be
    a whole, readable PEFT LoRA adapter folder; None when it is not set."""
    if cfg.train.init_adapter is None:
        return None
    folder = cfg.resolve_path(cfg.train.init_adapter)
    if not folder.exists():
        raise PromptDistillError(f"init adapter not found; {_WHAT_TO_DO}", path=folder, field="train.init_adapter")
    if not folder.is_dir():
        raise PromptDistillError(f"init adapter is a file; {_WHAT_TO_DO}", path=folder, field="train.init_adapter")
    if not (folder / "adapter_config.json").is_file():
        raise PromptDistillError(f"not an adapter folder (no adapter_config.json); {_WHAT_TO_DO}", path=folder,
                                 field="train.init_adapter")
    check_adapter_folder(folder, _WHAT_TO_DO)
    peft_type = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("peft_type")
    if peft_type != "LORA":
        raise PromptDistillError(f"a {peft_type} adapter; training continues LoRA adapters only", path=folder,
                                 field="train.init_adapter")
    return folder


def init_adapter_model(base, folder: Path, train: TrainConfig, say=print):
    """`base` (a transformers model) with the adapter in `folder` loaded trainable:
    its own LoRA shape, the task file's lora_dropout. Says in one line (`say`) when
    the task file asks for another shape than the adapter has."""
    from peft import PeftConfig, PeftModel

    wanted = targeted_modules(base, train.target_modules)  # before loading: the adapter adds modules of its own
    config = PeftConfig.from_pretrained(str(folder))
    config.lora_dropout = train.lora_dropout
    try:
        # Read straight onto the student's device (peft would read onto its default device first).
        model = PeftModel.from_pretrained(base, str(folder), config=config, is_trainable=True,
                                          torch_device=str(next(base.parameters()).device))
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PromptDistillError(f"the init adapter does not load onto the student ({first[:200]}); it must be an adapter "
                                 "of the same base model as models.student", path=folder, field="train.init_adapter") from None
    adapted = adapted_modules(model)
    if (config.r, config.lora_alpha, adapted) != (train.lora_rank, train.lora_alpha, wanted):
        say(f"train.init_adapter: training the adapter's own LoRA shape (rank {config.r}, alpha {config.lora_alpha}, "
            f"{len(adapted)} modules), not the task file's (lora_rank {train.lora_rank}, lora_alpha {train.lora_alpha}, "
            f"target_modules {train.target_modules!r}: {len(wanted)} modules)")
    return model


def targeted_modules(base, target_modules) -> frozenset[str]:
    """The names of the modules of `base` that LoRA with `target_modules` adapts,
    matched as peft matches them: every linear layer but the output layer for
    "all-linear", a full match of the regex for another string, the name or
    its last dotted parts for a list."""
    import re

    import torch

    if target_modules == "all-linear":
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        return frozenset(name for name, module in base.named_modules()
                         if isinstance(module, torch.nn.Linear) and module is not head)
    names = [name for name, _ in base.named_modules() if name]
    if isinstance(target_modules, str):
        return frozenset(name for name in names if re.fullmatch(target_modules, name))
    return frozenset(name for name in names if any(name == t or name.endswith("." + t) for t in target_modules))


def adapted_modules(peft_model) -> frozenset[str]:
    """The names (in the base model) of the modules that carry a LoRA layer."""
    from peft.tuners.lora import LoraLayer

    base = peft_model.get_base_model()
    return frozenset(name for name, module in base.named_modules() if isinstance(module, LoraLayer))
