"""GPU check: the pipeline end to end on CUDA, and the labeling throughput table.

Made for a lent GPU machine with no network (see ../shared/gpu/README.md for
the worked example this follows): weights cannot travel there, so the models
are random weights of real shapes built on the device, with SmolLM2's
tokenizer (whose files do travel). Random weights say nothing about answer
quality; they measure speed and whether the code runs on CUDA. In bfloat16
their nearly flat logits make greedy answers flip between batch shapes, so
there the table reports the share of equal answers rather than failing.

Two parts, each in its own process (a failure in one leaves the others' results):

1. pipeline: `promptdistill run` on the example task with a small random
   model as teacher and student (label, train, eval on CUDA), then
   `export --merged`;
2. throughput: `benchmarks/teacher_throughput.py` for the 135m shape in
   float32 and the 1.5b and 8b shapes in bfloat16, at the language-identification prompt and
   with `--prompt-repeat 8` (about 3.4k prompt tokens), choose and generate
   modes: one request at a time, ours (models.prefix_attention = "auto",
   expand on CUDA), cascade, expand, plain batched generate, and
   transformers' generate_batch (marked unavailable where the transformers
   there lacks it); inputs/s per column in results.json (`rates`).

Results go to $OUT (gpu.log, results.json). Not a CI step; the whole check
is sized for a few minutes on one H200.

    # on the device, from the repository root, with the tokenizer files and (where the
    # device's transformers is older than ours) the wheels it needs beside it:
    python3 benchmarks/gpu_check.py --tokenizer ../tok --wheels ../wheels
    # on a CPU, tiny shapes, to test this script (about a minute):
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("OUT") or "/tmp/gpu-check-out")
WORK = Path(os.environ.get("GPU_WORK") or "/tmp/gpu-check-work")
RESULTS: dict = {}

# (shape, dtype, prompt repeat, inputs): the rows BENCHMARKS.md reports. The
# naive loop labels every input one at a time, so the inputs are kept few.
TABLE = [
    ("135m", "float32", 1, 64),
    ("135m", "float32", 8, 64),
    ("1.5b", "bfloat16", 1, 64),
    ("1.5b", "bfloat16", 8, 64),
    ("8b", "bfloat16", 1, 64),
    ("8b", "bfloat16", 8, 32),
]


def log(*parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    with open(OUT / "gpu.log", "a", encoding="utf-8") as f:
        f.write(line + "\n")


def save() -> None:
    (OUT / "results.json").write_text(json.dumps(RESULTS, indent=1), encoding="utf-8")


def install_wheels(wheels: Path) -> dict:
    """Install the carried wheels into a private folder (no index, no dependencies)
    and return the environment that puts them first on the path."""
    site = WORK / "site"
    if not site.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(site),
                        *map(str, sorted(wheels.glob("*.whl")))], check=True)
    return {"PYTHONPATH": f"{site}:{ROOT}"}


def run(cmd: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})
    except subprocess.TimeoutExpired as e:
        p = subprocess.CompletedProcess(cmd, 124, e.stdout or "", (e.stderr or "") + f"\ntimed out after {timeout} s")
    p.wall_s = time.perf_counter() - t0
    return p


def build_model(shape: str, tokenizer: str, env: dict) -> Path:
    """A random model of `shape` saved as an ordinary folder (with the tokenizer),
    built in a child process with the same environment as the pipeline."""
    folder = WORK / f"model-{shape}"
    if not (folder / "config.json").exists():
        code = (
            "import sys, torch; sys.path.insert(0, 'benchmarks'); import teacher_throughput as t;"
            f"m = t.random_teacher({shape!r}, 'cpu', 'float32', {tokenizer!r}).loaded;"
            f"m.model.save_pretrained({str(folder)!r}); m.tokenizer.save_pretrained({str(folder)!r})"
        )
        p = run([sys.executable, "-c", code], env, 600)
        if p.returncode:
            raise RuntimeError(p.stderr[-2000:])
    return folder


def pipeline(shape: str, limit: int, device: str, tokenizer: str, env: dict) -> None:
    """`promptdistill run` and `export --merged` with a random model as teacher and student."""
    model = build_model(shape, tokenizer, env)
    run_dir, merged = WORK / f"run-{shape}", WORK / f"merged-{shape}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(merged, ignore_errors=True)
    cmd = [sys.executable, "-m", "promptdistill", "run", "examples/language_id/task.toml", "--run-dir", str(run_dir),
           "--no-progress", "--device", device, "--teacher", str(model), "--student", str(model)]
    for setting in (f"data.limit={limit}", "train.epochs=1"):
        cmd += ["--set", setting]
    p = run(cmd, env, 900)
    log(f"[pipeline {shape}] rc={p.returncode} in {p.wall_s:.0f} s\n{p.stdout[-2500:]}\n{p.stderr[-2500:]}")
    RESULTS["pipeline"] = {"shape": shape, "rc": p.returncode, "wall_s": round(p.wall_s, 1)}
    if p.returncode == 0:
        q = run([sys.executable, "-m", "promptdistill", "export", str(run_dir), "--merged", str(merged)], env, 600)
        log(f"[export {shape}] rc={q.returncode}\n{q.stdout[-1000:]}{q.stderr[-1000:]}")
        RESULTS["pipeline"]["export_rc"] = q.returncode
        report = run_dir / "eval" / "report.json"
        if report.exists():
            shutil.copy(report, OUT / "pipeline-report.json")
    save()


def throughput(shape: str, dtype: str, repeat: int, n: int, device: str, tokenizer: str, env: dict, timeout: int) -> None:
    key = f"{shape}-{dtype}-x{repeat}"
    cmd = [sys.executable, "benchmarks/teacher_throughput.py", "--device", device, "--random-weights", shape, "--dtype", dtype,
           "--prompt-repeat", str(repeat), "--n", str(n), "--rounds", "1", "--plain-rounds", "1", "--tokenizer", tokenizer]
    p = run(cmd, env, timeout)
    lines = [line for line in p.stdout.splitlines() if not line.startswith("Loading")]
    log(f"[{key}] rc={p.returncode} in {p.wall_s:.0f} s\n" + "\n".join(lines[-14:]) + ("\n" + p.stderr[-1500:] if p.returncode else ""))
    result = {"rc": p.returncode, "wall_s": round(p.wall_s, 1), "lines": lines[-14:]}
    for name, pattern in (("choose_fast_over_naive", r"choose-mode ratio \(fast / naive\): ([\d.]+)"),
                          ("generate_fast_over_naive", r"generate-mode ratio \(fast / naive\): ([\d.]+)"),
                          ("generate_fast_over_plain", r"ratio \(fast / plain batched generate\): ([\d.]+)"),
                          ("generate_cascade_over_plain", r"ratio \(cascade / plain batched generate\): ([\d.]+)"),
                          ("generate_expand_over_plain", r"ratio \(expand / plain batched generate\): ([\d.]+)"),
                          ("generate_batch_over_plain", r"ratio \(generate_batch / plain batched generate\): ([\d.]+)"),
                          ("generate_fast_over_generate_batch", r"ratio \(fast / generate_batch\): ([\d.]+)")):
        if m := re.search(pattern, p.stdout):
            result[name] = float(m.group(1))
    # inputs/s per column: one-request, ours (auto, and which strategy that is), cascade,
    # expand, plain batched generate, generate_batch (or why it is unavailable)
    if m := re.search(r"^rates \(inputs/s\): (.*)$", p.stdout, re.M):
        result["rates"] = json.loads(m.group(1))
        for mode, row in result["rates"].items():
            log(f"[{key}] {mode}: " + " | ".join(f"{name} {value:.3f}" if isinstance(value, float) else f"{name} {value}"
                                                  for name, value in row.items() if value is not None))
    RESULTS[key] = result
    save()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct",
                    help="folder of SmolLM2's tokenizer files (default: the packaged model's, which needs its wheel)")
    ap.add_argument("--wheels", type=Path, help="folder of wheels to install first (no index, no dependencies)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes and few inputs: a test of this script on a CPU")
    ap.add_argument("--only", default="", help="comma-separated parts: pipeline, throughput")
    ap.add_argument("--step-timeout", type=int, default=240, help="seconds per throughput row")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    env = install_wheels(a.wheels) if a.wheels else {"PYTHONPATH": str(ROOT)}
    tokenizer = str(Path(a.tokenizer).resolve()) if Path(a.tokenizer).exists() else a.tokenizer
    probe = run([sys.executable, "-c", "import torch, transformers; print(torch.__version__, transformers.__version__, "
                 "torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no cuda')"], env, 120)
    log(f"torch, transformers, device: {probe.stdout.strip()} {probe.stderr[-500:] if probe.returncode else ''}")
    RESULTS["environment"] = probe.stdout.strip()
    parts = set(a.only.split(",")) if a.only else {"pipeline", "throughput"}
    if "pipeline" in parts:
        try:
            pipeline("tiny" if a.tiny else "135m", 32 if a.tiny else 128, a.device, tokenizer, env)
        except Exception as e:  # one part failing must not lose the others
            log(f"!! pipeline failed: {type(e).__name__}: {e}")
            RESULTS["pipeline"] = {"error": f"{type(e).__name__}: {e}"[-2000:]}
            save()
    if "throughput" in parts:
        for shape, dtype, repeat, n in TABLE:
            if a.tiny:
                shape, dtype, n = "tiny", "float32", 6
            throughput(shape, dtype, repeat, n, a.device, tokenizer, env, a.step_timeout)
            if a.tiny and repeat > 1:
                break  # one short and one long prompt are enough to test the script
    ok = all(r.get("rc", 1) == 0 for r in RESULTS.values() if isinstance(r, dict))
    log("all parts ran" if ok else "some parts failed: see gpu.log")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
