"""`eval TASK --student URL --student-model NAME --inputs FILE --out DIR`: a student served
behind an OpenAI-compatible chat API (tests/openai_server.py's ScriptedChatServer stands in
for it, and for a chat teacher), evaluated like a local one: its requests carry no system
prompt, its row comes from its server's replies, what an API cannot give is said with a
reason, its key comes from the variable named for it and is written nowhere, flag errors
come before anything is written, and an interrupted evaluation re-asks nothing answered.
A real tiny model behind a chat endpoint (openai_server.serve) checks the replies end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_task_file
from openai_server import ScriptedChatServer

from promptdistill.cli import main
from promptdistill.general import general_checks, passes

KEY = "sk-student-Qx7SECRET-0987654321"
TEACHER_KEY = "sk-teacher-Lm3SECRET-1234567890"
PROMPT = "Repeat the input."
INPUTS = [f"w{i}" for i in range(6)]
# The general-ability prompts, answered by the stand-in student with the check's own answer text.
GENERAL = {c.prompt: c.answer for c in general_checks()}


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch):
    for name in ("PROMPTDISTILL_API_KEY", "OPENAI_API_KEY", "STUDENT_KEY"):
        monkeypatch.delenv(name, raising=False)


def student_reply(text: str, body: dict) -> str:
    """The served student: the teacher's answer on even inputs, a wrong one on odd ones."""
    if text in GENERAL:
        return GENERAL[text]
    if re.fullmatch(r"w\d+", text):
        return f"Final Answer: {text}" if int(text[1:]) % 2 == 0 else "Final Answer: nope"
    return "Hello there."  # an off-task input


def _task(tmp_path: Path, model_dir: str, teacher_url: str | None, **eval_settings) -> Path:
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps({"id": t, "text": t}) + "\n" for t in INPUTS), encoding="utf-8")
    models = dict(teacher="remote-teacher", teacher_backend="chat", teacher_url=teacher_url) if teacher_url else {}
    return write_task_file(tmp_path, model_dir, task=dict(system_prompt=PROMPT, answer_pattern=r"Final Answer:\s*(\w+)", max_new_tokens=6),
                           models=models, eval=dict(latency_requests=1, **eval_settings))


def _files_hold(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_served_student_is_asked_without_the_prompt_and_its_key_stays_out_of_every_file(tmp_path, tiny_model_dir, monkeypatch, capsys):
    (tmp_path / "offtask.txt").write_text("hello\nwhat is the capital of France?\n", encoding="utf-8")
    monkeypatch.setenv("STUDENT_KEY", KEY)
    monkeypatch.setenv("PROMPTDISTILL_API_KEY", TEACHER_KEY)  # the teacher's: never sent to the student's server
    out = tmp_path / "report"
    with ScriptedChatServer() as teacher, ScriptedChatServer(answer=student_reply, served="served-student") as student:
        task = _task(tmp_path, tiny_model_dir, teacher.url, offtask_inputs="offtask.txt")
        code = main(["eval", str(task), "--student", student.url + "?tenant=blue", "--student-model", "served-student",
                     "--student-api-key-env", "STUDENT_KEY", "--inputs", str(tmp_path / "heldout.jsonl"), "--out", str(out),
                     "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err

    # Who was asked what: the teacher with the prompt as its system message, the student without any.
    assert teacher.calls and all(body["messages"][0] == {"role": "system", "content": PROMPT} for _, _, _, body in teacher.calls)
    assert student.calls and all(body["model"] == "served-student" for _, _, _, body in student.calls)
    assert not [body for _, _, _, body in student.calls if any(m["role"] == "system" for m in body["messages"])]
    assert {body["messages"][-1]["content"] for _, _, _, body in student.calls} >= set(INPUTS) | set(GENERAL) | {"hello"}
    # Each key went only where it belongs.
    assert {auth for _, _, auth, _ in student.calls} == {f"Bearer {KEY}"}
    assert {auth for _, _, auth, _ in teacher.calls} == {f"Bearer {TEACHER_KEY}"}
    assert not _files_hold(tmp_path, KEY) and not _files_hold(tmp_path, TEACHER_KEY)
    assert KEY not in captured.out + captured.err

    report = json.loads((out / "report.json").read_text())
    row = report["systems"]["student"]
    # The student's row is its server's replies: the teacher's answer on even inputs only.
    assert row["agreement"] == pytest.approx(sum(int(t[1:]) % 2 == 0 for t in INPUTS) / len(INPUTS))
    assert row["mean_prompt_tokens"] == pytest.approx(sum(map(len, INPUTS)) / len(INPUTS))  # what the API counted
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {p["id"]: p["reply"] for p in predictions if p["system"] == "student"} == {t: student_reply(t, {}) for t in INPUTS}
    assert report["student_api"]["url"] == student.url and report["student_api"]["model"] == "served-student"
    assert report["student_api"]["usage"]["requests"] >= len(INPUTS) + len(GENERAL)
    assert report["models"]["student"] == "served-student"
    assert report["api_cost"]["student_api_cost_per_request"] is None  # not the local student's 0.0

    # What needs the student's distributions is not there, and says why; nothing is made up.
    why = "not available for a student behind an API"
    assert row["kl_to_teacher"] is None and why in report["fidelity"]["student_unavailable"]
    assert report["offtask"]["student"]["kl_base"] is None and why in report["offtask"]["student"]["kl_unavailable"]
    general = report["general_ability"]
    assert general["kl_base_student"] is None and why in general["kl_unavailable"]
    # General ability is scored on replies: the student's came through its API.
    rows = [json.loads(line) for line in (out / "general_ability.jsonl").read_text().splitlines()]
    assert all(r["student_reply"] == GENERAL[r["prompt"]] for r in rows)
    assert general["student_score"] == pytest.approx(sum(passes(c, c.answer) for c in general_checks()) / len(rows))
    md = (out / "report.md").read_text()
    assert md.count(why) >= 2 and f"`served-student` at `{student.url}`" in md and "tenant" not in md
    assert "through its own API" in md and "includes that server and the network" in report["latency"]["how"]


def test_the_python_api_evaluates_a_served_student_beside_a_local_teacher(tmp_path, tiny_model_dir):
    """Through `promptdistill.evaluate`; with a local teacher the base's KL is measured and the
    student's is the one left out, with its reason in report.json and report.md."""
    from promptdistill import evaluate

    task = _task(tmp_path, tiny_model_dir, None, general_ability=False)
    with ScriptedChatServer(answer=student_reply, served="served-student") as student:
        report = evaluate(str(task), student=student.url, student_model="served-student", inputs=str(tmp_path / "heldout.jsonl"),
                          out=tmp_path / "report", progress=False, log=lambda line: None)
    assert {c[0] for c in student.calls} == set(INPUTS) and all(c[2] == "Bearer none" for c in student.calls)  # no key named: none sent
    assert report["fidelity"]["kl_base"] is not None and report["fidelity"]["kl_student"] is None
    assert report["systems"]["base"]["kl_to_teacher"] is not None and report["systems"]["student"]["kl_to_teacher"] is None
    assert "KL(teacher ‖ student) not available for a student behind an API" in (tmp_path / "report" / "report.md").read_text()
    preds = [json.loads(line) for line in (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()]
    assert [p["label"] for p in preds if p["system"] == "student"] == [t if int(t[1:]) % 2 == 0 else "nope" for t in INPUTS]


@pytest.mark.parametrize("student, flags, field", [
    ("{url}", [], "--student-model"),  # a URL without the model it serves
    ("{model}", ["--student-model", "served-student"], "--student-model"),  # a local model with a served model's name
    ("{model}", ["--student-api-key-env", "STUDENT_KEY"], "--student-api-key-env"),
    ("http://user:pw@127.0.0.1:9/v1", ["--student-model", "m"], "--student"),  # credentials in the URL
    ("http://127.0.0.1:9/v1?api_key=abc", ["--student-model", "m"], "--student"),
    ("{url}", ["--student-model", "m", "--student-api-key-env", "UNSET_STUDENT_KEY"], "--student-api-key-env"),
    ("http://192.0.2.1:9/v1", ["--student-model", "m", "--student-api-key-env", "STUDENT_KEY"], "--student"),  # a key over plain http
])
def test_flag_errors_are_one_line_before_anything_is_written(student, flags, field, tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("STUDENT_KEY", KEY)
    task = _task(tmp_path, tiny_model_dir, None)
    out = tmp_path / "report"
    code = main(["eval", str(task), "--student", student.format(url="http://127.0.0.1:9/v1", model=tiny_model_dir), *flags,
                 "--inputs", str(tmp_path / "heldout.jsonl"), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and field in err and KEY not in err and "pw" not in err, err
    assert not out.exists()


def test_the_served_student_flags_are_refused_with_a_run_dir(tmp_path, tiny_model_dir, capsys):
    task = _task(tmp_path, tiny_model_dir, None)
    code = main(["eval", str(task), "--run-dir", str(tmp_path / "run"), "--student-model", "m", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--student-model" in err and not (tmp_path / "run").exists()


def test_an_interrupted_evaluation_resumes_without_asking_again(tmp_path, tiny_model_dir, capsys):
    """The student's server fails on w3 (HTTP 400, not retried): the replies before it are
    kept, and the rerun asks the student only for the rest (plus its one latency request);
    the teacher's answers are all kept. The resume record holds the URL and model, no key."""
    out = tmp_path / "report"
    with ScriptedChatServer() as teacher, ScriptedChatServer({"w3": [400]}, answer=student_reply, served="served-student") as student:
        task = _task(tmp_path, tiny_model_dir, teacher.url, general_ability=False)
        argv = ["eval", str(task), "--student", student.url, "--student-model", "served-student", "--inputs",
                str(tmp_path / "heldout.jsonl"), "--out", str(out), "--no-progress", "--set", "models.teacher_concurrency=1"]
        assert main(argv) == 2
        assert "rerun the same command" in capsys.readouterr().err
        partial = [json.loads(line) for line in (out / "predictions.partial.jsonl").read_text().splitlines()]
        assert partial[0]["settings"]["student_api"] == {"url": student.url, "model": "served-student"}
        assert [p["id"] for p in partial[1:] if p["system"] == "student"] == ["w0", "w1", "w2"]
        asked_teacher = len(teacher.calls)
        student.calls.clear()
        assert main(argv) == 0, capsys.readouterr().err
    # the rest of the held-out inputs, then one latency request (the first input, timed alone)
    assert [c[0] for c in student.calls] == ["w3", "w4", "w5", "w0"]
    assert len(teacher.calls) == asked_teacher + 1  # its latency request only
    report = json.loads((out / "report.json").read_text())
    assert report["systems"]["student"]["n"] == len(INPUTS) and not (out / "predictions.partial.jsonl").exists()


def test_a_served_students_free_text_replies_are_checked_like_a_local_ones(tmp_path, tiny_model_dir):
    """A text task: the reply checks and the prompt effect read the served student's replies."""
    from promptdistill import evaluate

    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps({"id": t, "text": t}) + "\n" for t in INPUTS), encoding="utf-8")

    def reply(text, body):  # short on even inputs, long on odd ones
        return "fine" if int(text[1:]) % 2 == 0 else "this reply is much too long"

    with ScriptedChatServer() as teacher, ScriptedChatServer(answer=reply, served="served-student") as student:
        task = write_task_file(tmp_path, tiny_model_dir, task=dict(system_prompt="Answer in three words.", reply_format="text",
                                                                  max_new_tokens=6),
                               models=dict(teacher="remote-teacher", teacher_backend="chat", teacher_url=teacher.url),
                               eval={"latency_requests": 1, "general_ability": False, "judge": "off"})
        with task.open("a", encoding="utf-8") as f:
            f.write('[[eval.checks]]\nname = "short"\nkind = "max_words"\nmax = 3\n')
        report = evaluate(str(task), student=student.url, student_model="served-student", inputs=str(tmp_path / "heldout.jsonl"),
                          out=tmp_path / "report", progress=False, log=lambda line: None)
    short = next(c for c in report["checks"]["checks"] if c["name"] == "short")["systems"]
    assert short["student"]["successes"] == sum(int(t[1:]) % 2 == 0 for t in INPUTS) and short["teacher"]["successes"] == len(INPUTS)
    assert report["prompt_effect"]["checks"]["short"]["student"] == pytest.approx(short["student"]["rate"])


@pytest.mark.parametrize("case", ["not served", "no server"])
def test_a_student_the_server_does_not_serve_is_refused_before_anything_is_written(case, tmp_path, tiny_model_dir, capsys):
    task = _task(tmp_path, tiny_model_dir, None)
    out = tmp_path / "report"
    with ScriptedChatServer(answer=student_reply, served="served-student") as student:
        url = student.url if case == "not served" else "http://127.0.0.1:9/v1"
        code = main(["eval", str(task), "--student", url, "--student-model", "other-model", "--inputs", str(tmp_path / "heldout.jsonl"),
                     "--out", str(out), "--no-progress", "--set", "models.teacher_max_retries=0"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert ("--student-model" in err and "'served-student'" in err) if case == "not served" else ("cannot reach" in err and "--student" in err)
    assert not out.exists() and student.calls == []  # no chat request (the model list is a GET, not recorded)


def test_the_base_served_behind_a_chat_endpoint_answers_as_the_local_base(tmp_path, tiny_model_dir):
    """A real model behind /v1/chat/completions (openai_server.serve, the server applying the
    model's own chat template): serving the base itself as the student gives the base row's
    replies, reply for reply, and its prompt tokens as the API counted them."""
    from openai_server import serve

    from promptdistill import evaluate

    task = _task(tmp_path, tiny_model_dir, None, general_ability=False)
    with serve(tiny_model_dir, "served-base") as url:
        report = evaluate(str(task), student=url, student_model="served-base", inputs=str(tmp_path / "heldout.jsonl"),
                          out=tmp_path / "report", progress=False, log=lambda line: None)
    preds = [json.loads(line) for line in (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()]
    replies = {system: [p["reply"] for p in preds if p["system"] == system] for system in ("base", "student")}
    assert len(replies["student"]) == len(INPUTS) and all(replies["base"]) and replies["student"] == replies["base"]
    assert report["systems"]["student"]["mean_prompt_tokens"] == report["systems"]["base"]["mean_prompt_tokens"]
