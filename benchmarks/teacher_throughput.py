"""Teacher labeling throughput: the naive loop against promptdistill's fast path.

Labels the same inputs of the example data set with the packaged
SmolLM2-135M-Instruct, greedy decoding, two ways in one run:

  (a) naive: one full-prompt request per input, as the seed tutorial does
      (label_inputs with reuse_prefix=False, batch_size=1);
  (b) fast: the shared prompt prefix runs once, inputs run in batches on top
      of its cache (label_inputs defaults).

It checks that both give identical replies and labels, prints inputs/s for
each, does the same for `choose` mode, and prints the generate-mode ratio
(fast / naive) as its last line. The two are measured interleaved (the naive
loop in --rounds slices, each followed by one fast run over all inputs), so a
shared machine's changes of speed over minutes hit both alike.

When vLLM is installed (`make test-vllm` builds .venv-vllm) a third column labels the
same inputs with vLLM's offline engine (prefix caching on, float32,
`enforce_eager` on CPU); its engine start is timed and printed apart, and
its answers are checked against the fast path's (replies equal; choose-mode
labels equal and distributions within 1e-4). Without vLLM the column is
left out with a note.

    .venv/bin/python benchmarks/teacher_throughput.py [--n 64] [--batch-size 64] [--rounds 4]
    .venv-vllm/bin/python benchmarks/teacher_throughput.py      # with the vLLM column
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptdistill.config import load_config  # noqa: E402
from promptdistill.records import read_inputs  # noqa: E402
from promptdistill.split import subsample  # noqa: E402
from promptdistill.labeling import label_inputs  # noqa: E402
from promptdistill.teachers.local import LocalTeacher  # noqa: E402


def timed_labels(examples, cfg, teacher, out: Path, mode: str, **kwargs):
    """Label `examples` into a fresh `out`; return (seconds, records by id)."""
    if isinstance(teacher, LocalTeacher):
        teacher = LocalTeacher(teacher.loaded)  # same weights, no cache kept: each run pays for its prompt prefix
    t0 = time.perf_counter()
    label_inputs(cfg, examples, teacher, out, mode=mode, force=True, progress=False, **kwargs)
    seconds = time.perf_counter() - t0
    records = {}
    for path in (out, out.with_name(out.stem + ".rejects.jsonl")):
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                records[r["id"]] = r
    return seconds, records


def interleaved(examples, cfg, teacher, tmp: Path, mode: str, rounds: int, batch_size):
    """Naive and fast inputs/s measured over the same stretch of time.

    The naive loop labels the inputs in `rounds` slices; after each slice the
    fast path labels all of them. A shared machine speeds up and slows down
    over minutes, and this way both columns see the same stretch of it.
    Returns (naive rate, naive records, fast rate, list of each fast run's records).
    """
    naive_s, fast_s, naive, fast_runs = 0.0, 0.0, {}, []
    for r in range(rounds):
        part = examples[r * len(examples) // rounds : (r + 1) * len(examples) // rounds]
        seconds, records = timed_labels(part, cfg, teacher, tmp / f"{mode}-naive-{r}.jsonl", mode, reuse_prefix=False, batch_size=1)
        naive_s += seconds
        naive.update(records)
        seconds, records = timed_labels(examples, cfg, teacher, tmp / f"{mode}-fast-{r}.jsonl", mode, batch_size=batch_size)
        fast_s += seconds
        fast_runs.append(records)
    return len(examples) / naive_s, naive, rounds * len(examples) / fast_s, fast_runs


def start_vllm(model: str):
    """vLLM's offline engine for the third column, or None (with a note) when vLLM is not installed."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vllm column: left out (vLLM is not installed; see the README, \"Labeling at scale\")")
        return None
    from promptdistill.teachers.vllm_engine import VllmTeacher

    t0 = time.perf_counter()
    options = {} if torch.cuda.is_available() else {"max_model_len": 2048, "enforce_eager": True}
    teacher = VllmTeacher(model, dtype="float32", options=options)
    print(f"vllm column: engine started in {time.perf_counter() - t0:.0f} s (not counted in its inputs/s), options {options}")
    return teacher


def agree(a: dict, b: dict) -> bool:
    """Same reply and label; choose-mode distributions within 1e-4 (vLLM's kernels sum in another order)."""
    if (a["teacher_reply"], a["label"]) != (b["teacher_reply"], b["label"]):
        return False
    if a["label_probs"] is None:
        return b["label_probs"] is None
    return all(abs(a["label_probs"][k] - b["label_probs"][k]) <= 1e-4 for k in b["label_probs"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="inputs to label")
    p.add_argument("--batch-size", type=int, help="inputs per batch for the fast path (default: the library's, 64)")
    p.add_argument("--rounds", type=int, default=4,
                   help="the naive loop runs in this many slices, each followed by a full fast run (see `interleaved`)")
    p.add_argument("--task", default=str(ROOT / "examples/language_id/task.toml"))
    args = p.parse_args()

    cfg = load_config(args.task)
    examples = subsample(read_inputs(cfg.resolve_path(cfg.data.inputs)), args.n, seed=0)
    teacher = LocalTeacher.load(cfg.models.teacher, "cpu", "float32")
    print(f"{len(examples)} inputs, teacher {cfg.models.teacher}, torch threads {torch.get_num_threads()}, greedy")
    vllm_teacher = start_vllm(cfg.models.teacher)
    ok = True
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for mode in ("choose", "generate"):
            naive_rate, naive, fast_rate, fast_runs = interleaved(examples, cfg, teacher, tmp, mode, args.rounds, args.batch_size)
            fast = fast_runs[0]
            same = all(run.keys() == naive.keys() for run in fast_runs) and all(
                (naive[i]["teacher_reply"], naive[i]["label"]) == (run[i]["teacher_reply"], run[i]["label"]) for run in fast_runs for i in naive
            )
            parsed = sum(r["status"] == "ok" for r in fast.values())
            ok &= same
            ratios[mode] = fast_rate / naive_rate
            column = ""
            if vllm_teacher is not None:
                vllm_s, by_vllm = timed_labels(examples, cfg, vllm_teacher, tmp / f"{mode}-vllm.jsonl", mode)
                vllm_rate = len(examples) / vllm_s
                agrees = by_vllm.keys() == fast.keys() and all(agree(by_vllm[i], fast[i]) for i in fast)
                ok &= agrees
                column = f" | vllm {vllm_rate:7.3f} inputs/s, same answers: {agrees}"
            print(f"{mode:8s} naive {naive_rate:7.3f} inputs/s | fast {fast_rate:7.3f} inputs/s | "
                  f"ratio {ratios[mode]:5.1f}x | identical labels: {same} | parsed {parsed}/{len(fast)}{column}")
    if not ok:
        print("ERROR: the fast path changed some answers", file=sys.stderr)
    print(f"generate-mode ratio (fast / naive): {ratios['generate']:.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
