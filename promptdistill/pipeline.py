"""`run`: split -> label -> train -> eval, into one run directory.

Each stage writes its outputs, then a marker holding the settings it
depended on (`stage_settings`; the train stage's is the one `train` writes,
`training.stage.train_settings`, so either command continues the other's
training). Rerunning skips every stage whose marker
matches; a stage whose settings changed is refused, naming the changed keys,
unless `force`, in which case it and every later stage run again. The directory's layout is
`rundir.RunDir`'s.

Which inputs get labeled is decided by `inputs.prepare_inputs`, the same
for the split stage and `promptdistill label`. Before the run directory is
locked, `check_run` checks everything the run reads and that it may write
there: nothing is written for a refused run.

The eval stage's preflight lives here too, beside `evaluate_run`
(`check_eval`): `eval` and `evaluate_run` from Python refuse the same runs.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import replace

from .config import Config, eval_settings, reply_filter_settings, save_config, task_settings, training_settings
from pathlib import Path

from .dataset_inputs import check_input_source, columns_of, input_location, local_path
from .errors import PromptDistillError

from .inputs import check_max_length, fit_context, fit_inputs, prepare_inputs, read_offtask
from .io import (DirectoryLock, atomic_write_json, changed_settings, check_file, check_model_folder, check_no_symlinks,
                 check_output_folder, check_paths, fingerprint, real_path)
from .records import check_gold_labels, read_inputs, read_labeled, write_examples
from .rundir import LOCK, RunDir, adapter_fingerprint, check_adapter_folder, check_outside_runs, check_run_dir, claim_run_dir
from .split import split_examples, split_key
from .task import Task


def stage_settings(cfg: Config) -> dict[str, dict]:
    """The configuration each stage depends on (including its predecessors)."""
    d = cfg.to_dict()
    # Training data only (the split and the labels do not depend on it).
    mix_general = d["data"].pop("mix_general")
    split = {
        "data": d["data"],
        "inputs": str(input_location(cfg, cfg.data.inputs)) if cfg.data.inputs else None,
        "heldout_inputs": str(input_location(cfg, cfg.data.heldout_inputs)) if cfg.data.heldout_inputs else None,
        # what decides which inputs are too long for the student
        "fit": [cfg.train.max_length, cfg.task.max_new_tokens, cfg.models.student],
    }
    if cfg.data.synthesize:
        # What writes the synthetic inputs (without synthesis, none of it matters to the split).
        split["synthesize"] = {**d["synthesize"], "teacher": d["models"]["teacher"], "teacher_backend": cfg.models.teacher_backend,
                               "task": task_settings(cfg.task)}
    label = {**split, "task": task_settings(cfg.task), "teacher": d["models"]["teacher"],
             "teacher_backend": [cfg.models.teacher_backend, cfg.models.teacher_url]}
    train = {**label, "train": training_settings(cfg.train), "student": d["models"]["student"],
             "task_target": d["task"]["student_target"], "mix_general": mix_general, **reply_filter_settings(cfg)}
    if cfg.train.init_adapter:
        # The adapter's weights, not only its path: retraining it elsewhere invalidates this run's training.
        train["init_adapter"] = adapter_fingerprint(cfg.resolve_path(cfg.train.init_adapter))
    evaluate = {**train, "eval": eval_settings(cfg.eval)}
    return {"split": split, "label": label, "train": train, "eval": evaluate}


def default_run_dir(cfg: Config) -> Path:
    """runs/<task.name>, where `run` writes when no run directory is given."""
    name = cfg.task.name
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise PromptDistillError(f"task.name {name!r} is not a folder name; pass --run-dir", field="task.name")
    return Path("runs") / name


def check_run(cfg: Config, run_dir, reads: dict | None = None) -> tuple[RunDir, list | None]:
    """The `run` preflight, before the run directory is locked or written: the input
    file (if any) and eval.offtask_inputs readable, the run directory new, empty
    or a run (`rundir.claim_run_dir`), no input (data.inputs, the paths in
    `reads`, e.g. the task file, or train.init_adapter, the adapter training
    starts from) among the run's entries, the run's existing files readable,
    train.max_length within the student's context, the training precision
    possible here (models.load_in_4bit, train.autocast). Returns the run and the
    off-task inputs (None when unset)."""
    from .overrides import check_training_precision
    from .training.init_adapter import init_adapter_folder

    if not cfg.data.inputs and not cfg.data.synthesize:
        raise PromptDistillError("set data.inputs to the input file, or data.synthesize to a number of inputs to write",
                                 field="data.inputs")
    reads = dict(reads or {})
    if cfg.data.inputs:
        reads["data.inputs"] = local_path(check_input_source(input_location(cfg, cfg.data.inputs), "input file (data.inputs)"))
    if cfg.data.heldout_inputs:
        if not cfg.data.inputs:
            raise PromptDistillError("data.heldout_inputs needs data.inputs (the training side)", field="data.heldout_inputs")
        reads["data.heldout_inputs"] = local_path(check_input_source(input_location(cfg, cfg.data.heldout_inputs),
                                                                     "held-out input file (data.heldout_inputs)"))
        _check_heldout_unseen(cfg)
    if cfg.eval.offtask_inputs:
        reads["eval.offtask_inputs"] = check_file(cfg.resolve_path(cfg.eval.offtask_inputs), "off-task input file (eval.offtask_inputs)")
    offtask = read_offtask(cfg)
    if cfg.train.init_adapter is not None:
        reads["train.init_adapter"] = init_adapter_folder(cfg)
    run = RunDir(claim_run_dir(run_dir if run_dir is not None else default_run_dir(cfg)))
    check_paths(reads, run.entries())
    run.check_files()
    check_max_length(cfg)
    check_training_precision(cfg)
    return run, offtask


def run_pipeline(cfg: Config, run_dir=None, *, force: bool = False, progress: bool = True, log=print,
                 reads: dict | None = None) -> dict:
    """Run every stage not already complete in `run_dir` (default runs/<task.name>);
    return the evaluation report. Checked first (`check_run`), then locked."""
    run, offtask = check_run(cfg, run_dir, reads)
    with run.lock():
        return _run_stages(cfg, run, offtask, force=force, progress=progress, log=log)


def _run_stages(cfg: Config, run: RunDir, offtask: list | None, *, force: bool, progress: bool, log) -> dict:
    from .evaluation.report import fmt, results_table
    from .labeling import label_inputs
    from .teachers import load_teacher
    from .training.recipe import train_folder
    from .training.stage import train_settings

    task = Task(cfg.task)
    settings = stage_settings(cfg)
    training_data = _cached(lambda: _split_records(run))
    # The train stage's marker is the one `train` writes (training.stage.train_settings: the
    # records trained on, by their hash), so `train` and `run` on one run agree on what it was
    # trained with; the evaluation is valid for that training.
    markers = {**settings, "train": _cached(lambda: train_settings(cfg, *training_data())),
               "eval": lambda: {**settings["eval"], "training": fingerprint(markers["train"]())}}
    todo = run.plan(markers, force)
    # Written only once the settings are accepted: predict reads the model and task from it.
    save_config(cfg, run.config_path)

    def stage_needed(stage: str) -> bool:
        if stage not in todo:
            log(f"[promptdistill] {stage}: already complete, skipping")
            return False
        return True

    if stage_needed("split"):
        train, heldout = [], []
        if cfg.data.inputs:
            examples = prepare_inputs(cfg, task, input_location(cfg, cfg.data.inputs), log)
            if cfg.data.heldout_inputs:
                train, heldout = examples, prepare_inputs(cfg, task, input_location(cfg, cfg.data.heldout_inputs), log)
            else:
                train, heldout = split_examples(examples, cfg.data.heldout_fraction, cfg.data.seed)
        summary = {}
        if cfg.data.synthesize:
            train, heldout, summary = add_synthetic_inputs(cfg, run, task, train, heldout, force=force, progress=progress, log=log)
        write_examples(run.split_file("train"), train)
        write_examples(run.split_file("heldout"), heldout)
        run.mark_done("split", settings["split"], {"train": len(train), "heldout": len(heldout), **summary})
        log(f"[promptdistill] split: {len(train)} train, {len(heldout)} held-out")

    train_inputs = read_inputs(run.split_file("train"))
    heldout_inputs = read_inputs(run.split_file("heldout"))

    if stage_needed("label"):
        # The split was fitted to the teacher it was made with; the teacher may have changed since.
        sides = {side: fit_context(exs, task, cfg, run.split_file(side), log, roles=("teacher",))
                 for side, exs in (("train", train_inputs), ("heldout", heldout_inputs))}
        teacher = load_teacher(cfg)
        summaries = {}
        for name, exs in sides.items():
            summaries[name] = label_inputs(cfg, exs, teacher, run.labels_file(name), force=force, progress=progress)
            s = summaries[name]
            log(f"[promptdistill] label {name}: {s['labeled']} labeled, {s['rejected']} rejected "
                f"{s['by_status']}; teacher accuracy vs gold: {fmt(s['teacher_accuracy'], '.1%')}")
        atomic_write_json(run.labels_summary, summaries)
        if cfg.data.synthesize:
            synthetic_label_report(run)
        run.mark_done("label", settings["label"], summaries)
        del teacher

    if stage_needed("train"):
        records, heldout_records = training_data()
        summary = train_folder(cfg, records, run.train_dir, heldout=heldout_records, progress=progress)
        run.mark_done("train", markers["train"](), summary)
        log(f"[promptdistill] train: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
            f"held-out loss {summary['final_heldout_loss'] if summary['final_heldout_loss'] is not None else '-'}")

    if stage_needed("eval"):
        report = _evaluate(cfg, run, heldout_inputs, offtask, progress=progress)
        run.mark_done("eval", markers["eval"](), {name: {k: v for k, v in m.items() if k != "confusion"} for name, m in report["systems"].items()})
    report = json.loads(run.report_path.read_text(encoding="utf-8"))
    log("")
    log(results_table(report))
    log(f"\nreport: {run.report_md}")
    return report


def check_eval(cfg: Config, run_dir: "RunDir | str | Path", reads: dict | None = None) -> tuple[RunDir, list | None]:
    """The eval stage's preflight on its run: a run with a whole adapter and readable
    files; eval.offtask_inputs readable and read; no input (`reads`, the
    adapter, the off-task inputs) among what evaluation writes (eval/, the
    lock). Returns the run and the off-task inputs (None when unset)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(check_run_dir(run_dir))
    reads = {**(reads or {}), "the run's adapter": run.adapter_dir}
    if cfg.eval.offtask_inputs:
        reads["eval.offtask_inputs"] = check_file(cfg.resolve_path(cfg.eval.offtask_inputs), "off-task input file (eval.offtask_inputs)")
    check_paths(reads, {"the run's eval/ folder": run.eval_dir, "the run's lock file": run.lock_path})
    run.adapter()
    run.check_files()
    check_same_models(cfg, run)
    return run, read_offtask(cfg)


def check_same_models(cfg: Config, run: RunDir) -> None:
    """The task evaluated is the one the run's adapter was trained for: the same
    student (the adapter's base), teacher and backend, and task settings (the
    prompt, labels and reply format), as RUN/config.json records them; otherwise
    one line naming the differing fields (an adapter scored on another base or
    prompt says nothing)."""
    stored = run.load_config()

    def what_the_adapter_depends_on(c: Config) -> dict:
        return {"models": {"student": _model_identity(c.models.student), "teacher": _model_identity(c.models.teacher),
                           "teacher_backend": c.models.teacher_backend},
                "task": {k: v for k, v in task_settings(c.task).items() if k != "name"}}  # a name is only a name

    changed = changed_settings(what_the_adapter_depends_on(stored), what_the_adapter_depends_on(cfg))
    if changed:
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise PromptDistillError(f"the task differs from the one this run was trained with ({shown}, see its config.json); "
                                 "evaluate with that task file, or train a run for this one", path=run.path)


def _model_identity(name: str) -> str:
    """A model as the comparison sees it: a local folder by its config.json and
    weight files (the same model moved or copied is the same model), else its name."""
    folder = Path(os.path.expanduser(name))
    if not (folder / "config.json").is_file():
        return name
    weights = sorted((f.name, f.stat().st_size) for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))
    return "folder:" + fingerprint(weights, (folder / "config.json").read_bytes())


def evaluate_file(cfg: Config, run_dir, inputs=None, *, task_file=None, progress: bool = True, log=print) -> dict:
    """The `eval` command: evaluate a run on the inputs of a file (default the run's
    held-out split), checked and fitted to the models' contexts first."""
    run = RunDir(check_run_dir(run_dir))
    path = check_input_source(inputs, "input file") if inputs else run.split_file("heldout")
    if not inputs and not path.exists():
        raise PromptDistillError("no held-out inputs in this run (split/heldout.jsonl); pass --inputs FILE", path=path)
    run, offtask = check_eval(cfg, run, {"--inputs": local_path(path), "the task file": task_file})
    examples = read_inputs(path, columns_of(cfg.data) if inputs else None)
    check_gold_labels(examples, cfg.task.labels, path)
    examples = fit_context(examples, Task(cfg.task), cfg, path, log)
    if not examples:
        raise PromptDistillError("no inputs left to evaluate (all too long, see above)", path=path)
    with run.lock():
        return _evaluate(cfg, run, examples, offtask, progress=progress)


# -- evaluating any student, outside a run directory ----------------------------

# Written first into an `eval --student --out` folder: the folder is the tool's by this record, not by its files' names.
EVAL_MARKER = ".promptdistill-eval.json"


def check_student_eval(cfg: Config, student: str, inputs, out, reads: dict | None = None, log=print, *,
                       student_model: str | None = None, student_api_key_env: str | None = None):
    """`eval --student`'s preflight, before anything is written or loaded: the student
    (a PEFT adapter folder, a model folder, a hub id, or a URL serving `student_model`
    behind a chat API) and its base, the inputs (any format read_inputs takes, or a
    list of Examples) read and fitted, the off-task inputs read, and `out` claimed
    (`claim_report_folder`) apart from everything read. Returns (cfg with models.student
    the base, adapter folder or None, ApiStudent or None, examples, off-task inputs, out)."""
    from .evaluation.api_student import ApiStudent, is_url
    from .overrides import check_models
    from .records import Example

    if not student or not isinstance(student, (str, Path)):
        raise PromptDistillError("name the student to evaluate: a hub id, a model folder, a PEFT adapter folder or a URL",
                                 field="--student")
    url = is_url(student)
    if not url and student_model is not None:
        raise PromptDistillError("--student-model names the model a server serves; it goes with a URL student "
                                 f"(--student http://host:8000/v1), not with {str(student)!r}", field="--student-model")
    if not url and student_api_key_env is not None:
        raise PromptDistillError("--student-api-key-env names the key of a student behind a URL; this student is not one",
                                 field="--student-api-key-env")
    if out is None:
        raise PromptDistillError("name the folder the report goes to", field="--out")
    if inputs is None:
        raise PromptDistillError("no inputs to evaluate on: pass --inputs (a file, a dataset folder or hf://datasets/ORG/NAME)",
                                 field="--inputs")
    student = str(student)
    api = ApiStudent.checked(student, student_model, student_api_key_env, cfg.models) if url else None
    adapter = _adapter_folder(student) if not url else None
    cfg = copy.deepcopy(cfg)
    if adapter is not None:
        cfg.models.student = _adapter_base(adapter, cfg)
    elif not url:
        from .models import load_tokenizer

        check_model_folder(student, "--student")
        load_tokenizer(student)  # a hub id neither cached nor reachable fails here, before anything is written
    check_models(cfg.models)
    reads = {**(reads or {}), "--student": student if os.path.exists(student) else None}
    if isinstance(inputs, list) and all(isinstance(e, Example) for e in inputs):
        examples, where = inputs, "the inputs"
    else:
        where = check_input_source(inputs, "input file") if isinstance(inputs, (str, Path)) else inputs
        reads["--inputs"] = local_path(where) if isinstance(where, (str, Path)) else None
        examples = read_inputs(where, columns_of(cfg.data))
        where = where if isinstance(where, (str, Path)) else "<datasets.Dataset>"
    if cfg.eval.offtask_inputs:
        reads["eval.offtask_inputs"] = check_file(cfg.resolve_path(cfg.eval.offtask_inputs), "off-task input file (eval.offtask_inputs)")
    offtask = read_offtask(cfg)
    out = Path(out)
    check_paths(reads, {"--out": out})
    check_outside_runs(out, "--out")
    claim_report_folder(out, "--out")
    check_gold_labels(examples, cfg.task.labels, where)
    examples = fit_context(examples, Task(cfg.task), cfg, where, log)
    if not examples:
        raise PromptDistillError("no inputs left to evaluate (all too long, see above)", path=where)
    if api is not None:
        api.check_served()  # the one check that sends a request: last
    return cfg, adapter, api, examples, offtask, out


def evaluate_student(cfg: Config, student: str, inputs, out, *, reads: dict | None = None, progress: bool = True,
                     log=print, student_model: str | None = None, student_api_key_env: str | None = None) -> dict:
    """`eval --student`: the teacher (with the prompt), the base and `student` (without
    it) on `inputs`, with the same report as a run's (report.json, report.md,
    report.html, pictures, predictions) written into the folder `out`. The
    student is a PEFT adapter folder (its base read from adapter_config.json),
    a model folder or a hub id (its base: models.student of the task), or the
    model `student_model` served behind a chat API at the URL `student` (its
    key in the variable `student_api_key_env`, if it needs one; api_student.py);
    nothing of a run directory is needed. Checked first (`check_student_eval`),
    then the folder is locked; an interrupted evaluation resumes like a run's."""
    from .evaluation.run_report import write_report_files

    cfg, adapter, api, examples, offtask, out = check_student_eval(cfg, student, inputs, out, reads, log, student_model=student_model,
                                                                   student_api_key_env=student_api_key_env)
    out.mkdir(parents=True, exist_ok=True)
    marker = out / EVAL_MARKER
    if not marker.exists():
        atomic_write_json(marker, {"written_by": "promptdistill", "kind": "eval", "student": str(student)})
    with DirectoryLock(out / LOCK, "this report folder"):
        if api is not None:
            from .models import load_model

            log(f"[promptdistill] eval: student {api.name} at {api.shown_url}, base {cfg.models.student}")
            loaded, base, identity = api, load_model(cfg.models.student, cfg.models.device, cfg.models.dtype), api.identity()
        else:
            loaded, base = _load_any_student(cfg, str(student), adapter, log)
            identity = {"adapter": adapter_fingerprint(adapter)} if adapter else {"student": _model_identity(str(student))}
        report = _evaluate_systems(cfg, out, examples, offtask, loaded, base, identity, progress=progress)
        _record_heldout_source(out / "report.json", examples)
        write_report_files(out)
    return report


def evaluate(task, *, student, inputs, out, progress: bool = True, log=print, student_model: str | None = None,
             student_api_key_env: str | None = None) -> dict:
    """Evaluate any student against the teacher of `task` (a Config, or a task file
    read as the commands read it) on `inputs` (a file, a dataset folder, an
    hf://datasets/ address, a `datasets.Dataset` or a list of Examples), writing
    the report into the folder `out`: `promptdistill eval TASK --student MODEL
    --inputs FILE --out DIR` from Python (see evaluate_student). A student behind
    a chat API: `student` its URL, `student_model` the name it is served under."""
    from .overrides import load_task_config

    cfg = task if isinstance(task, Config) else load_task_config(task)
    reads = {} if isinstance(task, Config) else {"the task file": task}
    return evaluate_student(cfg, student, inputs, out, reads=reads, progress=progress, log=log, student_model=student_model,
                            student_api_key_env=student_api_key_env)


def claim_report_folder(path: Path, what: str) -> Path:
    """A folder `eval --student` writes its report into: new, empty, or one an earlier
    `eval --student` made (its marker, EVAL_MARKER, a promptdistill record); never
    a symlink, and nothing else is ever written over."""
    check_no_symlinks(path, what)
    if not check_output_folder(path, what):
        return path
    entries = sorted(e.name for e in path.iterdir())
    if not entries:
        return path
    try:
        record = json.loads((path / EVAL_MARKER).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not (isinstance(record, dict) and record.get("written_by") == "promptdistill" and not (path / EVAL_MARKER).is_symlink()):
        shown = ", ".join(entries[:3]) + (" ..." if len(entries) > 3 else "")
        raise PromptDistillError(f"{what} exists and was not written by `eval --student` (it holds {shown}); "
                                 "choose a new or empty folder", path=path)
    for entry in path.iterdir():
        check_no_symlinks(entry, f"{what}/{entry.name}")
    return path


def _adapter_folder(student: str) -> Path | None:
    """The student as a PEFT adapter folder (adapter_config.json in it), checked whole; None for a model."""
    folder = Path(os.path.expanduser(student))
    if not (folder / "adapter_config.json").is_file():
        return None
    check_adapter_folder(folder, "pass a whole adapter folder (adapter_config.json and adapter_model.safetensors)")
    return folder


def _adapter_base(adapter: Path, cfg: Config) -> str:
    """The model an adapter is applied to: its adapter_config.json's base_model_name_or_path
    (with its pinned revision). Named by the task's models.student when it is that very
    model (the built-in model's cache folder, the same folder), so the teacher can share its weights."""
    from .models import BUILTIN_SMOLLM2, cache_dir

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise PromptDistillError("the adapter names no base model (base_model_name_or_path); evaluate it on its base with "
                                 "a model folder, or fix its adapter_config.json", path=adapter / "adapter_config.json")
    if config.get("revision") and not os.path.exists(base):
        base = f"{base}@{config['revision']}"
    same_folder = os.path.exists(base) and os.path.exists(os.path.expanduser(cfg.models.student)) and \
        os.path.samefile(base, os.path.expanduser(cfg.models.student))
    builtin = cfg.models.student == BUILTIN_SMOLLM2 and os.path.exists(base) and \
        real_path(base) == real_path(cache_dir() / BUILTIN_SMOLLM2)
    if base == cfg.models.student or same_folder or builtin:
        return cfg.models.student
    if base == BUILTIN_SMOLLM2 or real_path(base) == real_path(cache_dir() / BUILTIN_SMOLLM2):
        return BUILTIN_SMOLLM2
    if base.startswith(("/", "./", "../", "~")) and not os.path.exists(base):
        raise PromptDistillError(f"the adapter's base model folder {base!r} (base_model_name_or_path) is not on this machine; "
                                 "set it to the base's hub id or folder", path=adapter / "adapter_config.json")
    return base


def _load_any_student(cfg: Config, student: str, adapter: Path | None, log):
    """(student, base) as LoadedModels: an adapter on its base, the base being the same
    weights with the adapter switched off (one copy in memory), or a model and
    models.student beside it."""
    from peft import PeftModel

    from .models import LoadedModel, load_model

    base = load_model(cfg.models.student, cfg.models.device, cfg.models.dtype)
    if adapter is None:
        log(f"[promptdistill] eval: student {student}, base {cfg.models.student}")
        return replace(load_model(student, cfg.models.device, cfg.models.dtype), name=student), base
    log(f"[promptdistill] eval: student {adapter} on its base {cfg.models.student}")
    try:
        peft_model = PeftModel.from_pretrained(base.model, str(adapter)).eval()
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PromptDistillError(f"the adapter does not load onto {cfg.models.student!r} ({first[:200]})", path=adapter) from None
    loaded = LoadedModel(peft_model, base.tokenizer, student, base.device)
    return loaded, replace(RunDir.base_of(loaded), name=cfg.models.student)


def evaluate_run(cfg: Config, run_dir, examples, *, progress: bool = True, reads: dict | None = None) -> dict:
    """Evaluate the teacher, base and trained student of a run directory on
    `examples` and write the report with its pictures into RUN/eval; return the
    report. The run is checked (`check_eval`; `reads` names the files the
    examples came from) and locked first."""
    run, offtask = check_eval(cfg, run_dir, reads)
    with run.lock():
        return _evaluate(cfg, run, examples, offtask, progress=progress)


def _evaluate(cfg: Config, run: RunDir, examples, offtask: list | None, *, progress: bool = True) -> dict:
    """The evaluation of a checked, locked run (see evaluate_run)."""
    from .evaluation.run_report import write_run_report

    adapter = run.adapter()
    student = run.load_student(cfg)
    # The base row and (when it is the same model on the transformers backend)
    # the teacher share the student's weights with the adapter switched off: one copy in memory.
    report = _evaluate_systems(cfg, run.eval_dir, examples, offtask, student, run.base_of(student),
                               {"adapter": adapter_fingerprint(adapter)}, train_records=_train_records(run),
                               teacher_records=_heldout_labels(cfg, run), progress=progress)
    _record_heldout_source(run.report_path, examples, run.split_file("train"))
    # Pictures (confusion matrices, loss curves, cost) into eval/, report.md and report.html.
    write_run_report(run.path)
    if cfg.train.report_to != "none":
        from .training.tracking import log_eval_metrics

        log_eval_metrics(cfg.train.report_to, run.train_dir, cfg.train, report)
    return report


def _evaluate_systems(cfg: Config, out_dir: Path, examples, offtask: list | None, student, base, student_identity: dict, *,
                      train_records: list | None = None, teacher_records: dict | None = None, progress: bool = True) -> dict:
    """Teacher, base and student on `examples` into `out_dir` (report.json,
    predictions): the one evaluation behind `eval --run-dir` and `eval --student`.
    `student_identity` is what the student's answers depend on (its adapter's or
    model's fingerprint): an interrupted evaluation resumes only with the same."""
    from .evaluation.systems import Systems, evaluate_systems
    from .teachers import load_teacher

    task = Task(cfg.task)
    if cfg.eval.max_examples:
        examples = examples[: cfg.eval.max_examples]
    teacher = load_teacher(cfg, base=base)
    # eval.judge_model: another model judges free-text replies, through the teacher's backend and settings.
    judge = load_teacher(replace(cfg.models, teacher=cfg.eval.judge_model)) if cfg.eval.judge_model else None
    # An interrupted evaluation resumes only with the same settings, inputs and student.
    resume_settings = {**cfg.to_dict(), "heldout_inputs": fingerprint([(e.id, e.key) for e in examples]),
                       "offtask_inputs": fingerprint([(e.id, e.key) for e in offtask or ()]), **student_identity}
    return evaluate_systems(task, examples, out_dir, Systems(teacher, student, base, judge), cfg.eval, seed=cfg.data.seed,
                            train_records=train_records, offtask=offtask, resume_settings=resume_settings,
                            teacher_records=teacher_records, progress=progress)


def _check_heldout_unseen(cfg: Config) -> None:
    """data.heldout_inputs shares no input with data.inputs (the same text or
    conversation, or one opening with the same user turn, which the split keeps
    together): a held-out input seen in training would be scored on what it was
    trained with. Checked before the run is written; refused with the line."""
    columns = columns_of(cfg.data)
    trained = {split_key(e) for e in read_inputs(input_location(cfg, cfg.data.inputs), columns)}
    path = input_location(cfg, cfg.data.heldout_inputs)
    for e in read_inputs(path, columns):
        if split_key(e) in trained:
            raise PromptDistillError("this input is also in data.inputs (the training side); a held-out input must be "
                                     "unseen in training", path=path, line=e.line, field="data.heldout_inputs")


def _train_records(run: RunDir) -> list | None:
    """The training split's labeled records (what the surface baseline is fitted on), or None before labeling."""
    path = run.labels_file("train")
    if not path.exists() or not run.split_file("train").exists():
        return None
    train_ids = {e.id for e in read_inputs(run.split_file("train"))}
    return [r for r in read_labeled(path) if r.id in train_ids]


def _heldout_labels(cfg: Config, run: RunDir) -> dict | None:
    """The label stage's answers to the held-out inputs (accepted and rejected), by id,
    when that stage finished under the label settings of `cfg`: the evaluation's
    teacher row takes them instead of asking the same teacher the same questions
    again (for a teacher behind a paid API, the held-out set is paid for once).
    None when the labels are missing or were made with other settings."""
    stored = run.stored_settings("label")
    if stored is None or changed_settings(stored, stage_settings(cfg)["label"]):
        return None
    paths = [p for p in (run.labels_file("heldout"), run.rejects_file("heldout")) if p.exists()]
    return {r.id: r for path in paths for r in read_labeled(path)}


def _split_records(run: RunDir) -> tuple[list, list]:
    """The labeled records of the run's current split, training and held-out side
    (whatever else a labels file holds); empty before the split or the labels exist."""
    sides = []
    for side in ("train", "heldout"):
        split, labels = run.split_file(side), run.labels_file(side)
        if not split.exists() or not labels.exists():
            sides.append([])
            continue
        ids = {e.id for e in read_inputs(split)}
        sides.append([r for r in read_labeled(labels) if r.id in ids])
    return sides[0], sides[1]


def _cached(compute):
    """`compute`, called at most once (the stage settings that read the labels)."""
    box = []

    def value():
        if not box:
            box.append(compute())
        return box[0]
    return value


# -- synthetic inputs ------------------------------------------------------


def add_synthetic_inputs(cfg: Config, run: RunDir, task: Task, train: list, heldout: list, *, force: bool, progress: bool,
                         log) -> tuple[list, list, dict]:
    """`data.synthesize` inputs written into RUN/synth (synthesis.py), joined to the split.

    With real inputs, the synthetic ones go to the training side only and the
    held-out set stays real: a student scored on the generator's own inputs
    measures how well it imitates the generator's distribution, not how it
    does on the inputs it will meet. The seeds strategy paraphrases the real
    training inputs only, and the near-duplicate gate compares against them, so
    no held-out input leaks in as a paraphrase. With no real inputs, the
    synthetic ones are split as real ones would be and the report says the
    held-out set is synthetic.
    """
    from .synthesis import synthesize

    out = run.synth_dir / "inputs.jsonl"
    seeds = train if train and "seeds" in cfg.synthesize.strategies else None
    report = synthesize(cfg, cfg.data.synthesize, out, seeds=seeds, avoid=heldout, force=force, progress=progress, log=log)
    synthetic = fit_inputs(read_inputs(out), task, cfg, out, log) if report["kept"] else []
    log(f"[promptdistill] synthesize: {report['kept']} inputs kept of {report['requests']} generated "
        f"(dropped {report['dropped_by_reason']}); report: {out.with_name('inputs.synthesis.md')}")
    if train or heldout:
        return train + synthetic, heldout, {"synthetic_train": len(synthetic), "heldout_source": "real"}
    if not synthetic:
        raise PromptDistillError("synthesis kept no inputs; see the synthesis report", path=out.with_name("inputs.synthesis.md"))
    train, heldout = split_examples(synthetic, cfg.data.heldout_fraction, cfg.data.seed)
    return train, heldout, {"synthetic_train": len(train), "heldout_source": "synthetic"}


def synthetic_label_report(run: RunDir) -> None:
    """The teacher's labels of the synthetic inputs against the quotas they were asked for."""
    from .synthesis import quota_report

    out = run.synth_dir / "inputs.jsonl"
    if not out.with_name("inputs.synthesis.json").exists():
        return
    labeled, rejected = [], 0
    for side in ("train", "heldout"):
        path = run.labels_file(side)
        labeled += [r.to_json() for r in read_labeled(path) if r.meta.get("synthetic")] if path.exists() else []
        rejects = run.rejects_file(side)
        rejected += sum(1 for r in read_labeled(rejects) if r.meta.get("synthetic")) if rejects.exists() else 0
    quota_report(out, labeled, rejected)


def heldout_source(examples) -> str:
    """"real", "synthetic" or "mixed": where the held-out inputs come from (synthesis marks its inputs)."""
    synthetic = sum(1 for e in examples if (e.meta or {}).get("synthetic"))
    return "real" if synthetic == 0 else "synthetic" if synthetic == len(examples) else "mixed"


def _record_heldout_source(report_path: Path, examples, train_split: Path | None = None) -> None:
    """report.json says whether the held-out set is real (report.md says it in a sentence)."""
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report["heldout_source"] = heldout_source(examples)
    if train_split is not None and train_split.exists():
        report["synthetic_train"] = sum(1 for e in read_inputs(train_split) if e.meta.get("synthetic"))
    atomic_write_json(report_path, report)
