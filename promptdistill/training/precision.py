"""How the student's weights and activations are held while it trains: 4-bit
base weights, activation checkpointing, bfloat16 autocast.

- `models.load_in_4bit`: the base loads in NF4 (models.nf4_config) and goes
  through peft's prepare_model_for_kbit_training before LoRA wraps it: the
  few weights left unquantised (norms, embeddings) become float32 and every
  base weight is frozen. Only the student being trained is quantised.
- `train.gradient_checkpointing`: each decoder layer's activations are
  recomputed in the backward pass instead of kept (transformers' activation
  checkpointing, non-reentrant), with PEFT's input-grads hook so the
  recomputed layers see an input that needs gradients. The same gradients,
  within float rounding; less memory, more compute.
- `train.autocast`: the forward passes of training run under torch.autocast
  in bfloat16. Weights, gradients and the optimiser state stay float32;
  matrix products run in bf16, about half the activation memory and, on a GPU
  with bf16 units, faster. "auto" turns it on where the weights that train
  are float32 on a CUDA device that has bf16; "bf16" asks for it anywhere
  (CPUs included); "none" never.

Autocast changes the numbers an adapter is trained with, so the resolved
choice is part of the checkpoint settings (checkpoint.checkpoint_settings);
checkpointing does not, and may change between a run and its resume.
"""

from __future__ import annotations

import contextlib

import torch

from ..compat import enable_activation_checkpointing
from ..config import Config
from ..models import resolve_device, resolve_dtype


def autocast_dtype(cfg: Config, device: str | None = None):
    """torch.bfloat16 where the forward passes of training run under autocast, else None.

    `device` is where the student trains (default: models.device resolved)."""
    choice = cfg.train.autocast
    if choice == "none":
        return None
    if choice == "bf16":
        return torch.bfloat16
    device = resolve_device(device or cfg.models.device)
    trains_float32 = cfg.models.load_in_4bit or resolve_dtype(cfg.models.dtype, device) == torch.float32
    if device.startswith("cuda") and trains_float32 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast_name(cfg: Config) -> str:
    """The resolved autocast ("bf16" or "none"), as checkpoints record it."""
    return "bf16" if autocast_dtype(cfg) is not None else "none"


def autocast(dtype, device: str):
    """The context the training forward passes run in (a no-op for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def prepare_base(base, cfg: Config):
    """The loaded base made ready for LoRA: prepared for k-bit training when it is
    quantised, activation checkpointing on when train.gradient_checkpointing."""
    if cfg.models.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        # Checkpointing is turned on below, in the one form used with or without 4-bit.
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    if cfg.train.gradient_checkpointing:
        enable_activation_checkpointing(base)
        # PEFT's input-grads hook: the embeddings are frozen, and reentrant checkpointing
        # (which a model's own override may still use) reaches the LoRA weights inside
        # a layer only when that layer's input needs grad.
        base.enable_input_require_grads()
    return base
