"""Duplicate inputs are reported (and dropped on request); inputs too long for the student are reported by line."""

from __future__ import annotations

from promptdistill.cli import main
from promptdistill.config import config_from_dict
from promptdistill.inputs import fit_inputs
from promptdistill.records import describe_duplicates, drop_duplicates, find_duplicates, read_inputs
from promptdistill.render import render_prompt
from promptdistill.task import Task


def _inputs(tmp_path, lines):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_duplicates_reported_with_lines_and_dropped(tmp_path):
    path = _inputs(tmp_path, ["hello", "world", "hello", "again", "world", "hello"])
    examples = read_inputs(path)
    groups = find_duplicates(examples)
    assert [[e.line for e in g] for g in groups] == [[1, 3, 6], [2, 5]]
    message = describe_duplicates(groups, path)
    assert "3 duplicate inputs in 2 groups" in message and "lines 1, 3, 6" in message and "lines 2, 5" in message
    assert [e.text for e in drop_duplicates(examples)] == ["hello", "world", "again"]


def test_label_cli_reports_and_dedupes(tmp_path, tiny_model_dir, capsys):
    path = _inputs(tmp_path, ["same text", "other", "same text"])
    task = tmp_path / "task.toml"
    task.write_text(f'[task]\nuser_template = "{{text}}"\nlabels = ["a", "b"]\nanswer_mode = "choose"\n'
                    f'[models]\nteacher = "{tiny_model_dir}"\ndevice = "cpu"\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["label", str(task), "--inputs", str(path), "--out", str(out), "--dedupe", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "1 duplicate inputs in 1 groups" in err and "lines 1, 3" in err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2


def _cfg(tiny_model_dir, too_long):
    return config_from_dict({
        "task": {"user_template": "{text}", "max_new_tokens": 10},
        "models": {"student": tiny_model_dir, "teacher": tiny_model_dir},
        "train": {"max_length": 80},
        "data": {"too_long": too_long},
    })


def test_too_long_inputs_skipped_or_truncated(tmp_path, tiny_model_dir, tokenizer):
    long_text = " ".join(f"word{i}" for i in range(200))
    path = _inputs(tmp_path, ["short one", long_text, "short two"])
    examples = read_inputs(path)
    for mode in ("skip", "truncate"):
        cfg = _cfg(tiny_model_dir, mode)
        logged = []
        kept = fit_inputs(examples, Task(cfg.task), cfg, path, logged.append)
        assert len(logged) == 1 and "1 inputs too long for train.max_length=80" in logged[0] and "lines 2" in logged[0]
        if mode == "skip":
            assert [e.text for e in kept] == ["short one", "short two"]
        else:
            assert [e.id for e in kept] == ["1", "2", "3"]
            cut = kept[1].text
            assert long_text.startswith(cut) and len(cut) < len(long_text)
            assert len(render_prompt(tokenizer, [{"role": "user", "content": cut}])) <= 80 - 10
