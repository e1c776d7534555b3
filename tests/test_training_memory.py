"""Training memory (training/memory.py, data.padding_pieces): a step runs
its micro-batch in pieces of similar length with the same result, and glibc
hands a step's freed activations back. The memory figures themselves are
benchmarks/train_memory.py's; these check that the mechanisms are in place."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import promptdistill.training.recipe as recipe
from conftest import read_jsonl, script_records
from promptdistill.training import memory
from promptdistill.training.data import PADDING_WASTE, by_length, padding_pieces, render_for_training
from test_training import _config


def _items(*lengths):
    return [SimpleNamespace(num_tokens=n) for n in lengths]


def test_padding_pieces_keep_every_item_in_order_and_pad_little():
    batch = _items(37, 38, 40, 45, 50, 52, 60, 61, 62, 70, 80, 90, 110, 150, 200, 272)
    pieces = padding_pieces(batch)
    assert [x for p in pieces for x in p] == batch
    for p in pieces:
        tokens = sum(x.num_tokens for x in p)
        assert len(p) == 1 or len(p) * max(x.num_tokens for x in p) <= (1 + PADDING_WASTE) * tokens
    assert len(pieces) > 1 and [len(p) for p in padding_pieces(_items(50, 50, 51, 52))] == [4]
    assert padding_pieces([]) == []
    records = script_records(3)  # on-policy items: the student's sample length is unknown, one piece
    assert padding_pieces(records) == [records]


def test_pieces_train_the_same_adapter_and_losses_as_whole_micro_batches(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    """The step's loss is a sum over items, so running it in pieces changes float rounding only."""
    records = script_records(16)
    cfg = _config(tiny_model_dir, max_steps=3, batch_size=8, eval_every=1)
    rendered, _ = render_for_training(records, tokenizer, 512)
    assert len(padding_pieces(by_length(rendered[:8]))) > 1  # the data does get cut
    seen = []
    monkeypatch.setattr(recipe, "padding_pieces", lambda batch: seen.append(len(padding_pieces(batch))) or padding_pieces(batch))
    recipe.train_student(cfg, records, tmp_path / "pieces", heldout=script_records(3, offset=50), progress=False)
    assert sum(seen) > len(seen)
    monkeypatch.setattr(recipe, "padding_pieces", lambda batch: [batch])
    recipe.train_student(cfg, records, tmp_path / "whole", heldout=script_records(3, offset=50), progress=False)

    a, b = (load_file(str(tmp_path / run / "adapter" / "adapter_model.safetensors")) for run in ("pieces", "whole"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5, rtol=1e-4), key
    assert any(a[key].abs().max() > 0 for key in a if "lora_B" in key)  # it did train
    metrics = [read_jsonl(tmp_path / run / "metrics.jsonl") for run in ("pieces", "whole")]
    for name in ("loss", "grad_norm", "heldout_loss"):
        got, want = ([m[name] for m in rows if name in m] for rows in metrics)
        assert got == pytest.approx(want, rel=1e-5), name
    assert [m.get("trained_tokens") for m in metrics[0]] == [m.get("trained_tokens") for m in metrics[1]]


def test_every_step_sets_the_mmap_threshold_and_trims(tmp_path, tiny_model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(recipe, "return_freed_memory", lambda: calls.append("threshold"))
    monkeypatch.setattr(recipe, "trim", lambda: calls.append("trim"))
    recipe.train_student(_config(tiny_model_dir, max_steps=2), script_records(8), tmp_path, progress=False)
    assert calls == ["threshold", "trim"] * 2


# In a fresh process, as a long-running one's heap may already hold a free block
# that fits (glibc maps a new block only when its heap cannot serve the request).
_PROBE = """
import ctypes, sys, torch
from promptdistill.training import memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
first = torch.ones(16 * 2**20 // 4)
del first  # glibc's dynamic threshold rises to 16 MiB
if sys.argv[1] == "set":
    assert memory.return_freed_memory()
before = libc.mallinfo2().hblkhd
activation = torch.ones(4 * 2**20 // 4)
mapped = libc.mallinfo2().hblkhd - before
del activation
print(mapped, libc.mallinfo2().hblkhd - before)
"""


def _glibc() -> bool:
    try:
        return hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="the mmap threshold is glibc's")
def test_with_the_threshold_set_a_freed_activation_goes_back_to_the_system():
    """After a large tensor is freed, glibc serves the next 4 MiB tensor from its heap (where
    it stays when freed); with return_freed_memory() it is mapped, and freeing unmaps it."""
    def probe(mode):
        out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(Path(memory.__file__).parents[2])})
        return [int(x) for x in out.stdout.split()]

    assert probe("default") == [0, 0]
    mapped, after_free = probe("set")
    assert mapped >= 4 * 2**20 and after_free == 0
