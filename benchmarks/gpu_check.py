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

A third part, training (`training()` below; `--only training`): our trainer
against TRL's SFTTrainer on the device (benchmarks/train_throughput.py:
trained tokens per second and peak GPU memory), and a 4-bit QLoRA step on the
8b shape (models.load_in_4bit, gradient checkpointing), its peak GPU memory
beside training/gpu_memory.py's estimate; skipped with the reason where TRL
or bitsandbytes is missing on the device, or the device is a CPU.
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
        q = run([sys.executable, "-m", "promptdistill", "export", "--run-dir", str(run_dir), "--merged", str(merged)], env, 600)
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


def has_module(name: str, env: dict) -> bool:
    """Whether `name` imports in the children's environment."""
    return run([sys.executable, "-c", f"import {name}"], env, 300).returncode == 0


def training(device: str, tiny: bool, tokenizer: str, env: dict, timeout: int) -> None:
    """Training on the device: throughput and peak memory against TRL, then a 4-bit step on the 8b shape."""
    shape = "tiny" if tiny else "135m"
    model = build_model(shape, tokenizer, env)
    methods = "trl,ours" if has_module("trl", env) else "ours"
    if methods == "ours":
        log("[training] trl is not installed on the device: our trainer alone, no comparison")
    dtype = "float32" if device == "cpu" else "bfloat16"
    n = ["--train", "16", "--heldout", "8", "--batch", "4", "--accum", "1"] if tiny else ["--train", "128", "--heldout", "32"]
    for ckpt in ([], ["--gradient-checkpointing"]):
        key = f"training-{shape}" + ("-ckpt" if ckpt else "")
        cmd = [sys.executable, "benchmarks/train_throughput.py", "--device", device, "--dtype", dtype, "--student", str(model),
               "--methods", methods, *n, *ckpt]
        p = run(cmd, env, timeout)
        lines = [line for line in p.stdout.splitlines() if line.strip() and not line.startswith(("Loading", "{"))]
        log(f"[{key}] rc={p.returncode} in {p.wall_s:.0f} s\n" + "\n".join(lines[-6:]) + ("\n" + p.stderr[-1500:] if p.returncode else ""))
        result = {"rc": p.returncode, "wall_s": round(p.wall_s, 1), "lines": lines[-6:]}
        if m := re.search(r"throughput ratio \(ours / TRL\): ([\d.]+)", p.stdout):
            result["ours_over_trl"] = float(m.group(1))
        RESULTS[key] = result
        save()
    if device == "cpu" or not has_module("bitsandbytes", env):
        reason = "the device is a CPU (4-bit loading needs CUDA)" if device == "cpu" else "bitsandbytes is not installed on the device"
        log(f"[qlora-8b] skipped: {reason}")
        RESULTS["qlora-8b"] = {"skipped": reason}
        save()
        return
    folder = WORK / "model-8b-bf16"
    if not (folder / "config.json").exists():
        code = ("import sys; sys.path.insert(0, 'benchmarks'); import teacher_throughput as t;"
                f"m = t.random_teacher('8b', {device!r}, 'bfloat16', {tokenizer!r}).loaded;"
                f"m.model.save_pretrained({str(folder)!r}); m.tokenizer.save_pretrained({str(folder)!r})")
        p = run([sys.executable, "-c", code], env, timeout)
        if p.returncode:
            log(f"[qlora-8b] building the 8b model failed:\n{p.stderr[-2000:]}")
            RESULTS["qlora-8b"] = {"rc": p.returncode}
            save()
            return
    code = ("import sys, json; sys.path.insert(0, 'benchmarks'); import gpu_check;"
            f"print(json.dumps(gpu_check.qlora_step({str(folder)!r}, {device!r})))")
    p = run([sys.executable, "-c", code], env, timeout)
    result = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {}
    log(f"[qlora-8b] rc={p.returncode} in {p.wall_s:.0f} s {json.dumps(result)}" + ("\n" + p.stderr[-2000:] if p.returncode else ""))
    RESULTS["qlora-8b"] = {"rc": p.returncode, "wall_s": round(p.wall_s, 1), **result}
    save()


def qlora_step(model: str, device: str, steps: int = 2, batch: int = 2, tokens: int = 512) -> dict:
    """Train `steps` steps of a 4-bit student (NF4, gradient checkpointing, bf16 autocast) on
    language-id texts repeated to about `tokens` tokens; its peak GPU memory beside the estimate."""
    import dataclasses
    import random
    import tempfile

    import torch

    from promptdistill.config import Config, ModelsConfig, TrainConfig
    from promptdistill.records import LabeledExample, read_inputs
    from promptdistill.training.gpu_memory import SHAPES, estimate
    from promptdistill.training.recipe import train_student

    rows = random.Random(0).sample(read_inputs(ROOT / "examples/language_id/data.jsonl"), steps * batch)
    records = []
    for e in rows:
        text = " ".join([e.text] * max(1, tokens // max(1, len(e.text.split()) * 2)))
        reply = f"Final Answer: {e.gold_label}"
        records.append(LabeledExample(id=e.id, text=text, gold_label=e.gold_label, teacher_reply=reply, label=e.gold_label,
                                      status="ok", messages=[{"role": "user", "content": text}, {"role": "assistant", "content": reply}]))
    cfg = Config(models=ModelsConfig(student=model, teacher=model, device=device, dtype="bfloat16", load_in_4bit=True),
                 train=TrainConfig(lora_rank=32, lora_alpha=32, max_steps=steps, batch_size=batch, max_length=4 * tokens,
                                   gradient_checkpointing=True, save_every=10**9, eval_every=10**9))
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_student(cfg, records, tmp, progress=False)
    from promptdistill.models import load_tokenizer
    from promptdistill.training.data import render_for_training

    rendered, _ = render_for_training(records, load_tokenizer(model), cfg.train.max_length)
    longest = max(e.num_tokens for e in rendered)
    share = sum(e.num_trained for e in rendered) / sum(e.num_tokens for e in rendered)
    shape = dataclasses.replace(SHAPES["8B"], vocab=49152)  # teacher_throughput's 8b: SmolLM2's vocabulary
    est = estimate(shape, longest, "qlora-ckpt", batch=batch, reply_share=share)
    return {"steps": steps, "batch": batch, "longest_tokens": longest, "seconds_per_step": summary["seconds"] / steps,
            "final_loss": summary["final_loss"], "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
            "estimated_gib": est["total"] / 2**30}


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
    parts |= set() if a.only else {"training"}
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
    if "training" in parts:
        try:
            training(a.device, a.tiny, tokenizer, env, 600)
        except Exception as e:  # one part failing must not lose the others
            log(f"!! training failed: {type(e).__name__}: {e}")
            RESULTS["training"] = {"error": f"{type(e).__name__}: {e}"[-2000:]}
            save()
    ok = all(r.get("rc", 1) == 0 and r.get("export_rc", 0) == 0
             for r in RESULTS.values() if isinstance(r, dict) and "skipped" not in r)
    log("all parts ran" if ok else "some parts failed: see gpu.log")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
