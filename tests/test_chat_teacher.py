"""The chat backend (teachers/chat.py) and the API key rules (api_access.py) against
scripted chat APIs (tests/openai_server.py's ScriptedChatServer, in a thread) and a
real model behind a chat endpoint (openai_server.serve): answers in input order,
usage and cost, seeds, choose mode from top_logprobs, retries of 429/5xx and
malformed replies, the deadline, redirects, plain http://, credentials in URLs,
the key kept out of every file and stream, Ctrl-C with requests in flight, and a
spending limit that stops labeling resumably. The teacher is never a local model:
no tokenizer is loaded for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import default_sigint
from openai_server import ScriptedChatServer

from promptdistill.config import Config, ModelsConfig, TaskConfig, load_config
from promptdistill.errors import PromptDistillError
from promptdistill.labeling import label_inputs
from promptdistill.records import Example
from promptdistill.task import Task
from promptdistill.teachers.chat import ChatTeacher
from promptdistill.teachers.records import api_seed
from promptdistill.teachers.server import ServerTeacher

KEY = "sk-test-Zq8SECRETkey-1234567890"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch):
    for name in ("PROMPTDISTILL_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def _cfg(**task) -> Config:
    fields = dict(system_prompt="Repeat the input.", answer_pattern=r"Final Answer:\s*(\w+)", top_logprobs=0)
    return Config(task=TaskConfig(**{**fields, **task}))


def _examples(n):
    return [Example(id=str(i), text=f"w{i}") for i in range(n)]


def _ids(path) -> list[str]:
    return [json.loads(line)["id"] for line in Path(path).read_text().splitlines()]


def _labels(path) -> list[str]:
    return [json.loads(line)["label"] for line in Path(path).read_text().splitlines()]


def _teacher(server, **kw) -> ChatTeacher:
    return ChatTeacher(server.url, "remote-teacher", **{"concurrency": 3, "backoff": 0.01, **kw})


def test_generate_in_input_order_with_votes_seeds_and_usage(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTDISTILL_API_KEY", KEY)
    cfg = _cfg(samples=3, temperature=0.7)
    cfg.models = ModelsConfig(teacher_price_in=2.0, teacher_price_out=10.0)
    with ScriptedChatServer() as server:
        summary = label_inputs(cfg, _examples(5), _teacher(server), tmp_path / "out.jsonl", progress=False)
    assert _ids(tmp_path / "out.jsonl") == ["0", "1", "2", "3", "4"]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == [f"w{i}" for i in range(5)] and records[0]["votes"] == {"w0": 3}
    # each (input, sample) has its own seed, the one every backend derives
    seeds = sorted((c[0], c[3]["seed"]) for c in server.calls)
    assert seeds == sorted((f"w{i}", api_seed(cfg.data.seed, str(i), n)) for i in range(5) for n in range(3))
    assert all(c[2] == f"Bearer {KEY}" and c[3]["messages"][0] == {"role": "system", "content": "Repeat the input."} for c in server.calls)
    assert records[0]["meta"]["teacher_usage"] == {"requests": 3, "prompt_tokens": 6, "completion_tokens": 9, "cached_tokens": 6}
    assert summary["teacher_usage"] == {"requests": 15, "prompt_tokens": 30, "completion_tokens": 45, "cached_tokens": 30}
    assert summary["teacher_cost"] == pytest.approx((30 * 2.0 + 45 * 10.0) / 1e6)


def test_an_apis_reasoning_field_is_kept_but_never_parsed(tmp_path):
    with ScriptedChatServer(always="reasoning") as server:
        label_inputs(_cfg(), _examples(2), _teacher(server), tmp_path / "out.jsonl", progress=False)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    # the answer after the thinking is the label (the thinking names zz), the record keeps both
    assert [r["label"] for r in records] == ["w0", "w1"]
    assert all(r["teacher_reply"].startswith("<think>\nIs it Final Answer: zz? No.\n</think>") for r in records)
    assert all("zz" not in json.dumps(r["messages"]) for r in records)


def test_choose_mode_reads_the_answer_tokens_alternatives(tmp_path):
    cfg = _cfg(labels=["yes", "no", "maybe"], answer_mode="choose", answer_pattern=r"Final Answer:\s*(\w+)")
    alternatives = {" yes": -0.5, " no": -1.5, "no": -1.7, " perhaps": -2.0}
    with ScriptedChatServer(alternatives=alternatives) as server:
        label_inputs(cfg, _examples(2), _teacher(server), tmp_path / "out.jsonl", progress=False)
    record = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    import math

    p_yes, p_no = math.exp(-0.5), math.exp(-1.5)  # the likelier spelling of "no" counts
    assert record["label"] == "yes" and record["label_probs"]["maybe"] == 0
    assert record["label_probs"]["yes"] == pytest.approx(p_yes / (p_yes + p_no))
    assert server.calls[0][3]["logprobs"] is True and server.calls[0][3]["top_logprobs"] == 20


def test_choose_mode_without_top_logprobs_is_refused_in_one_line(tmp_path):
    cfg = _cfg(labels=["w0", "w1"], answer_mode="choose")
    with ScriptedChatServer(always="nologprobs") as server, pytest.raises(PromptDistillError) as err:
        label_inputs(cfg, _examples(2), _teacher(server), tmp_path / "out.jsonl", progress=False)
    assert 'answer_mode = "generate"' in err.value.message and "samples" in err.value.message and "\n" not in str(err.value)


def test_429_with_retry_after_and_500s_are_retried(tmp_path):
    with ScriptedChatServer({"w1": [429], "w2": [500, 503]}, retry_after="1") as server:
        summary = label_inputs(_cfg(), _examples(3), _teacher(server), tmp_path / "out.jsonl", progress=False)
    assert summary["labeled"] == 3 and _ids(tmp_path / "out.jsonl") == ["0", "1", "2"]
    tries = [c[1] for c in server.calls if c[0] == "w1"]
    assert len(tries) == 2 and tries[1] - tries[0] >= 0.9  # Retry-After: 1 honoured
    assert len([c for c in server.calls if c[0] == "w2"]) == 3


@pytest.mark.parametrize("fault", ["truncated", "nonjson", "list", "nochoices", "notutf8"])
def test_malformed_replies_are_retried_then_named(tmp_path, fault):
    with ScriptedChatServer({"w1": [fault, fault]}) as server:
        label_inputs(_cfg(), _examples(3), _teacher(server), tmp_path / "out.jsonl", progress=False)
    assert _ids(tmp_path / "out.jsonl") == ["0", "1", "2"]
    with ScriptedChatServer(always=fault) as server, pytest.raises(PromptDistillError) as err:
        label_inputs(_cfg(), _examples(1), _teacher(server, max_retries=2), tmp_path / "other.jsonl", progress=False)
    assert "input '0'" in err.value.message and server.url in err.value.message and "Traceback" not in err.value.message


def test_a_hung_request_ends_at_the_deadline(tmp_path):
    with ScriptedChatServer({"w0": ["hang"]}, hang=30) as server:
        t0 = time.monotonic()
        with pytest.raises(PromptDistillError) as err:
            label_inputs(_cfg(), _examples(1), _teacher(server, timeout=1.0, max_retries=0), tmp_path / "out.jsonl", progress=False)
        assert time.monotonic() - t0 < 10
    assert "input '0'" in err.value.message and server.url in err.value.message


def test_a_trickled_reply_ends_at_the_requests_deadline(tmp_path):
    """A server that sends a byte every 0.2 s never trips a per-socket timeout; the request's
    overall deadline (1 s) ends each attempt, and after the client's retry one error names the input."""
    with ScriptedChatServer({"w0": ["trickle", "trickle"]}, hang=30) as server:
        t0 = time.monotonic()
        with pytest.raises(PromptDistillError) as err:
            label_inputs(_cfg(), _examples(1), _teacher(server, timeout=1.0, max_retries=1), tmp_path / "out.jsonl", progress=False)
        elapsed = time.monotonic() - t0
    assert elapsed < 8, elapsed
    assert len(server.calls) == 2 and "input '0'" in err.value.message and server.url in err.value.message
    assert "Timeout" in err.value.message


def test_a_reply_over_the_size_limit_is_retried_then_named(tmp_path, monkeypatch):
    """A body bigger than the limit, with no length declared (so only counting the bytes read
    catches it): retried, and a good reply after it is used; always too big: one error."""
    from promptdistill.teachers import chat

    monkeypatch.setattr(chat, "MAX_REPLY_BYTES", 50_000)
    with ScriptedChatServer({"w1": ["huge"]}) as server:
        label_inputs(_cfg(), _examples(2), _teacher(server), tmp_path / "out.jsonl", progress=False)
        assert server.inputs().count("w1") == 2
    assert _labels(tmp_path / "out.jsonl") == ["w0", "w1"]
    with ScriptedChatServer(always="huge") as server, pytest.raises(PromptDistillError) as err:
        label_inputs(_cfg(), _examples(1), _teacher(server, max_retries=2), tmp_path / "other.jsonl", progress=False)
    assert "input '0'" in err.value.message and "larger than 50000 bytes" in err.value.message and len(server.calls) == 3
    # Unlimited, the same reply is a valid answer: the limit is what refused it.
    monkeypatch.setattr(chat, "MAX_REPLY_BYTES", 10**9)
    with ScriptedChatServer({"w0": ["huge"]}) as server:
        label_inputs(_cfg(), _examples(1), _teacher(server), tmp_path / "third.jsonl", progress=False)
        assert len(server.calls) == 1
    assert _labels(tmp_path / "third.jsonl") == ["w0"]


@pytest.mark.parametrize("backend", ["chat", "vllm-server"])
def test_a_redirect_to_another_host_gets_no_key(tmp_path, monkeypatch, backend, tokenizer):
    monkeypatch.setenv("PROMPTDISTILL_API_KEY", KEY)
    with ScriptedChatServer(host="localhost") as elsewhere:
        target = elsewhere.url + "/chat/completions"
        with ScriptedChatServer(always=("redirect", target)) as server:
            if backend == "chat":
                teacher = _teacher(server)
                call = lambda: label_inputs(_cfg(), _examples(1), teacher, tmp_path / "out.jsonl", progress=False)  # noqa: E731
            else:  # urllib would copy the header along; the token-level backend refuses redirects
                teacher = ServerTeacher(server.url, "remote-teacher", tokenizer=tokenizer, max_retries=0)
                call = lambda: teacher._request("POST", "/completions", {"x": 1}, what="input '0'")  # noqa: E731
            with pytest.raises(PromptDistillError) as err:
                call()
    assert "redirect" in err.value.message and KEY not in str(err.value)
    assert elsewhere.calls == []  # nothing, let alone the key, reached the other host


@pytest.mark.parametrize("backend", ["chat", "vllm-server"])
def test_plain_http_to_another_host_is_refused_before_connecting(monkeypatch, backend):
    monkeypatch.setenv("PROMPTDISTILL_API_KEY", KEY)
    url = "http://192.0.2.1:9/v1"  # TEST-NET-1: nothing answers there, so a connection attempt would hang
    build = ChatTeacher if backend == "chat" else ServerTeacher
    t0 = time.monotonic()
    with pytest.raises(PromptDistillError, match="plain http://") as err:
        build(url, "remote-teacher")
    assert time.monotonic() - t0 < 1 and KEY not in str(err.value)
    build(url, "remote-teacher", models=ModelsConfig(teacher_allow_insecure_http=True))  # allowed when asked
    monkeypatch.delenv("PROMPTDISTILL_API_KEY")
    build(url, "remote-teacher")  # no key, nothing to protect


def test_the_key_comes_from_the_named_variable_only(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert ChatTeacher("http://127.0.0.1:9/v1", "m").api_key is None  # no fallback to $OPENAI_API_KEY
    assert ChatTeacher("http://127.0.0.1:9/v1", "m", models=ModelsConfig(teacher_api_key_env="OPENAI_API_KEY")).api_key == KEY


@pytest.mark.parametrize("url", ["https://user:hunter2@api.example.com/v1", "https://api.example.com/v1?api_key=abc",
                                 "https://api.example.com/v1?key=abc", "https://api.example.com/v1?token=abc"])
def test_credentials_in_the_url_are_refused_in_one_line(tmp_path, url):
    from conftest import write_task_file

    task = write_task_file(tmp_path, models=dict(teacher="remote", teacher_backend="chat", teacher_url=url))
    with pytest.raises(PromptDistillError) as err:
        load_config(task)
    assert err.value.field == "models.teacher_url" and "PROMPTDISTILL_API_KEY" in err.value.message
    assert "hunter2" not in err.value.message and "abc" not in err.value.message


def _chat_task(tmp_path, n: int, **models) -> Path:
    from conftest import write_task_file

    (tmp_path / "inputs.txt").write_text("".join(f"w{i}\n" for i in range(n)), encoding="utf-8")
    return write_task_file(tmp_path, task=dict(system_prompt="Repeat the input.", answer_pattern=r"Final Answer:\s*(\w+)"),
                           data=dict(inputs="inputs.txt"), models=dict(teacher="remote-teacher", **models))


def _cli(args, **kw):
    env = {**os.environ, "PROMPTDISTILL_API_KEY": KEY, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "promptdistill", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=kw.get("cwd"), text=True, preexec_fn=default_sigint)


def test_cli_label_keeps_the_key_out_of_every_file_and_stream(tmp_path):
    task = _chat_task(tmp_path, 4, teacher_price_in=1.0, teacher_price_out=1.0)
    with ScriptedChatServer({"w2": [500]}) as server:
        proc = _cli(["label", str(task), "--out", str(tmp_path / "out" / "labels.jsonl"), "--teacher-backend", "chat",
                     "--teacher-url", server.url, "--no-progress"])
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["labeled"] == 4 and summary["teacher_usage"]["requests"] == 4 and summary["teacher_cost"] > 0
    assert err.count(f"sending the API key to {server.url}") == 1  # said once, before the first request
    assert KEY not in out + err
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 3 and not any(KEY.encode() in p.read_bytes() for p in files)
    meta = json.loads((tmp_path / "out" / "labels.jsonl.meta.json").read_text())
    assert (meta["backend"], meta["teacher_url"]) == ("chat", server.url)


def test_sigint_with_requests_in_flight_stops_at_once_and_resumes(tmp_path):
    task = _chat_task(tmp_path, 12)
    out = tmp_path / "labels.jsonl"
    with ScriptedChatServer({f"w{i}": ["hang"] for i in range(3, 12)}, hang=60) as server:
        proc = _cli(["label", str(task), "--out", str(out), "--teacher-backend", "chat", "--teacher-url", server.url,
                     "--concurrency", "4", "--no-progress"])
        deadline = time.monotonic() + 60
        while (not out.exists() or len(_labels(out)) < 3) and time.monotonic() < deadline:
            time.sleep(0.1)
        while len(server.calls) < 6 and time.monotonic() < deadline:  # hung requests in flight
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        proc.communicate(timeout=30)
        stopped_in = time.monotonic() - t0
        assert stopped_in < 5 and proc.returncode != 0
        assert _labels(out) == ["w0", "w1", "w2"]
        with server.lock:  # the same server (its URL is in the labels' settings), answering now
            server.script.clear()
            server.calls.clear()
        proc = _cli(["label", str(task), "--out", str(out), "--teacher-backend", "chat", "--teacher-url", server.url, "--no-progress"])
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _labels(out) == [f"w{i}" for i in range(12)] and sorted(server.inputs()) == sorted(f"w{i}" for i in range(3, 12))


def test_max_cost_stops_labeling_and_a_higher_limit_resumes(tmp_path):
    # 2 prompt tokens at 1000 per million + 3 completion tokens at 1000 per million: 0.005 per input
    task = _chat_task(tmp_path, 6, teacher_price_in=1000.0, teacher_price_out=1000.0, teacher_max_cost=0.012)
    out = tmp_path / "labels.jsonl"
    with ScriptedChatServer() as server:
        proc = _cli(["label", str(task), "--out", str(out), "--teacher-backend", "chat", "--teacher-url", server.url,
                     "--concurrency", "1", "--no-progress"])
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and "models.teacher_max_cost" in err and "0.0150" in err and "rerun" in err
        assert _labels(out) == ["w0", "w1", "w2"]
        proc = _cli(["label", str(task), "--out", str(out), "--teacher-backend", "chat", "--teacher-url", server.url,
                     "--set", "models.teacher_max_cost=1", "--no-progress"])
        out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert _labels(out) == [f"w{i}" for i in range(6)] and json.loads(out_text)["teacher_cost"] == pytest.approx(0.03)


WORDS = "apple river quiet stone purple engine winter ladder cotton mirror orbit velvet harbor candle thunder maple".split()


def _written_input(text, body) -> str:
    """A generator that writes an input: words drawn by the request's seed (distinct per request)."""
    import random

    return "Input: " + " ".join(random.Random(body["seed"]).sample(WORDS, 7))


def test_synthesize_sends_the_generator_conversation_as_messages(tmp_path, monkeypatch):
    """The chat backend writes inputs: each request is the generator conversation as messages
    (the task's prompt inside), with its own seed and the synthesis length; the inputs are
    the API's text, cleaned; no tokenizer exists here."""
    from conftest import write_task_file

    from promptdistill import models
    from promptdistill.cli import main

    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: pytest.fail("a tokenizer was loaded for the chat backend"))
    task = write_task_file(tmp_path, task=dict(system_prompt="Say which fruit the input names.", labels=["a", "b"]),
                           models=dict(teacher="remote-teacher"), synthesize=dict(max_new_tokens=40, round_size=4))
    out = tmp_path / "synth" / "inputs.jsonl"
    with ScriptedChatServer(answer=_written_input) as server:
        code = main(["synthesize", str(task), "--n", "6", "--out", str(out), "--teacher-backend", "chat", "--teacher-url", server.url,
                     "--no-progress"])
        bodies = [c[3] for c in server.calls]
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["text"].split()[0] in WORDS and len(r["text"].split()) == 7 for r in rows)
    assert {r["meta"]["source"]["generator"] for r in rows} == {"remote-teacher"}
    assert all(b["messages"][-1]["role"] == "user" and "Say which fruit the input names." in b["messages"][-1]["content"]
               and b["max_tokens"] == 40 for b in bodies)
    assert len({b["seed"] for b in bodies}) == len(bodies) >= 6
    # Quotas per label: the requests ask for inputs whose answer is each label.
    assert any("Final Answer: a" in b["messages"][-1]["content"] for b in bodies)
    assert any("Final Answer: b" in b["messages"][-1]["content"] for b in bodies)


def test_magpie_over_a_chat_api_is_refused_in_one_line_before_writing(tmp_path):
    from conftest import write_task_file

    from promptdistill.synthesis import synthesize

    task = write_task_file(tmp_path, data=dict(synthesize=10), synthesize=dict(strategies=["prompt", "magpie"]),
                           models=dict(teacher="remote", teacher_backend="chat", teacher_url="http://127.0.0.1:9/v1"))
    with pytest.raises(PromptDistillError) as err:
        load_config(task)
    assert err.value.field == "synthesize.strategies" and '"prompt"' in err.value.message and "\n" not in err.value.message
    # The synthesize command reads [synthesize] whatever data.synthesize says: refused there too, nothing written.
    cfg = load_config(write_task_file(tmp_path, synthesize=dict(strategies=["magpie"]),
                                      models=dict(teacher="remote", teacher_backend="chat", teacher_url="http://127.0.0.1:9/v1")))
    with ScriptedChatServer() as server, pytest.raises(PromptDistillError) as err:
        synthesize(cfg, 3, tmp_path / "out" / "inputs.jsonl", teacher=_teacher(server), progress=False)
    assert err.value.field == "synthesize.strategies" and not server.calls and not (tmp_path / "out").exists()
    # Conversations (synthesize.turns > 1) continue the raw template too: refused the same way.
    cfg = load_config(write_task_file(tmp_path, synthesize=dict(turns=2),
                                      models=dict(teacher="remote", teacher_backend="chat", teacher_url="http://127.0.0.1:9/v1")))
    with ScriptedChatServer() as server, pytest.raises(PromptDistillError) as err:
        synthesize(cfg, 3, tmp_path / "out" / "inputs.jsonl", teacher=_teacher(server), progress=False)
    assert err.value.field == "synthesize.turns" and not server.calls and not (tmp_path / "out").exists()
    # Without magpie, synthesis through a chat API is accepted.
    assert load_config(write_task_file(tmp_path, data=dict(synthesize=10), models=dict(
        teacher="remote", teacher_backend="chat", teacher_url="http://127.0.0.1:9/v1"))).data.synthesize == 10


def test_kd_is_refused_for_the_chat_backend(tmp_path):
    from conftest import write_task_file

    task = write_task_file(tmp_path, train=dict(loss="kd"),
                           models=dict(teacher="remote", teacher_backend="chat", teacher_url="http://127.0.0.1:9/v1"))
    with pytest.raises(PromptDistillError, match="top_logprobs"):
        load_config(task)


def test_a_spending_limit_without_prices_is_refused(tmp_path):
    from conftest import write_task_file

    task = write_task_file(tmp_path, models=dict(teacher="remote", teacher_backend="chat", teacher_url="http://127.0.0.1:9/v1",
                                                 teacher_max_cost=5.0))
    with pytest.raises(PromptDistillError) as err:
        load_config(task)
    assert err.value.field == "models.teacher_max_cost" and "teacher_price_in" in err.value.message


def test_the_chat_teacher_has_no_local_tokenizer():
    with pytest.raises(PromptDistillError, match="no local tokenizer"):
        ChatTeacher("http://127.0.0.1:9/v1", "remote-teacher").tokenizer  # noqa: B018
    assert Task  # the interface stays importable without one


@pytest.fixture(scope="module")
def chat_url(tiny_model_dir):
    """A tiny real model behind a chat endpoint, served under a name that is no local model."""
    from openai_server import serve

    with serve(tiny_model_dir, "remote-teacher") as url:
        yield url


def test_a_real_model_behind_a_chat_endpoint_labels_with_the_servers_template(tmp_path, chat_url, tokenizer):
    """The server applies its own chat template: the prompt tokens the API reports are the
    template's count for the system prompt and the input, and nothing is loaded here."""
    cfg = _cfg(max_new_tokens=4)
    summary = label_inputs(cfg, _examples(3), ChatTeacher(chat_url, "remote-teacher"), tmp_path / "out.jsonl", progress=False)
    assert summary["total"] == 3 and summary["teacher_usage"]["requests"] == 3
    messages = Task(cfg.task).teacher_messages("w0")
    n = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    records = [json.loads(line) for p in ("out.jsonl", "out.rejects.jsonl") if (tmp_path / p).exists()
               for line in (tmp_path / p).read_text().splitlines()]
    assert {r["id"]: r["meta"]["teacher_usage"]["prompt_tokens"] for r in records}["0"] == n


def test_run_and_eval_through_a_chat_api_without_a_teacher_tokenizer(tmp_path, tiny_model_dir, capsys):
    """label, train and eval with the teacher behind /chat/completions: no tokenizer is
    loaded for "remote-teacher" (there is none to load), the evaluation's teacher row
    counts its prompt tokens from the API's usage, and the report prices its requests."""
    from conftest import write_task_file

    from promptdistill.cli import main

    rows = [{"id": f"in{i:02d}", "text": f"w{i}"} for i in range(8)]
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    task = write_task_file(tmp_path, tiny_model_dir,
                           task=dict(system_prompt="Repeat the input.", answer_pattern=r"Final Answer:\s*(\w+)", max_new_tokens=6),
                           data=dict(inputs="inputs.jsonl", heldout_fraction=0.5),
                           models=dict(teacher="remote-teacher", teacher_price_in=1.0, teacher_price_out=4.0),
                           train=dict(max_steps=1, batch_size=2, lora_rank=2),
                           eval=dict(include_base=False, latency_requests=1))
    with ScriptedChatServer() as server:
        code = main(["run", str(task), "--teacher-backend", "chat", "--teacher-url", server.url, "--run-dir", str(tmp_path / "run"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    labeled = [json.loads(line) for p in (tmp_path / "run" / "labels").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert len(labeled) == 8 and all(r["meta"]["teacher_usage"]["prompt_tokens"] == 2 for r in labeled)
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert report["systems"]["teacher"]["mean_prompt_tokens"] == 2  # the API's count: no tokenizer here
    api = report["api_cost"]
    assert api["teacher_cost_per_request"] == pytest.approx((2 * 1.0 + 3 * 4.0) / 1e6) and api["student_api_cost_per_request"] == 0.0
    assert "API cost" in (tmp_path / "run" / "eval" / "report.md").read_text()


def test_cli_refuses_plain_http_with_a_key_before_writing_anything(tmp_path, capsys, monkeypatch):
    from promptdistill.cli import main

    monkeypatch.setenv("PROMPTDISTILL_API_KEY", KEY)
    task = _chat_task(tmp_path, 2)
    out = tmp_path / "out" / "labels.jsonl"
    code = main(["label", str(task), "--out", str(out), "--teacher-backend", "chat", "--teacher-url", "http://192.0.2.1:9/v1",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--allow-insecure-http" in err and KEY not in err
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_eval_kl_is_none_where_a_chat_teacher_gave_no_distribution():
    """Choose mode over a chat API: where the answer token's alternatives name no label the
    record is the reply as given, without a distribution, so the evaluation's KL from the
    teacher is undefined for that input (None, left out of the means), not an error."""
    from promptdistill.evaluation.fidelity import FidelityScorer, distribution_kl

    cfg = _cfg(labels=["a", "b"], answer_mode="choose", answer_template="Final Answer: {label}")
    with ScriptedChatServer(alternatives={" zz": -0.1}) as server:
        no_label = FidelityScorer(Task(cfg.task), _teacher(server)).teacher_label_probs("0", "zz")
    with ScriptedChatServer(alternatives={" a": -0.1, " b": -2.0}) as server:
        labeled = FidelityScorer(Task(cfg.task), _teacher(server)).teacher_label_probs("1", "a")
    assert no_label is None and distribution_kl(no_label, {"a": 0.5, "b": 0.5}) is None
    assert labeled["a"] > labeled["b"] and distribution_kl(labeled, {"a": 0.5, "b": 0.5}) > 0
