"""GGUF: the merged student as one file for llama.cpp, Ollama and LM Studio.

The file is written with the `gguf` package's writer and its tensor-name
maps, following the conventions of llama.cpp's own converter
(convert_hf_to_gguf.py) for the families supported here:

- **Llama** (SmolLM2 is one): llama.cpp's rotary embedding pairs the
  dimensions of each head as (0, 1), (2, 3), ... where transformers pairs the
  two halves of the head, so the rows of the query and key projections are
  reordered head by head (`_interleave_heads`); transformers' GGUF loader
  undoes the same reordering, which is what the round-trip test relies on.
- **Qwen2**: same layout as transformers (no reordering), with the q/k/v
  biases.

The tokenizer goes in as llama.cpp's "gpt2" (byte-level BPE) vocabulary:
every id's token and kind, the merges and special ids (`gguf.SpecialVocab`),
the chat template, and the name of the pre-tokenizer llama.cpp must split
text with. That name cannot be read from the tokenizer, so it is inferred
from the pre-tokenizer's definition for the ones known here (`_pre_tokenizer`)
and anything else is refused rather than written under a wrong name, which
llama.cpp would load silently and tokenize differently.

Types: `f32` keeps every weight as trained (merged in float32), `f16` halves
the file, `q8_0` quarters it (llama.cpp's 8-bit blocks of 32). Norms and
biases stay float32 in every type, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import PromptDistillError

GGUF_TYPES = ("f16", "q8_0", "f32")
SUPPORTED_FAMILIES = ("llama", "qwen2")
# The Qwen2 pre-tokenizer's split pattern (tokenizer.json of the Qwen2 models).
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def check_gguf_type(gguf_type: str) -> None:
    if gguf_type not in GGUF_TYPES:
        raise PromptDistillError(f"must be one of {', '.join(GGUF_TYPES)}; got {gguf_type!r}", field="--gguf-type")


def check_gguf_model(config, tokenizer) -> str:
    """The preflight of a GGUF export, before anything is merged or written: the model's
    family, rope and tokenizer are ones this writer knows; returns the pre-tokenizer name."""
    family = getattr(config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        raise PromptDistillError(f"GGUF export supports the {' and '.join(SUPPORTED_FAMILIES)} model families; "
                                 f"the student is {family!r}", field="--gguf")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") != "default":
        raise PromptDistillError(f"GGUF export supports plain rotary embeddings; the student uses rope_type "
                                 f"{rope.get('rope_type')!r}", field="--gguf")
    return _pre_tokenizer(tokenizer)


def _rope_parameters(config) -> dict:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    return {**rope, "rope_theta": theta}


def _pre_tokenizer(tokenizer) -> str:
    """llama.cpp's name for how this byte-level BPE tokenizer splits text before merging."""
    if not getattr(tokenizer, "is_fast", False):
        raise PromptDistillError("GGUF export needs a fast (tokenizer.json) tokenizer", field="--gguf")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if (spec.get("model") or {}).get("type") != "BPE":
        raise PromptDistillError("GGUF export supports byte-level BPE tokenizers only", field="--gguf")
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's split (the packaged SmolLM2's tokenizer as transformers reads it from its GGUF)
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"  # GPT-2's split with every digit on its own (SmolLM, SmolLM2)
    if kinds == ["Split", "ByteLevel"] and (parts[0].get("pattern") or {}).get("Regex") == _QWEN2_SPLIT:
        return "qwen2"
    raise PromptDistillError(f"GGUF export does not know llama.cpp's name for this tokenizer's pre-tokenizer ({kinds}); "
                             "the known ones are GPT-2's, SmolLM2's and Qwen2's", field="--gguf")


def _interleave_heads(weight, n_head: int):
    """Reorder a q/k projection's rows from transformers' rotary layout (halves) to llama.cpp's (pairs)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _vocab(tokenizer, vocab_size: int):
    """Tokens and token kinds for every id below vocab_size, as llama.cpp's gpt2 vocabulary holds them."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    tokens, kinds = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            kinds.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            kinds.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            kinds.append(gguf.TokenType.NORMAL)
    return tokens, kinds


def write_gguf(model, tokenizer, tokenizer_dir: Path, path: Path, gguf_type: str, name: str) -> Path:
    """Write `model` (a merged transformers causal LM) and its tokenizer, saved in
    `tokenizer_dir`, as a GGUF file at `path`."""
    import gguf
    import numpy as np
    import torch

    check_gguf_type(gguf_type)
    config = model.config
    pre = check_gguf_model(config, tokenizer)
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[config.model_type]
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}

    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(float(_rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(file_type[gguf_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tokens, kinds = _vocab(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise PromptDistillError("the tokenizer has no BPE merges to write", field="--gguf")
    special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)

    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when there is no output tensor
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise PromptDistillError(f"GGUF export does not know where the tensor {hf_name!r} goes", field="--gguf")
        data = tensor.detach().to(torch.float32).cpu()
        if hf_name.endswith("q_proj.weight") and config.model_type == "llama":
            data = _interleave_heads(data, n_head)
        elif hf_name.endswith("k_proj.weight") and config.model_type == "llama":
            data = _interleave_heads(data, n_kv)
        data = data.numpy()
        if data.ndim < 2 or gguf_type == "f32":
            writer.add_tensor(gguf_name, data.astype(np.float32))
        elif gguf_type == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gguf_name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:  # f16, and rows q8_0's blocks do not divide (llama.cpp's converter does the same)
            writer.add_tensor(gguf_name, data.astype(np.float16))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
