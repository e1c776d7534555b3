"""`eval TASK --student MODEL --inputs FILE --out DIR`: any student (a PEFT adapter folder,
a model folder, a hub id) evaluated against the task's teacher with no run directory,
into a report folder of its own; and `promptdistill.evaluate` from Python. The run's
own adapter evaluated this way gives the run's own numbers (the demo check, made small)."""

from __future__ import annotations

import json
import shutil

import pytest
from test_pipeline import pipeline_run, read_jsonl  # noqa: F401  (the module-scoped tiny run)

# Everything that is measured rather than timed: the same inputs, teacher and student give the same values.
MEASURED = ("n", "accuracy", "agreement", "parse_rate", "mean_prompt_tokens", "kl_to_teacher", "confusion")


def _task_file(pipeline_run, folder) -> str:  # noqa: F811
    """The run's task as a task file of its own (without data.inputs: --inputs names them)."""
    from conftest import write_task_file

    raw = json.loads(json.dumps(pipeline_run["raw"]))
    raw["data"].pop("inputs")
    return str(write_task_file(folder, **raw))


@pytest.fixture(scope="module")
def student_eval(pipeline_run, tmp_path_factory):  # noqa: F811
    from promptdistill.cli import main

    folder = tmp_path_factory.mktemp("student_eval")
    task = _task_file(pipeline_run, folder)
    out = folder / "report"
    run = pipeline_run["run"]
    argv = ["eval", task, "--student", str(run / "train" / "adapter"), "--inputs", str(run / "split" / "heldout.jsonl"),
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    return {"task": task, "out": out, "argv": argv, "folder": folder}


def test_the_runs_adapter_gives_the_runs_numbers(pipeline_run, student_eval):  # noqa: F811
    run, out = pipeline_run["run"], student_eval["out"]
    in_run = json.loads((run / "eval" / "report.json").read_text())
    alone = json.loads((out / "report.json").read_text())
    assert list(alone["systems"]) == ["teacher", "base", "student"]
    for system in ("teacher", "base", "student"):
        for key in MEASURED:
            expected = in_run["systems"][system][key]
            assert alone["systems"][system][key] == (expected if isinstance(expected, dict) else pytest.approx(expected)), (system, key)
    # answer by answer, not only in total
    def answers(path):
        return {(p["system"], p["id"]): (p["label"], p["label_probs"]) for p in read_jsonl(path)}

    assert answers(out / "predictions.jsonl") == answers(run / "eval" / "predictions.jsonl")
    assert alone["models"]["student"] == str(run / "train" / "adapter")
    # the same self-contained report folder as a run's eval/
    for name in ("report.md", "report.html", "predictions.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "report.md").read_text().count("|") > 20
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert not (out / "predictions.partial.jsonl").exists()


def test_a_rerun_replaces_the_report_in_its_own_folder(student_eval, capsys):
    from promptdistill.cli import main

    before = json.loads((student_eval["out"] / "report.json").read_text())
    assert main(student_eval["argv"]) == 0
    after = json.loads((student_eval["out"] / "report.json").read_text())
    assert after["systems"]["student"]["agreement"] == before["systems"]["student"]["agreement"]


def test_a_model_folder_is_a_student_and_the_tasks_student_its_base(pipeline_run, student_eval, tmp_path, tiny_model_dir):  # noqa: F811
    """A whole model (here the untrained base itself, as a folder): the student row is that
    model, the base row the task's models.student; the two answer alike."""
    from promptdistill import evaluate

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    heldout = pipeline_run["run"] / "split" / "heldout.jsonl"
    report = evaluate(student_eval["task"], student=str(copy), inputs=str(heldout), out=tmp_path / "out", progress=False)
    student, base = report["systems"]["student"], report["systems"]["base"]
    for key in ("agreement", "accuracy", "parse_rate", "kl_to_teacher"):
        assert student[key] == pytest.approx(base[key]), key
    assert report["models"]["student"] == str(copy)


def test_a_datasets_object_as_inputs(pipeline_run, student_eval, tmp_path):  # noqa: F811
    import datasets  # the datasets extra (make setup installs it)

    from promptdistill import evaluate

    rows = read_jsonl(pipeline_run["run"] / "split" / "heldout.jsonl")
    ds = datasets.Dataset.from_list([{"question": r["text"], "key": r["id"], "gold": r["label"]} for r in rows])
    from promptdistill.config import Config
    from promptdistill.overrides import load_task_config

    cfg: Config = load_task_config(student_eval["task"])
    cfg.data.text_column, cfg.data.id_column, cfg.data.label_column = "question", "key", "gold"
    report = evaluate(cfg, student=str(pipeline_run["run"] / "train" / "adapter"), inputs=ds, out=tmp_path / "out", progress=False)
    in_run = json.loads((pipeline_run["run"] / "eval" / "report.json").read_text())
    assert report["systems"]["student"]["agreement"] == pytest.approx(in_run["systems"]["student"]["agreement"])
    assert report["systems"]["student"]["accuracy"] == pytest.approx(in_run["systems"]["student"]["accuracy"])


@pytest.mark.parametrize("problem", ["foreign folder", "inside the run", "no student", "no inputs", "broken adapter", "out is input"])
def test_refused_before_anything_is_written(problem, pipeline_run, student_eval, tmp_path, capsys):  # noqa: F811
    from promptdistill.cli import main

    run = pipeline_run["run"]
    adapter = run / "train" / "adapter"
    out = tmp_path / "out"
    inputs = run / "split" / "heldout.jsonl"
    argv = ["eval", student_eval["task"], "--student", str(adapter), "--inputs", str(inputs), "--out", str(out)]
    expect = "--out"
    if problem == "foreign folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        expect = "not written by `eval --student`"
    elif problem == "inside the run":
        out = run / "eval-elsewhere"
        argv[-1] = str(out)
        expect = "inside the run directory"
    elif problem == "no student":
        del argv[2:4]
        expect = "--student"
    elif problem == "no inputs":
        del argv[4:6]
        expect = "--inputs"
    elif problem == "broken adapter":
        broken = tmp_path / "adapter"
        shutil.copytree(adapter, broken)
        (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
        argv[3] = str(broken)
        expect = "adapter_model.safetensors"
    else:
        argv[-1] = str(inputs.parent)
        out = inputs.parent
        expect = "--inputs"
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1, err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before


def test_eval_run_dir_reads_parquet_inputs_with_their_columns(pipeline_run, student_eval, tmp_path):  # noqa: F811
    """eval --run-dir --inputs takes the dataset formats and the task's column settings too (last: it rewrites RUN/eval)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from promptdistill.cli import main

    run = pipeline_run["run"]
    before = json.loads((run / "eval" / "report.json").read_text())
    rows = read_jsonl(run / "split" / "heldout.jsonl")
    pq.write_table(pa.Table.from_pylist([{"body": r["text"], "key": r["id"], "gold": r["label"]} for r in rows]), tmp_path / "h.parquet")
    argv = ["eval", student_eval["task"], "--run-dir", str(run), "--inputs", str(tmp_path / "h.parquet"), "--no-progress",
            "--set", "data.text_column=body", "--set", "data.id_column=key", "--set", "data.label_column=gold"]
    assert main(argv) == 0
    after = json.loads((run / "eval" / "report.json").read_text())
    for key in ("agreement", "accuracy", "kl_to_teacher"):
        assert after["systems"]["student"][key] == pytest.approx(before["systems"]["student"][key]), key
