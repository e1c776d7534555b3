"""The two ways a batch attends to the teacher's cached prompt label alike.

`models.prefix_attention` picks cascade attention (one copy of the prompt's
cache, our two-part attention: the CPU's default) or expand (a copy of the
prompt's cache per row under the model's own attention: the GPU's default).
In float32 both must give the replies one request at a time gives
(`reuse_prefix=False, batch_size=1`), in generate mode with and without top
log-probabilities, for free-text replies, and in choose mode; on tiny random
models and once on the packaged SmolLM2.
"""

from __future__ import annotations

import pytest

from conftest import read_jsonl
from promptdistill.config import Config, TaskConfig, config_from_dict, load_config
from promptdistill.errors import PromptDistillError
from promptdistill.labeling import label_inputs
from promptdistill.models import load_model
from promptdistill.records import Example, read_inputs
from promptdistill.teachers import load_teacher
from promptdistill.teachers.local import LocalTeacher

TEXTS = ["Hello, how are you?", "Bonjour, comment \u00e7a va ?", "Wie geht es dir?", "\u4f60\u597d\u5417\uff1f",
         "\u00bfC\u00f3mo est\u00e1s, amigo m\u00edo, despu\u00e9s de tanto tiempo?", "Text with {text} and {braces}", "ok"]
LABELS = ["en", "fr", "de", "zh", "ot"]
PROMPT = "Say a few words about the text below, in the text's language.\nRules:\n- be brief\n- be kind\n"

CONFIGS = {
    "generate": dict(answer_pattern=r"^\s*(\S+)", answer_template="{label}", max_new_tokens=8),
    "generate-top-logprobs": dict(answer_pattern=r"^\s*(\S+)", answer_template="{label}", max_new_tokens=8, top_logprobs=3),
    "text": dict(reply_format="text", max_new_tokens=8, truncated_replies="keep"),
    "choose": dict(labels=LABELS, answer_mode="choose", max_new_tokens=6),
}
COMPARED = ("id", "teacher_reply", "label", "status", "votes", "messages")


def label_three_ways(loaded, cfg: Config, examples, tmp_path, batch_size: int = 4) -> dict[str, list[dict]]:
    """Records of one request at a time, and of batches under each strategy."""
    runs = {}
    for name, attention, reuse, batch in (("one-request", "auto", False, 1), ("cascade", "cascade", True, batch_size),
                                          ("expand", "expand", True, batch_size)):
        out = tmp_path / f"{name}.jsonl"
        teacher = LocalTeacher(loaded, prefix_attention=attention)
        label_inputs(cfg, examples, teacher, out, batch_size=batch, progress=False, reuse_prefix=reuse)
        runs[name] = sorted(read_jsonl(out) + read_jsonl(out.with_name(out.stem + ".rejects.jsonl")), key=lambda r: r["id"])
        if reuse:
            assert teacher.prefix_cache(cfg_task(cfg)).strategy == attention
    return runs


def cfg_task(cfg: Config):
    from promptdistill.task import Task

    return Task(cfg.task)


def assert_same(runs: dict[str, list[dict]], n: int) -> None:
    one = runs["one-request"]
    assert len(one) == n
    for name in ("cascade", "expand"):
        assert len(runs[name]) == n
        for got, want in zip(runs[name], one):
            assert {k: got.get(k) for k in COMPARED} == {k: want.get(k) for k in COMPARED}, name
            if want.get("label_probs") is not None:
                assert got["label_probs"] == pytest.approx(want["label_probs"], abs=1e-5)
            assert (got.get("teacher_logprobs") is None) == (want.get("teacher_logprobs") is None), name
            if want.get("teacher_logprobs") is not None:
                mine, theirs = got["teacher_logprobs"], want["teacher_logprobs"]
                assert mine["token_ids"] == theirs["token_ids"]
                assert [[t for t, _ in step] for step in mine["top"]] == [[t for t, _ in step] for step in theirs["top"]]
                assert [v for step in mine["top"] for _, v in step] == pytest.approx([v for step in theirs["top"] for _, v in step],
                                                                                    abs=1e-4)


@pytest.mark.parametrize("mode", sorted(CONFIGS))
def test_expand_and_cascade_label_as_one_request_at_a_time(varied_model, tmp_path, mode):
    cfg = Config(task=TaskConfig(system_prompt=PROMPT, **CONFIGS[mode]))
    examples = [Example(id=f"id{i}", text=t) for i, t in enumerate(TEXTS)]
    runs = label_three_ways(varied_model, cfg, examples, tmp_path)
    assert_same(runs, len(TEXTS))
    if mode != "choose":
        replies = {r["teacher_reply"] for r in runs["one-request"]}
        assert len(replies) > 1, "replies should differ between inputs for this test to mean anything"
    if mode == "generate-top-logprobs":
        assert all(r["teacher_logprobs"]["top"] for r in runs["expand"])


def test_expand_and_cascade_label_conversations_alike_on_the_tied_tiny_model(tiny, tmp_path):
    cfg = Config(task=TaskConfig(user_template=PROMPT + "Text:\n{text}", **CONFIGS["generate-top-logprobs"]))
    examples = [Example(id=f"id{i}", text=t) for i, t in enumerate(TEXTS[:5])]
    examples.append(Example(id="conv", text="And now?", messages=[{"role": "user", "content": "Hi"},
                                                                 {"role": "assistant", "content": "Hello."},
                                                                 {"role": "user", "content": "And now?"}]))
    assert_same(label_three_ways(tiny, cfg, examples, tmp_path, batch_size=3), len(examples))


def test_the_task_files_prefix_attention_reaches_the_teacher(tiny_model_dir):
    cfg = config_from_dict({"task": {"system_prompt": "p"}, "models": {"teacher": tiny_model_dir, "device": "cpu",
                                                                       "prefix_attention": "expand"}})
    teacher = load_teacher(cfg)
    assert teacher.prefix_attention == "expand"
    assert teacher.prefix_cache(cfg_task(cfg)).strategy == "expand"


def test_an_unknown_prefix_attention_is_refused_when_the_task_file_is_read(tmp_path):
    task = tmp_path / "task.toml"
    task.write_text('[task]\nsystem_prompt = "p"\n[models]\nprefix_attention = "paged"\n', encoding="utf-8")
    with pytest.raises(PromptDistillError, match="auto, cascade, expand") as e:
        load_config(task)
    assert "models.prefix_attention" in str(e.value) and "task.toml" in str(e.value)


@pytest.mark.slow
def test_expand_and_cascade_label_as_one_request_at_a_time_on_smollm2(tmp_path):
    """The packaged SmolLM2-135M-Instruct on the language-identification task,
    generate mode with top log-probabilities (a real model's peaked logits)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "examples/language_id/task.toml")
    cfg.task.top_logprobs = 2
    cfg.task.max_new_tokens = 6
    examples = read_inputs(cfg.resolve_path(cfg.data.inputs))[:5]
    runs = label_three_ways(load_model("smollm2-135m-instruct", "cpu", "float32"), cfg, examples, tmp_path)
    assert_same(runs, len(examples))
