"""Synthesis: inputs written through the teacher backends, gated, reported, resumable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_jsonl, write_task_file
from promptdistill.config import Config, DataConfig, SynthesizeConfig, TaskConfig, config_from_dict
from promptdistill.errors import PromptDistillError
from promptdistill.records import read_inputs
from promptdistill.synthesis import jaccard, magpie_prefix, plan_quotas, quota_report, shingles, synthesize
from promptdistill.task import Task
from promptdistill.teachers import Completion, Teacher
from promptdistill.teachers.local import LocalTeacher

SYSTEM = "Which language is this text written in? Answer with Final Answer: xx (en, fr or de)."


def config(**synth) -> Config:
    settings = dict(max_new_tokens=12, round_size=4, drop_truncated=False)  # random models never stop on their own
    return Config(task=TaskConfig(system_prompt=SYSTEM, labels=["en", "fr", "de"]), data=DataConfig(seed=0),
                  synthesize=SynthesizeConfig(**{**settings, **synth}))


class Scripted(Teacher):
    """A generator that answers the requests with given texts, in order (to construct duplicates)."""

    backend = "transformers"
    name = "scripted"

    def __init__(self, tokenizer, texts):
        self._tok, self.texts, self.asked = tokenizer, list(texts), []

    @property
    def tokenizer(self):
        return self._tok

    def meta(self):
        return {}

    def label(self, *a, **k):
        raise AssertionError("not used")

    def complete(self, requests, batch_size=None):
        for r in requests:
            self.asked.append(r)
            text = self.texts.pop(0)
            yield Completion(self._tok(text, add_special_tokens=False)["input_ids"], True)


def test_quotas_split_strategies_labels_and_edge_cases():
    assert plan_quotas(10, ["prompt", "magpie"], ["en", "fr"], 0.2, True) == {"prompt/en": 2, "prompt/fr": 2, "prompt/edge": 1,
                                                                              "magpie/any": 5}
    assert plan_quotas(5, ["prompt"], [], 0.0, True) == {"prompt/any": 5}
    assert plan_quotas(6, ["prompt"], ["a", "b"], 0.0, False) == {"prompt/any": 6}


def test_near_duplicates_and_gates_are_dropped_with_reasons(tmp_path, tokenizer):
    texts = [
        "The weather in Paris is lovely this spring, isn't it?",
        "The weather in Paris is lovely this spring, isnt it?",        # near duplicate of the first
        "the weather in paris is LOVELY this spring, isn't it?",      # exact duplicate after normalizing
        "Final Answer: en",                                          # states an answer
        "ok",                                                        # too short (min_chars 3)
        "Wie spät ist es in Berlin gerade?",
        "Où se trouve la gare la plus proche ?",
        "Input: \"How do I reset my password?\"",                    # wrapper and quotes are cleaned
    ] + [f"completely different text number {i} about {w}" for i, w in enumerate(["cats", "boats", "rain", "tea"])]
    gen = Scripted(tokenizer, texts)
    cfg = config(strategies=["prompt"], label_quotas=False, edge_share=0.0, round_size=8)
    report = synthesize(cfg, 6, tmp_path / "inputs.jsonl", teacher=gen, progress=False)
    kept = [r["text"] for r in read_jsonl(tmp_path / "inputs.jsonl")]
    assert kept == ["The weather in Paris is lovely this spring, isn't it?", "Wie spät ist es in Berlin gerade?",
                    "Où se trouve la gare la plus proche ?", "How do I reset my password?",
                    "completely different text number 0 about cats", "completely different text number 1 about boats"]
    assert report["dropped_by_reason"] == {"exact_duplicate": 1, "near_duplicate": 1, "states_an_answer": 1, "too_short": 1}
    assert report["near_duplicate_rate"] == pytest.approx(1 / 8)
    assert 0 < report["distinct_1"] <= 1 and report["distinct_2"] is not None
    assert len(gen.asked) == 10  # a first round of 6, then 4 more for what the gates dropped
    md = (tmp_path / "inputs.synthesis.md").read_text()
    assert "near-duplicate rate 12.5%" in md and "| near_duplicate | 1 |" in md
    assert jaccard(shingles(texts[0], 5), shingles(texts[1], 5)) >= 0.7


def test_threshold_is_configurable(tmp_path, tokenizer):
    texts = ["The weather in Paris is lovely this spring, isn't it?", "The weather in Paris is lovely this spring, isnt it?"]
    cfg = config(strategies=["prompt"], label_quotas=False, edge_share=0.0, near_duplicate_threshold=0.99)
    report = synthesize(cfg, 2, tmp_path / "inputs.jsonl", teacher=Scripted(tokenizer, texts), progress=False)
    assert report["kept"] == 2


def test_local_backend_quotas_sources_and_determinism(tmp_path, varied_model):
    cfg = config(strategies=["prompt", "magpie"], edge_share=0.25)
    teacher = LocalTeacher(varied_model)
    report = synthesize(cfg, 10, tmp_path / "a" / "inputs.jsonl", teacher=teacher, progress=False)
    assert report["kept"] == 10
    assert {c: q["quota"] for c, q in report["quotas"].items()} == {"prompt/en": 2, "prompt/fr": 1, "prompt/de": 1,
                                                                   "prompt/edge": 1, "magpie/any": 5}
    assert all(q["kept"] == q["quota"] for q in report["quotas"].values())  # quotas respected, none exceeded
    inputs = read_inputs(tmp_path / "a" / "inputs.jsonl")
    sources = [e.meta["source"] for e in inputs]
    assert {s["strategy"] for s in sources} == {"prompt", "magpie"}
    asked = [s.get("asked_for") for s in sources if s["strategy"] == "prompt"]
    assert sorted(asked) == ["de", "edge", "en", "en", "fr"]
    for s in sources:
        assert s["generator"] == varied_model.name and isinstance(s["seed"], int)
        assert ("persona" in s) == (s["strategy"] == "prompt")
    temps = [s["temperature"] for s in sorted(sources, key=lambda s: s["request"])]
    assert temps == sorted(temps) and temps[0] == 0.7  # the ramp
    again = synthesize(cfg, 10, tmp_path / "b" / "inputs.jsonl", teacher=teacher, progress=False)
    assert again["kept"] == 10
    assert read_jsonl(tmp_path / "a" / "inputs.jsonl") == read_jsonl(tmp_path / "b" / "inputs.jsonl")
    # rerun in place: nothing is asked again
    assert synthesize(cfg, 10, tmp_path / "a" / "inputs.jsonl", teacher=teacher, progress=False)["requests"] == report["requests"]
    with pytest.raises(PromptDistillError, match="different settings"):
        synthesize(config(strategies=["prompt"]), 10, tmp_path / "a" / "inputs.jsonl", teacher=teacher, progress=False)


def test_after_labeling_the_label_distribution_is_reported_against_quotas(tmp_path, tokenizer):
    gen = Scripted(tokenizer, ["hello there friend", "bonjour mes amis", "guten morgen alle", "what a day it was"])
    cfg = config(strategies=["prompt"], edge_share=0.0, label_quotas=True)
    synthesize(cfg, 3, tmp_path / "inputs.jsonl", teacher=gen, progress=False)
    inputs = read_jsonl(tmp_path / "inputs.jsonl")
    asked = {r["id"]: r["meta"]["source"]["asked_for"] for r in inputs}
    labeled = [{"id": i, "label": "en", "meta": {"source": {"asked_for": a}}} for i, a in asked.items()]
    report = quota_report(tmp_path / "inputs.jsonl", labeled, rejected=0)
    lv = report["labels_vs_quotas"]
    assert lv["labels"]["en"] == {"quota": 1, "labeled": 3, "asked_and_got": 1}
    assert lv["agreement"] == pytest.approx(1 / 3)
    assert "asked for and got" in (tmp_path / "inputs.synthesis.md").read_text()


def test_seeds_strategy_paraphrases_real_inputs(tmp_path, tokenizer):
    from promptdistill.records import Example

    seeds = [Example(id="r1", text="Where is the train station?"), Example(id="r2", text="Il fait beau aujourd'hui.")]
    gen = Scripted(tokenizer, ["Where is the train station?", "Could you tell me where the station is?",
                               "Aujourd'hui il fait très beau.", "Where might the bus stop be?"])
    cfg = config(strategies=["seeds"])
    report = synthesize(cfg, 2, tmp_path / "inputs.jsonl", teacher=gen, seeds=seeds, progress=False)
    assert report["dropped_by_reason"] == {"exact_duplicate": 1}  # a copy of a real input is not a new input
    sources = [r["meta"]["source"] for r in read_jsonl(tmp_path / "inputs.jsonl")]
    assert all(s["strategy"] == "seeds" and s["seed_input"] in ("r1", "r2") and s["operation"] in ("paraphrase", "minimal_edit")
               for s in sources)
    prompt_text = tokenizer.decode(gen.asked[0].prompt)
    assert any(s.text in prompt_text for s in seeds)


def test_magpie_prefix_stops_inside_the_user_turn(tokenizer):
    ids = magpie_prefix(Task(TaskConfig(system_prompt=SYSTEM, labels=["en"])), tokenizer)
    assert tokenizer.decode(ids).endswith("<|im_start|>user\n") and SYSTEM in tokenizer.decode(ids)
    ids = magpie_prefix(Task(TaskConfig(user_template="Classify this:\n{text}\nDone.", labels=["en"])), tokenizer)
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nClassify this:\n")


def test_config_is_validated():
    base = {"task": {"system_prompt": SYSTEM}}
    with pytest.raises(PromptDistillError, match="synthesize.strategies"):
        config_from_dict({**base, "synthesize": {"strategies": ["prompt", "pasta"]}})
    with pytest.raises(PromptDistillError, match="seed_inputs"):
        config_from_dict({**base, "synthesize": {"strategies": ["seeds"]}})
    with pytest.raises(PromptDistillError, match="did you mean 'edge_share'"):
        config_from_dict({**base, "synthesize": {"edge_shares": 0.1}})
    with pytest.raises(PromptDistillError, match="data.synthesize"):
        config_from_dict({**base, "data": {"synthesize": -1}})


@pytest.fixture(scope="module")
def openai_url(varied_model):
    sys.path.insert(0, str(Path(__file__).parent))
    from openai_server import serve

    with serve(varied_model.name, varied_model.name) as url:
        yield url


def test_server_backend_matches_local_greedy(tmp_path, varied_model, openai_url):
    from promptdistill.teachers.server import ServerTeacher

    cfg = config(strategies=["prompt"], temperature_min=0.0, temperature_max=0.0, max_new_tokens=8)
    server = ServerTeacher(openai_url, varied_model.name, concurrency=3)
    got = synthesize(cfg, 4, tmp_path / "server" / "inputs.jsonl", teacher=server, progress=False)
    synthesize(cfg, 4, tmp_path / "local" / "inputs.jsonl", teacher=LocalTeacher(varied_model), progress=False)
    assert got["kept"] == 4
    texts = lambda side: [r["text"] for r in read_jsonl(tmp_path / side / "inputs.jsonl")]  # noqa: E731
    assert texts("server") == texts("local")
    # magpie through /completions with the cut-open template's token ids
    report = synthesize(config(strategies=["magpie"]), 3, tmp_path / "magpie" / "inputs.jsonl", teacher=server, progress=False)
    assert report["kept"] == 3


def _synth_cmd(task: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "promptdistill", "synthesize", str(task), "--n", "40", "--out", str(out), "--no-progress"]


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_output(tmp_path, tiny_model_dir):
    task = write_task_file(tmp_path, tiny_model_dir, task=dict(system_prompt=SYSTEM, labels=["en", "fr", "de"]),
                           synthesize=dict(strategies=["prompt", "magpie"], max_new_tokens=16, round_size=3, drop_truncated=False))
    whole, cut = tmp_path / "whole" / "inputs.jsonl", tmp_path / "cut" / "inputs.jsonl"
    assert subprocess.run(_synth_cmd(task, whole), capture_output=True).returncode == 0
    raw = cut.with_name("inputs.raw.jsonl")
    proc = subprocess.Popen(_synth_cmd(task, cut), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while (raw.read_bytes().count(b"\n") if raw.exists() else 0) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "synthesis finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not cut.exists()
    assert subprocess.run(_synth_cmd(task, cut), capture_output=True).returncode == 0
    assert read_jsonl(cut) == read_jsonl(whole)
    ids = [r["request"] for r in read_jsonl(raw)]
    assert ids == list(range(len(ids)))  # nothing asked twice, nothing lost
    assert json.loads(cut.with_name("inputs.synthesis.json").read_text())["kept"] == 40


# -- run: data.synthesize --------------------------------------------------

def _run_config(base: Path, model_dir: str, inputs: bool):
    raw = {
        "task": {"name": "lang", "system_prompt": SYSTEM, "labels": ["en", "fr", "de"], "answer_mode": "choose"},
        "data": {"heldout_fraction": 0.25, "seed": 0, "synthesize": 8, **({"inputs": "inputs.jsonl"} if inputs else {})},
        "models": {"teacher": model_dir, "student": model_dir, "device": "cpu", "dtype": "float32"},
        "train": {"lora_rank": 4, "lora_alpha": 8, "max_steps": 2, "batch_size": 4, "eval_every": 2, "save_every": 2},
        "eval": {"include_base": False},
        "synthesize": {"strategies": ["prompt", "seeds"] if inputs else ["prompt"], "max_new_tokens": 10, "round_size": 8,
                       "drop_truncated": False},
    }
    cfg = config_from_dict(raw)
    cfg.base_dir = base
    return cfg


@pytest.mark.parametrize("inputs", [False, True], ids=["prompt-alone", "with-real-inputs"])
def test_run_from_a_prompt_alone_or_with_real_inputs(tmp_path, tiny_model_dir, inputs):
    from promptdistill.pipeline import run_pipeline

    if inputs:
        rows = [{"id": f"r{i}", "text": t, "label": lab} for i, (t, lab) in enumerate(
            [("hello my friend", "en"), ("bonjour mon ami", "fr"), ("guten tag mein freund", "de"), ("good morning all", "en"),
             ("bonne nuit", "fr"), ("gute nacht", "de"), ("see you soon", "en"), ("à bientôt", "fr")])]
        (tmp_path / "inputs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run = tmp_path / "run"
    report = run_pipeline(_run_config(tmp_path, tiny_model_dir, inputs), run, progress=False, log=lambda m: None)
    heldout = read_jsonl(run / "split" / "heldout.jsonl")
    train = read_jsonl(run / "split" / "train.jsonl")
    synthetic = lambda rs: [r for r in rs if (r.get("meta") or {}).get("synthetic")]  # noqa: E731
    md = (run / "eval" / "report.md").read_text()
    if inputs:
        assert report["heldout_source"] == "real" and not synthetic(heldout) and heldout
        assert all(r["id"].startswith("r") for r in heldout)
        assert len(synthetic(train)) == report["synthetic_train"] > 0
        assert "held-out inputs are real inputs only" in md
    else:
        assert report["heldout_source"] == "synthetic" and heldout and len(synthetic(heldout)) == len(heldout)
        assert "held-out inputs are synthetic" in md
    synth = json.loads((run / "synth" / "inputs.synthesis.json").read_text())
    assert synth["labels_vs_quotas"]["labeled"] == len(synthetic(train)) + len(synthetic(heldout))
    # rerun: every stage is complete, nothing generated again
    raw_lines = (run / "synth" / "inputs.raw.jsonl").read_text()
    run_pipeline(_run_config(tmp_path, tiny_model_dir, inputs), run, progress=False, log=lambda m: None)
    assert (run / "synth" / "inputs.raw.jsonl").read_text() == raw_lines


@pytest.mark.vllm
def test_vllm_backend_matches_local_greedy(tmp_path):
    """`make test-vllm`: VllmTeacher.complete against LocalTeacher on the packaged SmolLM2."""
    import os

    from promptdistill.teachers.vllm_engine import VllmTeacher

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cfg = config(strategies=["prompt", "magpie"], temperature_min=0.0, temperature_max=0.0, max_new_tokens=16)
    vllm = VllmTeacher("smollm2-135m-instruct", dtype="float32", options={"max_model_len": 2048, "enforce_eager": True})
    local = LocalTeacher.load("smollm2-135m-instruct", "cpu", "float32")
    synthesize(cfg, 4, tmp_path / "vllm" / "inputs.jsonl", teacher=vllm, progress=False)
    synthesize(cfg, 4, tmp_path / "local" / "inputs.jsonl", teacher=local, progress=False)
    texts = lambda side: [r["text"] for r in read_jsonl(tmp_path / side / "inputs.raw.jsonl")]  # noqa: E731
    assert texts("vllm") == texts("local")


def test_held_out_inputs_are_avoided_not_used_as_seeds(tmp_path, tokenizer):
    from promptdistill.records import Example

    held_out = [Example(id="h1", text="Where is the nearest train station, please?")]
    gen = Scripted(tokenizer, ["Where is the nearest train station please?", "A completely different question about tea"])
    cfg = config(strategies=["prompt"], label_quotas=False, edge_share=0.0, round_size=1)
    report = synthesize(cfg, 1, tmp_path / "inputs.jsonl", teacher=gen, avoid=held_out, progress=False)
    assert report["dropped_by_reason"] == {"near_duplicate": 1}
    assert [r["text"] for r in read_jsonl(tmp_path / "inputs.jsonl")] == ["A completely different question about tea"]
    assert "nearest train station" not in tokenizer.decode(gen.asked[0].prompt)


def test_cli_synthesize_label_then_labels_against_quotas(tmp_path, tiny_model_dir, capsys):
    from promptdistill.cli import main

    task = write_task_file(tmp_path, tiny_model_dir, task=dict(system_prompt=SYSTEM, labels=["en", "fr", "de"], answer_mode="choose"),
                           synthesize=dict(edge_share=0.0, max_new_tokens=8, drop_truncated=False))
    out, labels = tmp_path / "inputs.jsonl", tmp_path / "labels.jsonl"
    assert main(["synthesize", str(task), "--n", "3", "--out", str(out), "--no-progress"]) == 0
    assert main(["label", str(task), "--inputs", str(out), "--out", str(labels), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["synthesize", str(task), "--n", "3", "--out", str(out), "--labeled", str(labels), "--no-progress"]) == 0
    lv = json.loads(capsys.readouterr().out)["labels_vs_quotas"]
    assert lv["labeled"] == 3 and sum(v["labeled"] for v in lv["labels"].values()) == 3
    assert {k: v["quota"] for k, v in lv["labels"].items() if v["quota"]} == {"en": 1, "fr": 1, "de": 1}
    assert main(["synthesize", str(task), "--n", "3", "--out", str(out), "--strategies", "prompt,pasta"]) == 2
    assert "synthesize.strategies" in capsys.readouterr().err


def test_a_permissive_answer_pattern_does_not_drop_every_input(tmp_path, tokenizer):
    cfg = config(strategies=["prompt"], label_quotas=False, edge_share=0.0)
    cfg.task = TaskConfig(system_prompt=SYSTEM, answer_pattern=r"^\s*(\S+)", answer_template="{label}")
    report = synthesize(cfg, 2, tmp_path / "inputs.jsonl", teacher=Scripted(tokenizer, ["first input here", "second one there"]),
                        progress=False)
    assert report["kept"] == 2


def test_conversations_are_answered_by_the_teacher_and_continued_turn_by_turn(tmp_path, tokenizer):
    """synthesize.turns = 3: each kept input opens a conversation; the teacher (with its prompt)
    answers, the generator writes the next user turn after the conversation so far; a follow-up
    that fails the gates ends its conversation at the last good user turn; a rerun asks nothing again."""
    firsts = ["How do I say good night in French?", "Is 'Guten Tag' German or Dutch?"]
    # Per turn: replies for the open conversations, then their follow-ups, in input order.
    steps = ["Bonne nuit.", "German.",                        # turn 2: replies
             "And good morning?", "ok",                       # turn 2: follow-ups ("ok" is too short: conversation 2 ends)
             "Bonjour.",                                      # turn 3: reply to conversation 1
             "And good morning in German, please?"]           # turn 3: follow-up
    gen = Scripted(tokenizer, firsts + steps)
    cfg = config(strategies=["prompt"], label_quotas=False, edge_share=0.0, turns=3)
    cfg.task = TaskConfig(system_prompt=SYSTEM, reply_format="text")
    report = synthesize(cfg, 2, tmp_path / "inputs.jsonl", teacher=gen, progress=False)
    rows = read_jsonl(tmp_path / "inputs.jsonl")
    u, a = (lambda t: {"role": "user", "content": t}), (lambda t: {"role": "assistant", "content": t})  # noqa: E731
    assert rows[0]["messages"] == [u(firsts[0]), a("Bonne nuit."), u("And good morning?"), a("Bonjour."),
                                   u("And good morning in German, please?")]
    assert "messages" not in rows[1] and rows[1]["text"] == firsts[1]  # its only follow-up was dropped
    assert report["turns"] == {"asked": 3, "mean_user_turns": 2.0, "reached_all_turns": 1, "stopped_by_reason": {"too_short": 1}}
    # The reply requests carry the task's system prompt and the conversation; the follow-ups open a user turn after it.
    reply_prompt = tokenizer.decode(gen.asked[2].prompt)
    assert SYSTEM in reply_prompt and firsts[0] in reply_prompt and reply_prompt.rstrip().endswith("assistant")
    follow_prompt = tokenizer.decode(gen.asked[4].prompt)
    assert "Bonne nuit." in follow_prompt and follow_prompt.rstrip().endswith("user")
    # Read back as conversation inputs; a rerun reuses every step (the generator has nothing left to say).
    assert read_inputs(tmp_path / "inputs.jsonl")[0].text == "And good morning in German, please?"
    (tmp_path / "inputs.jsonl").unlink()
    again = synthesize(cfg, 2, tmp_path / "inputs.jsonl", teacher=Scripted(tokenizer, []), progress=False)
    assert read_jsonl(tmp_path / "inputs.jsonl") == rows and again["turns"] == report["turns"]


def test_turns_setting_is_checked():
    with pytest.raises(PromptDistillError) as info:
        config_from_dict({"task": {"system_prompt": "p"}, "synthesize": {"turns": 0}})
    assert info.value.field == "synthesize.turns"
