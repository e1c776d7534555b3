"""The whole pipeline (split -> label -> train -> eval) on a tiny random model,
its run directory, re-entry, and the CLI commands that read a run directory."""

from __future__ import annotations

import json
import math
import random
import re
import shutil

import pytest

LABELS = ["la", "cy", "gr"]
ALPHABETS = {
    "la": "abcdefghijklmnopqrstuvwxyz",
    "cy": "абвгдежзийклмнопрстуфхцчшщыэюя",
    "gr": "αβγδεζηθικλμνξοπρστυφχψω",
}
TEMPLATE = (
    "You are a careful script classifier. Decide which alphabet the text below is written in.\n"
    "Answer la for the Latin alphabet, cy for Cyrillic and gr for Greek.\n"
    "Respond with exactly one line: Final Answer: xx\n"
    "Text:\n{text}"
)
N_INPUTS = 24


def write_inputs(path, n: int = N_INPUTS, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        label = LABELS[len(rows) % len(LABELS)]
        letters = ALPHABETS[label]
        text = " ".join("".join(rng.choice(letters) for _ in range(rng.randint(2, 6))) for _ in range(rng.randint(1, 3)))
        if text in seen:
            continue
        seen.add(text)
        rows.append({"id": f"in{len(rows):02d}", "text": text, "label": label})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def config_dict(model_dir: str) -> dict:
    return {
        "task": {
            "name": "script_id",
            "user_template": TEMPLATE,
            "labels": LABELS,
            "answer_mode": "choose",
            "max_new_tokens": 8,
        },
        "data": {"inputs": "inputs.jsonl", "heldout_fraction": 0.25, "seed": 0},
        "models": {"teacher": model_dir, "student": model_dir, "device": "cpu", "dtype": "float32"},
        "train": {
            "lora_rank": 4, "lora_alpha": 8, "learning_rate": 1e-3, "lr_schedule": "constant",
            "max_steps": 4, "batch_size": 4, "eval_every": 2, "save_every": 2, "seed": 0,
        },
        "eval": {"max_examples": 0, "include_base": True},
    }


def make_config(raw: dict, base_dir):
    from promptdistill.config import config_from_dict

    cfg = config_from_dict(json.loads(json.dumps(raw)))
    cfg.base_dir = base_dir
    return cfg


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_model_dir):
    """One complete pipeline run; tests that change the run work on a copy."""
    from promptdistill.pipeline import run_pipeline

    base = tmp_path_factory.mktemp("pipeline")
    rows = write_inputs(base / "inputs.jsonl")
    raw = config_dict(tiny_model_dir)
    logs: list[str] = []
    report = run_pipeline(make_config(raw, base), base / "run", progress=False, log=logs.append)
    return {"base": base, "run": base / "run", "raw": raw, "rows": rows, "logs": logs, "report": report}


def test_run_directory_layout(pipeline_run):
    run, rows = pipeline_run["run"], pipeline_run["rows"]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["max_steps"] == 4 and config["task"]["labels"] == LABELS

    # split: disjoint, covering every input, stratified by gold label
    train = read_jsonl(run / "split" / "train.jsonl")
    heldout = read_jsonl(run / "split" / "heldout.jsonl")
    train_ids, heldout_ids = {r["id"] for r in train}, {r["id"] for r in heldout}
    assert not train_ids & heldout_ids
    assert not {r["text"] for r in train} & {r["text"] for r in heldout}
    assert train_ids | heldout_ids == {r["id"] for r in rows}
    assert sorted(r["label"] for r in heldout) == sorted(LABELS * 2)  # 8 per label * 0.25

    # labels: the teacher (choose mode) labels every input, with a distribution over the labels
    for name, split in (("train", train), ("heldout", heldout)):
        labeled = read_jsonl(run / "labels" / f"{name}.jsonl")
        assert sorted(r["id"] for r in labeled) == sorted(r["id"] for r in split)
        for r in labeled:
            assert r["status"] == "ok" and r["label"] in LABELS
            assert r["messages"] == [{"role": "user", "content": r["text"]},
                                     {"role": "assistant", "content": f"Final Answer: {r['label']}"}]
            assert set(r["label_probs"]) == set(LABELS)
            assert sum(r["label_probs"].values()) == pytest.approx(1.0)
            assert max(r["label_probs"], key=r["label_probs"].get) == r["label"]
        meta = json.loads((run / "labels" / f"{name}.jsonl.meta.json").read_text())
        assert meta["answer_mode"] == "choose"
        rejects = run / "labels" / f"{name}.rejects.jsonl"
        assert rejects.exists() and read_jsonl(rejects) == []
    summary = json.loads((run / "labels" / "summary.json").read_text())
    assert summary["train"]["labeled"] == len(train) and summary["heldout"]["labeled"] == len(heldout)
    assert summary["train"]["rejected"] == 0

    # stage markers
    markers = {stage: json.loads((run / "stages" / f"{stage}.json").read_text()) for stage in ("split", "label", "train", "eval")}
    for stage, marker in markers.items():
        assert marker["fingerprint"] and marker["finished"] and "summary" in marker, stage
    # each stage depends on more settings than the one before it
    fingerprints = [json.dumps(m["fingerprint"], sort_keys=True) for m in markers.values()]
    assert len(set(fingerprints)) == 4
    assert markers["split"]["summary"] == {"train": len(train), "heldout": len(heldout)}
    assert markers["train"]["summary"]["steps"] == 4
    assert set(markers["eval"]["summary"]) == {"teacher", "base", "student"}

    # training metrics: one line per step, held-out loss every eval_every steps
    metrics = read_jsonl(run / "train" / "metrics.jsonl")
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    for m in steps:
        assert m["loss"] > 0 and m["tokens_per_s"] > 0
        assert m["lr"] == pytest.approx(1e-3)
        assert m["examples"] == 4
    evals = [m for m in metrics if "heldout_loss" in m]
    assert [m["step"] for m in evals] == [2, 4]
    assert all(m["heldout_loss"] > 0 for m in evals)

    # checkpoints every save_every steps and at the last step (so a rerun has nothing left to do)
    checkpoints = sorted(p.name for p in (run / "train" / "checkpoints").iterdir())
    assert checkpoints == ["step-000002", "step-000004"]
    assert (run / "train" / "checkpoints" / "step-000002" / "adapter_model.safetensors").exists()
    adapter = run / "train" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and adapter_cfg["lora_alpha"] == 8


def test_eval_report(pipeline_run):
    run, report = pipeline_run["run"], pipeline_run["report"]
    on_disk = json.loads((run / "eval" / "report.json").read_text())
    assert on_disk == report
    heldout = read_jsonl(run / "split" / "heldout.jsonl")
    gold = {r["id"]: r["label"] for r in heldout}
    assert report["n_examples"] == len(heldout)
    assert list(report["systems"]) == ["teacher", "base", "student"]

    preds = read_jsonl(run / "eval" / "predictions.jsonl")
    assert len(preds) == 3 * len(heldout)
    by_system = {name: {p["id"]: p for p in preds if p["system"] == name} for name in report["systems"]}
    teacher_labels = {i: p["label"] for i, p in by_system["teacher"].items()}
    for name, m in report["systems"].items():
        for key in ("accuracy", "agreement", "parse_rate", "confusion", "mean_prompt_tokens", "median_latency_ms"):
            assert key in m, (name, key)
        assert m["uses_prompt"] == (name == "teacher")
        assert m["n"] == len(heldout)
        assert set(by_system[name]) == set(gold)
        p = by_system[name]
        assert m["accuracy"] == pytest.approx(sum(p[i]["label"] == gold[i] for i in gold) / len(gold))
        assert m["agreement"] == pytest.approx(sum(p[i]["label"] == teacher_labels[i] for i in gold) / len(gold))
        assert m["parse_rate"] == pytest.approx(sum(p[i]["status"] == "ok" for i in gold) / len(gold))
        assert m["mean_prompt_tokens"] == pytest.approx(sum(p[i]["prompt_tokens"] for i in gold) / len(gold))
        assert m["median_latency_ms"] > 0
        assert set(m["confusion"]) == set(LABELS)
        assert sum(sum(row.values()) for row in m["confusion"].values()) == len(heldout)
        for g, row in m["confusion"].items():
            assert set(row) == set(LABELS) | {"??"}
    teacher, student, base = (report["systems"][k] for k in ("teacher", "student", "base"))
    assert teacher["agreement"] == 1.0
    assert teacher["parse_rate"] == 1.0  # choose mode always yields a label
    assert teacher["mean_prompt_tokens"] > student["mean_prompt_tokens"] + 40
    assert base["mean_prompt_tokens"] == student["mean_prompt_tokens"]

    # the teacher answers held-out inputs in eval exactly as it labeled them
    labeled = {r["id"]: r["label"] for r in read_jsonl(run / "labels" / "heldout.jsonl")}
    assert teacher_labels == labeled

    # fidelity: per-input KL(teacher || system) over the label distributions, and the gap closed
    for name in ("base", "student"):
        kls = []
        for i, pred in by_system[name].items():
            t, q = by_system["teacher"][i]["label_probs"], pred["label_probs"]
            assert set(q) == set(LABELS) and sum(q.values()) == pytest.approx(1.0)
            kls.append(sum(t[k] * math.log(t[k] / q[k]) for k in LABELS if t[k] > 0))
            assert pred["kl"] == pytest.approx(kls[-1], rel=1e-6, abs=1e-9)
        assert report["systems"][name]["kl_to_teacher"] == pytest.approx(sum(kls) / len(kls))
    assert teacher["kl_to_teacher"] is None
    fidelity = report["fidelity"]
    assert fidelity["kl_base"] == base["kl_to_teacher"] and fidelity["kl_student"] == student["kl_to_teacher"]
    assert fidelity["gap_closed"] == pytest.approx(1 - student["kl_to_teacher"] / base["kl_to_teacher"])

    md = (run / "eval" / "report.md").read_text()
    for name in ("teacher", "base", "student"):
        assert re.search(rf"^\| {name} \| (yes|no) \|", md, re.M), name
    table = "\n".join(pipeline_run["logs"])
    for name in ("teacher", "base", "student"):
        assert re.search(rf"^{name}\s+(yes|no)\s", table, re.M), name

    # agreement in context: per teacher answer, floors, ceiling
    ref = report["reference_points"]
    assert ref["n"] == len(heldout) and list(ref["systems"]) == ["base", "student"]
    for name in ("base", "student"):
        m = ref["systems"][name]
        assert m["agreement"]["rate"] == pytest.approx(report["systems"][name]["agreement"])
        assert m["accuracy"]["rate"] == pytest.approx(report["systems"][name]["accuracy"])
        assert m["agreement"]["low"] <= m["agreement"]["rate"] <= m["agreement"]["high"]
        given = [a for a in LABELS if a in teacher_labels.values()]
        assert m["macro_agreement"] == pytest.approx(sum(m["per_answer"][a]["rate"] for a in given) / len(given))
        assert sum(m["per_answer"][a]["n"] for a in LABELS) == len(heldout)
        assert sum(sum(row.values()) for row in m["confusion"].values()) == len(heldout)
        assert set(m["against"]) == {"majority", "surface"}
    # the surface baseline is fitted on the training split's teacher labels
    surface = ref["floors"]["surface"]
    assert surface["available"] and surface["n_train"] == len(read_jsonl(run / "labels" / "train.jsonl"))
    assert ref["floors"]["majority"]["agreement"]["rate"] == pytest.approx(report["majority_agreement"])
    # choose mode: the ceiling is the mean probability of the recorded answer, no new requests
    t = by_system["teacher"]
    assert ref["ceiling"]["mode"] == "probs"
    assert ref["ceiling"]["ceiling"] == pytest.approx(sum(t[i]["label_probs"][t[i]["label"]] for i in gold) / len(gold))
    assert not (run / "eval" / "teacher_resamples.jsonl").exists()
    for heading in ("## Agreement in context", "### Agreement per teacher answer", "### Confusion: student against the teacher"):
        assert heading in md, heading
    assert "floor: surface baseline" in md and "ceiling: teacher self-consistency" in md
    assert "<h2>Agreement in context</h2>" in (run / "eval" / "report.html").read_text()
    assert re.search(r"^student: agreement [\d.]+% \(95% ", table, re.M)


def test_rerun_skips_every_completed_stage(pipeline_run):
    from promptdistill.pipeline import run_pipeline

    run = pipeline_run["run"]
    watched = [run / "labels" / "train.jsonl", run / "train" / "adapter" / "adapter_model.safetensors",
               run / "split" / "train.jsonl", run / "eval" / "report.json", run / "stages" / "train.json"]
    before = {p: p.stat().st_mtime_ns for p in watched}
    logs: list[str] = []
    report = run_pipeline(make_config(pipeline_run["raw"], pipeline_run["base"]), run, progress=False, log=logs.append)
    for stage in ("split", "label", "train", "eval"):
        assert f"[promptdistill] {stage}: already complete, skipping" in logs
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert report == pipeline_run["report"]


@pytest.fixture()
def run_copy(pipeline_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pipeline_run["run"], copy)
    return copy


@pytest.mark.slow  # reruns stages of a whole pipeline
def test_changed_settings_refused_then_forced(pipeline_run, run_copy):
    from promptdistill.errors import PromptDistillError
    from promptdistill.pipeline import run_pipeline

    raw = json.loads(json.dumps(pipeline_run["raw"]))
    raw["train"]["learning_rate"] = 3e-3
    cfg = make_config(raw, pipeline_run["base"])
    adapter = run_copy / "train" / "adapter" / "adapter_model.safetensors"
    labels = run_copy / "labels" / "train.jsonl"
    adapter_before, labels_before = adapter.stat().st_mtime_ns, labels.stat().st_mtime_ns

    with pytest.raises(PromptDistillError, match="--force") as info:
        run_pipeline(cfg, run_copy, progress=False, log=lambda *_: None)
    assert "train" in str(info.value)
    assert adapter.stat().st_mtime_ns == adapter_before

    logs: list[str] = []
    run_pipeline(cfg, run_copy, force=True, progress=False, log=logs.append)
    assert "[promptdistill] split: already complete, skipping" in logs
    assert "[promptdistill] label: already complete, skipping" in logs
    assert not any("train: already complete" in line or "eval: already complete" in line for line in logs)
    assert any(line.startswith("[promptdistill] train: 4 steps") for line in logs)
    assert labels.stat().st_mtime_ns == labels_before
    assert adapter.stat().st_mtime_ns != adapter_before
    steps = [m for m in read_jsonl(run_copy / "train" / "metrics.jsonl") if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert all(m["lr"] == pytest.approx(3e-3) for m in steps)
    assert json.loads((run_copy / "config.json").read_text())["train"]["learning_rate"] == 3e-3

    # now complete under the new settings: a plain rerun skips everything
    logs = []
    run_pipeline(cfg, run_copy, progress=False, log=logs.append)
    assert sum("already complete, skipping" in line for line in logs) == 4


@pytest.mark.slow  # reruns stages of a whole pipeline
def test_forced_resplit_relabels_only_the_new_split(pipeline_run, run_copy):
    """Changing the split (data.seed) with force redoes every stage; the labeled
    files then hold exactly the new split's inputs, so nothing now held out is trained on."""
    from promptdistill.pipeline import run_pipeline

    raw = json.loads(json.dumps(pipeline_run["raw"]))
    raw["data"]["seed"] = 1
    old_heldout = {r["id"] for r in read_jsonl(run_copy / "split" / "heldout.jsonl")}
    logs: list[str] = []
    run_pipeline(make_config(raw, pipeline_run["base"]), run_copy, force=True, progress=False, log=logs.append)
    assert not any("already complete" in line for line in logs)

    train_ids = {r["id"] for r in read_jsonl(run_copy / "split" / "train.jsonl")}
    heldout_ids = {r["id"] for r in read_jsonl(run_copy / "split" / "heldout.jsonl")}
    assert heldout_ids != old_heldout  # the new seed gives another split
    labeled_train = [r["id"] for r in read_jsonl(run_copy / "labels" / "train.jsonl")]
    labeled_heldout = [r["id"] for r in read_jsonl(run_copy / "labels" / "heldout.jsonl")]
    assert sorted(labeled_train) == sorted(train_ids), sorted(set(labeled_train) & heldout_ids)
    assert sorted(labeled_heldout) == sorted(heldout_ids)
    train_summary = json.loads((run_copy / "stages" / "train.json").read_text())["summary"]
    assert train_summary["train_examples"] == len(train_ids)


def test_refused_rerun_leaves_config_json(pipeline_run, run_copy):
    """A rerun refused for changed settings must not rewrite the run's config.json:
    it still describes the settings that produced the run's outputs."""
    from promptdistill.errors import PromptDistillError
    from promptdistill.pipeline import run_pipeline

    before = (run_copy / "config.json").read_text()
    raw = json.loads(json.dumps(pipeline_run["raw"]))
    raw["train"]["learning_rate"] = 3e-3
    with pytest.raises(PromptDistillError):
        run_pipeline(make_config(raw, pipeline_run["base"]), run_copy, progress=False, log=lambda *_: None)
    assert (run_copy / "config.json").read_text() == before


def _teacher_asked(monkeypatch) -> list[str]:
    """The ids of the inputs the local teacher is asked to answer from now on in the task's
    answer mode, "choose" (the latency sample's one-request timings generate apart)."""
    from promptdistill.teachers.local import LocalTeacher

    asked, real = [], LocalTeacher.label

    def label(self, examples, task, mode, *a, **k):
        asked.extend(e.id for e in examples if mode == "choose")
        return real(self, examples, task, mode, *a, **k)

    monkeypatch.setattr(LocalTeacher, "label", label)
    return asked


def test_eval_takes_the_teachers_heldout_answers_from_the_label_stage(pipeline_run, run_copy, monkeypatch):
    """The teacher row of a run's evaluation is the label stage's held-out answers (the
    same teacher, task and seed): the teacher is not asked the held-out questions again."""
    from promptdistill.pipeline import evaluate_file

    heldout = {r["id"]: r for r in read_jsonl(run_copy / "labels" / "heldout.jsonl")}
    shutil.rmtree(run_copy / "eval")
    asked = _teacher_asked(monkeypatch)
    report = evaluate_file(make_config(pipeline_run["raw"], pipeline_run["base"]), run_copy, progress=False)
    assert asked == []
    teacher = [p for p in read_jsonl(run_copy / "eval" / "predictions.jsonl") if p["system"] == "teacher"]
    assert sorted(p["id"] for p in teacher) == sorted(heldout)
    for p in teacher:
        assert (p["reply"], p["label"], p["label_probs"]) == (heldout[p["id"]]["teacher_reply"], heldout[p["id"]]["label"],
                                                              heldout[p["id"]]["label_probs"])
    first = pipeline_run["report"]["systems"]["teacher"]
    assert {k: report["systems"]["teacher"][k] for k in ("accuracy", "agreement", "parse_rate")} == \
        {k: first[k] for k in ("accuracy", "agreement", "parse_rate")}


def test_eval_asks_the_teacher_when_the_labels_were_made_otherwise(pipeline_run, run_copy, monkeypatch):
    """Held-out labels made under other label settings (here another labeling seed), or
    answering another input under the same id, are not the teacher's answers now."""
    from promptdistill.pipeline import evaluate_file

    heldout = [r["id"] for r in read_jsonl(run_copy / "split" / "heldout.jsonl")]
    raw = json.loads(json.dumps(pipeline_run["raw"]))
    raw["data"]["seed"] = 1
    shutil.rmtree(run_copy / "eval")
    asked = _teacher_asked(monkeypatch)
    evaluate_file(make_config(raw, pipeline_run["base"]), run_copy, progress=False)
    assert sorted(asked) == sorted(heldout)

    labels = run_copy / "labels" / "heldout.jsonl"
    rows = read_jsonl(labels)
    rows[0]["text"] = rows[0]["messages"][0]["content"] = "not the held-out input"
    labels.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    shutil.rmtree(run_copy / "eval")
    asked.clear()
    evaluate_file(make_config(pipeline_run["raw"], pipeline_run["base"]), run_copy, progress=False)
    assert asked == [rows[0]["id"]]


def test_cli_predict(pipeline_run, capsys):
    from promptdistill.cli import main

    capsys.readouterr()
    texts = ["hello world", "привет мир", "γεια σου"]
    assert main(["predict", "--run-dir", str(pipeline_run["run"]), *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(texts)
    assert all(line in LABELS or line == "??" for line in lines), lines


def test_cli_render(pipeline_run, tokenizer, capsys):
    from promptdistill.cli import main
    from promptdistill.render import render_prompt

    run = pipeline_run["run"]
    task_file = pipeline_run["base"] / "task.toml"
    task_file.write_text(
        "[task]\n"
        "name = 'script_id'\n"
        f"user_template = '''{TEMPLATE}'''\n"
        "labels = ['la', 'cy', 'gr']\n"
        "answer_mode = 'choose'\n"
        "[data]\n"
        "inputs = 'inputs.jsonl'\n"
        "[models]\n"
        f"teacher = '{pipeline_run['raw']['models']['teacher']}'\n"
        f"student = '{pipeline_run['raw']['models']['student']}'\n"
        "device = 'cpu'\n"
        "[train]\n"
        "max_length = 512\n",
        encoding="utf-8",
    )
    labeled_path = run / "labels" / "train.jsonl"
    records = read_jsonl(labeled_path)
    capsys.readouterr()
    assert main(["render", str(task_file), "--labeled", str(labeled_path), "--limit", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    pattern = re.compile(r"Example +(\d+): +(\d+) total tokens, +(\d+) trained tokens$")
    matched = [pattern.match(line) for line in lines[:-1]]
    assert all(matched), lines
    assert len(matched) == len(records)
    for i, (m, r) in enumerate(zip(matched, records)):
        assert int(m.group(1)) == i
        prompt = len(render_prompt(tokenizer, r["messages"][:-1]))
        # "Final Answer: xx" + end of turn: Final, ' Answer', ':', ' xx', <|im_end|>
        assert int(m.group(3)) == 5
        assert int(m.group(2)) == prompt + 5
    assert lines[-1] == f"{len(records)} examples; 0 over max_length=512"


@pytest.mark.slow  # reruns stages of a whole pipeline
@pytest.mark.parametrize("loss", ["kd", "on-policy"])
def test_run_trains_with_each_loss_from_the_command_line(pipeline_run, tmp_path, loss, capsys):
    """`promptdistill run --loss X` trains with X, reusing the labels, and reports the fidelity metrics."""
    from promptdistill.cli import main

    base = pipeline_run["base"]
    task_file = tmp_path / "task.toml"
    task_file.write_text(
        "[task]\n"
        f"user_template = '''{TEMPLATE}'''\n"
        "labels = ['la', 'cy', 'gr']\n"
        "answer_mode = 'choose'\n"
        "max_new_tokens = 6\n"
        "[data]\n"
        f"inputs = '{base / 'inputs.jsonl'}'\n"
        "heldout_fraction = 0.25\n"
        "[models]\n"
        f"teacher = '{pipeline_run['raw']['models']['teacher']}'\n"
        f"student = '{pipeline_run['raw']['models']['student']}'\n"
        "device = 'cpu'\n"
        "[train]\n"
        "lora_rank = 4\nmax_steps = 2\nbatch_size = 4\n",
        encoding="utf-8",
    )
    run = tmp_path / "run"
    assert main(["run", str(task_file), "--run-dir", str(run), "--loss", loss, "--no-progress"]) == 0
    summary = json.loads((run / "train" / "train_summary.json").read_text())
    assert summary["loss"] == loss and summary["steps"] == 2
    metrics = [m for m in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in m]
    key = "kl" if loss == "kd" else "reverse_kl"
    assert len(metrics) == 2 and all(m[key] >= 0 for m in metrics)
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["fidelity"]["kl_student"] is not None and report["fidelity"]["gap_closed"] is not None
    assert "KL(T||.)" in capsys.readouterr().out
