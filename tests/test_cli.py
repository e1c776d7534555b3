"""The command line: flags map onto config keys through one table, and bad
input ends in one line on stderr with exit code 2, never a traceback."""

from __future__ import annotations

import pytest

from conftest import write_task_file
from promptdistill.cli import FLAG_SETTINGS, _parser, load_task_config, main
from promptdistill.config import Config

# A value each flag accepts, different from the config default (a function of
# the test's folder where the flag's path is made absolute).
FLAG_VALUES = {
    "teacher": ("--teacher", "some/teacher", "some/teacher"),
    "student": ("--student", "some/student", "some/student"),
    "device": ("--device", "cpu", "cpu"),
    "teacher_url": ("--teacher-url", "http://localhost:9/v1", "http://localhost:9/v1"),
    "teacher_backend": ("--teacher-backend", "vllm", "vllm"),
    "concurrency": ("--concurrency", "3", 3),
    "allow_insecure_http": ("--allow-insecure-http", None, True),
    "samples": ("--samples", "3", 3),
    "temperature": ("--temperature", "0.7", 0.7),
    "min_confidence": ("--min-confidence", "0.4", 0.4),
    "loss": ("--loss", "kd", "kd"),
    "kd_alpha": ("--kd-alpha", "0.25", 0.25),
    "report_to": ("--report-to", "tensorboard", "tensorboard"),
    "init_from": ("--init-from", "prev", lambda root: str(root / "prev" / "train" / "adapter")),
    "init_adapter": ("--init-adapter", "prev/train/adapter", lambda root: str(root / "prev" / "train" / "adapter")),
    "seeds": ("--seeds", "seeds.txt", lambda root: str(root / "seeds.txt")),
    "strategies": ("--strategies", "prompt, magpie", ["prompt", "magpie"]),
    "generator": ("--generator", "some/generator", "some/generator"),
    "trust_remote_code": ("--trust-remote-code", None, True),  # a switch: only the flag grants it, never the task file
}


def test_every_flag_of_the_table_names_a_config_field():
    fields = {f"{section}.{key}" for section, values in Config().to_dict().items() for key in values}
    assert set(FLAG_SETTINGS.values()) <= fields
    assert set(FLAG_SETTINGS) == set(FLAG_VALUES)


@pytest.mark.parametrize("dest", sorted(FLAG_VALUES))
def test_each_flag_sets_its_config_key(tmp_path, dest, monkeypatch):
    flag, text, value = FLAG_VALUES[dest]
    task = write_task_file(tmp_path, task=dict(labels=["en", "fr"]))
    if callable(value):  # a path relative to the current folder, made absolute: the adapter of a finished run
        (tmp_path / "prev" / "train" / "adapter").mkdir(parents=True)
        (tmp_path / "prev" / "config.json").write_text("{}")
        (tmp_path / "prev" / "train" / "adapter" / "adapter_config.json").write_text("{}")
        monkeypatch.chdir(tmp_path)
        value = value(tmp_path)
    command = "run" if dest in ("loss", "kd_alpha", "report_to", "teacher_url", "teacher_backend", "concurrency", "init_from", "allow_insecure_http",
                                "init_adapter") else "synthesize" if dest in ("seeds", "strategies", "generator") else "label"
    argv = [command, str(task), flag] + ([text] if text is not None else []) + (["--out", str(tmp_path / "o.jsonl")] if command != "run" else [])
    if dest == "teacher_url":
        argv += ["--teacher-backend", "chat"]  # a URL needs an HTTP backend named
    argv += ["--n", "1"] if command == "synthesize" else []
    if dest in ("samples", "min_confidence"):
        argv += ["--temperature", "0.5"]  # samples > 1 needs sampling
    cfg = load_task_config(_parser().parse_args(argv))
    section, key = FLAG_SETTINGS[dest].split(".")
    assert getattr(getattr(cfg, section), key) == value


def test_an_explicit_backend_wins_over_the_url_and_is_then_refused(tmp_path, capsys):
    task = write_task_file(tmp_path)
    code = main(["run", str(task), "--teacher-url", "http://localhost:9/v1", "--teacher-backend", "vllm",
                 "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "models.teacher_url" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written for a refused command


def test_set_overrides_a_key_and_rejects_an_unknown_section(tmp_path, capsys):
    task = write_task_file(tmp_path)
    cfg = load_task_config(_parser().parse_args(["run", str(task), "--set", "train.max_steps=7", "--set", "task.name=x y"]))
    assert cfg.train.max_steps == 7 and cfg.task.name == "x y"
    assert main(["run", str(task), "--set", "trian.max_steps=7"]) == 2
    err = capsys.readouterr().err
    assert "unknown section 'trian'" in err and err.count("\n") == 1


def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"promptdistill {version('promptdistill')}"


def test_a_run_is_always_given_with_run_dir(capsys):
    """export takes the run as --run-dir like every command that works on a run; the old positional is refused."""
    with pytest.raises(SystemExit) as info:
        main(["export", "runs/x", "--adapter", "a"])
    assert info.value.code == 2
    assert "--run-dir" in capsys.readouterr().err


def test_init_writes_a_task_file_that_loads_and_never_replaces_one(tmp_path, capsys):
    from promptdistill.config import load_config

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Which language is this text in? Answer with its code.\n", encoding="utf-8")
    task = tmp_path / "my_task.toml"
    assert main(["init", str(task), "--prompt", str(prompt), "--labels", "en,fr", "--name", "lang"]) == 0
    assert "promptdistill" in capsys.readouterr().out  # the commands to run next
    cfg = load_config(task)
    assert cfg.task.labels == ["en", "fr"] and cfg.task.name == "lang"
    before = task.read_bytes()
    assert main(["init", str(task), "--prompt", str(prompt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists" in err and err.count("\n") == 1
    assert task.read_bytes() == before


def test_a_url_without_an_http_backend_is_refused_in_one_line(tmp_path, capsys):
    """--teacher-url does not pick a backend: chat and vllm-server speak different APIs, so the user names one."""
    task = write_task_file(tmp_path)
    code = main(["run", str(task), "--teacher-url", "http://localhost:9/v1", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "'chat' or 'vllm-server'" in err and "--teacher-backend" in err
    assert not (tmp_path / "run").exists()


def test_the_old_openai_backend_name_is_refused_naming_both_successors(tmp_path, capsys):
    task = write_task_file(tmp_path, models=dict(teacher_backend="openai", teacher_url="http://localhost:9/v1"))
    code = main(["label", str(task), "--inputs", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "vllm-server" in err and "chat" in err
    assert not (tmp_path / "o.jsonl").exists()
