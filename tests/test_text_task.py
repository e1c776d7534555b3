"""Text tasks (reply_format = "text") and conversation inputs, end to end on the tiny model:
the CLI and the Python API, the records each stage writes, and what the student is trained on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_jsonl, write_jsonl, write_task_file

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "You are a terse assistant. Answer in at most ten words and end with a question."
SINGLE = ["What is tea?", "Name a red fruit.", "How far is the moon?", "Why is the sky blue?",
          "What is a verb?", "Is it cold in Oslo?"]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def conversations() -> list[dict]:
    """Inputs mixing single texts and multi-turn conversations ending in a user turn."""
    rows = [{"id": f"s{i}", "text": t} for i, t in enumerate(SINGLE)]
    rows += [{"id": f"c{i}", "messages": [user(f"Tell me about topic {i}."), assistant(f"Topic {i} is broad. What part?"),
                                          user(f"The history of topic {i}, please.")]} for i in range(6)]
    return rows


def cli(args, cwd, stdin: bytes = b""):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "promptdistill", *map(str, args)], cwd=cwd, env=env, input=stdin,
                          capture_output=True, timeout=600)


def text_task_file(folder, model_dir, **task):
    write_jsonl(Path(folder) / "inputs.jsonl", conversations())
    return write_task_file(folder, model_dir, task=dict(name="terse", system_prompt=PROMPT, reply_format="text", max_new_tokens=6, temperature=1.0,
                                                        **task),
                           data=dict(inputs="inputs.jsonl", heldout_fraction=0.34, seed=0),
                           train=dict(max_steps=2, batch_size=4, lora_rank=4, lora_alpha=8, save_every=2, eval_every=2),
                           eval=dict(max_examples=0, include_base=True, general_ability=False, latency_requests=2))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_model_dir):
    """`promptdistill run` on a text task with conversation inputs, truncated replies kept."""
    w = tmp_path_factory.mktemp("text-run")
    text_task_file(w, tiny_model_dir, truncated_replies="keep")
    done = cli(["run", "task.toml", "--run-dir", "run", "--no-progress"], cwd=w)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return w


def test_run_labels_trains_and_evaluates_a_text_task_with_conversations(text_run):
    w = text_run
    train = read_jsonl(w / "run/labels/train.jsonl") + read_jsonl(w / "run/labels/train.rejects.jsonl")
    heldout = read_jsonl(w / "run/split/heldout.jsonl")
    # The tiny random model never stops within 6 tokens: every reply is truncated, and kept.
    assert train and all(r["status"] == "truncated" for r in train)
    assert not read_jsonl(w / "run/labels/train.rejects.jsonl")
    by_id = {r["id"]: r for r in train}
    conv = next(r for r in train if r["id"].startswith("c"))
    # The student's conversation: the input's turns (no system prompt), then the teacher's whole reply.
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
    assert conv["messages"][-1]["content"] == conv["teacher_reply"].strip() == conv["label"]
    assert conv["text"] == conv["messages"][2]["content"]
    assert all(PROMPT not in json.dumps(r["messages"]) for r in train)
    # A conversation is one unit of the split: on one side only.
    held_ids = {r["id"] for r in heldout}
    assert held_ids.isdisjoint(by_id) and held_ids
    assert any("messages" in r for r in read_jsonl(w / "run/split/train.jsonl"))
    report = json.loads((w / "run/eval/report.json").read_text())
    assert report["systems"]["student"]["agreement"] is None and report["systems"]["student"]["confusion"] == {}
    assert "reference_points" not in report and report["majority_label"] is None
    # KL per reply token and latency still there; the replies stored per system for the text sections.
    assert report["systems"]["student"]["kl_to_teacher"] is not None and report["systems"]["base"]["kl_to_teacher"] is not None
    assert report["systems"]["student"]["median_latency_ms"] is not None
    preds = read_jsonl(w / "run/eval/predictions.jsonl")
    assert {p["system"] for p in preds} == {"teacher", "base", "student"}
    assert all(p["label"] == p["reply"].strip() for p in preds if p["status"] == "ok")
    assert (w / "run/eval/report.md").exists()


def test_text_sections_get_every_systems_reply_per_example(text_run, monkeypatch):
    """The evaluation hands the text task's sections each system's reply, per held-out input, in order."""
    from promptdistill.config import load_config
    from promptdistill.evaluation import systems
    from promptdistill.pipeline import evaluate_run
    from promptdistill.records import read_inputs

    seen = {}

    def sections(task, settings, examples, replies, judge, out_dir, **kw):
        seen.update(ids=[e.id for e in examples], replies=replies)
        return {"text_checks": {"n": len(examples)}}

    monkeypatch.setattr(systems, "text_sections", sections)
    heldout = read_inputs(text_run / "run/split/heldout.jsonl")
    report = evaluate_run(load_config(text_run / "task.toml"), text_run / "run", heldout, progress=False)
    assert report["text_checks"] == {"n": len(heldout)} and seen["ids"] == [e.id for e in heldout]
    preds = read_jsonl(text_run / "run/eval/predictions.jsonl")
    for system in ("teacher", "base", "student"):
        by_id = {p["id"]: p for p in preds if p["system"] == system}
        assert seen["replies"][system] == [by_id[i]["label"] or "" for i in seen["ids"]]
        assert all(isinstance(r, str) for r in seen["replies"][system])


def test_predict_takes_a_conversation_as_json_on_stdin(text_run):
    convo = {"messages": [user("Hi there."), assistant("Hello! How can I help?"), user("Tell me a joke.")]}
    lines = (json.dumps(convo) + "\n" + json.dumps({"text": "What is tea?"}) + "\n").encode()
    done = cli(["predict", "--run-dir", "run", "--json"], cwd=text_run, stdin=lines)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert len(out) == 2 and all(o["reply"] for o in out)

    # The same answers from the Python API, and from a conversation that differs only in its history: another prompt.
    from promptdistill.predict import load_student, predict_texts

    task, student = load_student(text_run / "run", device="cpu")
    got = predict_texts(task, student, [convo["messages"], "What is tea?"])
    assert [reply for _, reply in got] == [o["reply"] for o in out]


def test_predict_refuses_a_conversation_ending_in_an_assistant_turn(text_run):
    bad = json.dumps({"messages": [user("Hi."), assistant("Hello!")]}).encode() + b"\n"
    done = cli(["predict", "--run-dir", "run", "--json"], cwd=text_run, stdin=bad)
    err = done.stderr.decode()
    assert done.returncode == 2 and err.count("\n") == 1 and "<stdin>:1" in err and "ends in an assistant turn" in err, err


def test_python_api_text_task_rejects_truncated_replies_by_default(tmp_path, tiny_model_dir):
    """The same task through the Python API, with task.truncated_replies left at "reject": cut replies are
    counted and set aside, and the labels summary says how many."""
    from promptdistill.config import load_config
    from promptdistill.labeling import label_inputs
    from promptdistill.records import read_inputs
    from promptdistill.teachers import load_teacher

    cfg = load_config(text_task_file(tmp_path, tiny_model_dir))
    examples = read_inputs(tmp_path / "inputs.jsonl")
    summary = label_inputs(cfg, examples, load_teacher(cfg), tmp_path / "labels.jsonl")
    assert summary["truncated"] == summary["rejected"] == len(examples) and summary["labeled"] == 0
    rejected = read_jsonl(tmp_path / "labels.rejects.jsonl")
    # A rejected reply leaves the student conversation without a target turn.
    assert all(r["messages"][-1]["role"] == "user" for r in rejected)


def test_record_status_of_a_text_reply():
    """A reply that stopped is "ok"; one cut at the limit is "truncated", with its target turn only when kept;
    an empty one is set aside. A label task's parsed answer stays "ok" however its reply ended."""
    from conftest import make_task
    from promptdistill.records import Example
    from promptdistill.teachers.records import vote

    convo = [user("Hi."), assistant("Hello!"), user("Bye?")]
    e = Example(id="1", text="Bye?", messages=convo)
    for keep in ("reject", "keep"):
        task = make_task(system_prompt=PROMPT, labels=[], reply_format="text", truncated_replies=keep)
        done = vote(task, e, ["  Bye now. See you?  "], truncated=[False])
        assert (done.status, done.label, done.messages) == ("ok", "Bye now. See you?", convo + [assistant("Bye now. See you?")])
        cut = vote(task, e, ["Bye now, and"], truncated=[True])
        assert cut.status == "truncated" and cut.trainable == (keep == "keep")
        assert cut.messages == (convo + [assistant("Bye now, and")] if keep == "keep" else convo)
        empty = vote(task, e, ["<think>hm</think>  "], truncated=[False])
        assert empty.status == "empty_reply" and not empty.trainable
    label_task = make_task()
    assert vote(label_task, Example(id="1", text="Hello"), ["Final Answer: en"], truncated=[True]).status == "ok"


def test_truncated_kept_reply_is_trained_without_its_end_of_turn(tokenizer):
    from promptdistill.records import LabeledExample
    from promptdistill.render import end_of_turn_ids
    from promptdistill.training.data import render_for_training

    def record(status):
        return LabeledExample(id=status, text="q", gold_label=None, teacher_reply="a b c", label="a b c", status=status,
                              messages=[user("q"), assistant("a b c")])

    (ok, cut), _ = render_for_training([record("ok"), record("truncated")], tokenizer, 512)
    eot = end_of_turn_ids(tokenizer)
    assert ok.input_ids == cut.input_ids
    assert ok.weights[-1] == 1.0 and ok.input_ids[-1] in eot
    assert cut.weights[-1] == 0.0 and cut.num_trained == ok.num_trained - 1


def test_every_backend_labels_a_conversation_alike(tmp_path, tokenizer):
    """transformers in this process, a vLLM-style server (token-id prompts) and a chat API (the
    conversation sent as its messages, rendered by the server's own template) give the same text
    records for the same conversations, truncation included: a model whose greedy replies vary."""
    from openai_server import serve

    from conftest import build_varied_model
    from promptdistill.config import Config, ModelsConfig, TaskConfig
    from promptdistill.labeling import label_inputs
    from promptdistill.records import read_inputs
    from promptdistill.teachers import load_teacher

    folder = tmp_path / "varied"
    build_varied_model(folder, tokenizer, seed=5)
    write_jsonl(tmp_path / "inputs.jsonl", conversations()[4:9])
    examples = read_inputs(tmp_path / "inputs.jsonl")
    records = {}
    # Served under its folder's name: the vllm-server backend renders prompts with that tokenizer here.
    with serve(str(folder), str(folder)) as url:
        for backend in ("transformers", "vllm-server", "chat"):
            teacher = str(folder)
            cfg = Config(task=TaskConfig(system_prompt=PROMPT, reply_format="text", max_new_tokens=12, top_logprobs=0,
                                         truncated_replies="keep"),
                         models=ModelsConfig(teacher=teacher, student=str(folder), teacher_backend=backend, device="cpu",
                                             dtype="float32", teacher_url=None if backend == "transformers" else url))
            out = tmp_path / f"{backend}.jsonl"
            label_inputs(cfg, examples, load_teacher(cfg), out, progress=False)
            rows = read_jsonl(out) + read_jsonl(out.with_name(f"{backend}.rejects.jsonl"))
            records[backend] = sorted((r["id"], r["status"], r["teacher_reply"], json.dumps(r["messages"])) for r in rows)
    assert records["transformers"] == records["vllm-server"] == records["chat"]
    statuses = {status for _, status, _, _ in records["chat"]}
    assert "truncated" in statuses  # at least one reply ran into the limit: the flag travels from every backend
    convo = next(json.loads(m) for i, _, _, m in records["chat"] if i.startswith("c"))
    assert [m["role"] for m in convo][:3] == ["user", "assistant", "user"]


def test_python_api_runs_a_label_task_on_conversations(tmp_path, tiny_model_dir):
    """A multi-turn label task through run_pipeline: choose mode scores the label set after each
    conversation (teacher with its prompt, student without), agreement and KL as for single texts."""
    from promptdistill.config import load_config
    from promptdistill.pipeline import run_pipeline

    rows = []
    for i in range(10):
        lang, text = [("en", "Good night"), ("fr", "Bonne nuit")][i % 2]
        rows.append({"id": f"c{i}", "label": lang, "messages": [user(f"Translate item {i}, please."), assistant("Sure, send it."),
                                                              user(f"{text} {i}")]})
    write_jsonl(tmp_path / "inputs.jsonl", rows)
    task = write_task_file(tmp_path, tiny_model_dir, task=dict(labels=["en", "fr"], answer_mode="choose", max_new_tokens=6),
                           data=dict(inputs="inputs.jsonl", heldout_fraction=0.3),
                           train=dict(max_steps=1, batch_size=2, lora_rank=2, lora_alpha=4),
                           eval=dict(include_base=True, general_ability=False, latency_requests=1))
    report = run_pipeline(load_config(task), tmp_path / "run", progress=False, log=lambda *_: None)
    labeled = read_jsonl(tmp_path / "run/labels/train.jsonl")
    assert labeled and all(r["messages"][:3] == next(x["messages"] for x in rows if x["id"] == r["id"]) for r in labeled)
    assert all(r["messages"][-1]["content"] == f"Final Answer: {r['label']}" for r in labeled)
    student = report["systems"]["student"]
    assert student["agreement"] is not None and student["kl_to_teacher"] is not None and report["reference_points"]
    # The user template wraps the last user turn only: the teacher's prompt token count covers the history too.
    assert report["systems"]["teacher"]["mean_prompt_tokens"] > student["mean_prompt_tokens"]


def test_run_with_a_heldout_file_trains_on_every_input_and_evaluates_on_that_file(tmp_path, tiny_model_dir):
    """data.heldout_inputs: the evaluation's inputs are exactly that file's, and
    every input of data.inputs is on the training side (heldout_fraction unused)."""
    text_task_file(tmp_path, tiny_model_dir, truncated_replies="keep")
    held = [{"id": "h0", "text": "What is coffee?"},
            {"id": "h1", "messages": [user("Hi."), assistant("Hello. What now?"), user("Tell me a joke.")]}]
    write_jsonl(tmp_path / "held.jsonl", held)
    done = cli(["run", "task.toml", "--run-dir", "run", "--no-progress", "--set", "data.heldout_inputs='held.jsonl'",
                "--set", "eval.judge='off'"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert [r["id"] for r in read_jsonl(tmp_path / "run/split/heldout.jsonl")] == ["h0", "h1"]
    assert [r["id"] for r in read_jsonl(tmp_path / "run/split/train.jsonl")] == [r["id"] for r in conversations()]
    predicted = {json.loads(line)["id"] for line in (tmp_path / "run/eval/predictions.jsonl").read_text().splitlines()}
    assert predicted == {"h0", "h1"}
