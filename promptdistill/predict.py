"""Answering with a trained student, without the prompt.

Inputs are texts (arguments, or one per line of stdin) or, with `json_lines`,
JSON lines on stdin in the input file's JSONL form: `{"text": ...}` or a
conversation `{"messages": [...]}` ending in the user turn to answer, checked
as an input file's lines are (records.check_conversation)."""

from __future__ import annotations

from .config import GENERATE_BATCH_SIZE
from .errors import PromptDistillError
from .evaluation.systems import generate_answers
from .inputs import fit_context
from .models import LoadedModel
from .overrides import check_device_flag, check_models
from .records import Example, check_encodable, input_from_json, parse_json_line
from .rundir import RunDir, check_run_dir
from .task import UNPARSED, Task


def read_texts(texts: list[str], stdin, *, json_lines: bool = False) -> tuple[list[str | list[dict]], str]:
    """The inputs to answer and where they came from: `texts` when given, else one per
    line of `stdin` (a binary stream, UTF-8); each checked to be encodable. With
    `json_lines`, each line of stdin is a JSON input: a text, or a conversation
    (returned as its list of turns)."""
    source = "<arguments>" if texts else "<stdin>"
    if texts and json_lines:
        raise PromptDistillError("--json reads JSON lines from stdin; pass no texts as arguments", field="--json")
    if not texts:
        try:
            lines = [line.strip() for line in stdin.read().decode("utf-8").removeprefix("\ufeff").split("\n")]
        except UnicodeDecodeError as e:
            raise PromptDistillError(f"invalid UTF-8 at byte {e.start}", path="<stdin>") from None
        if json_lines:
            examples = [input_from_json(parse_json_line(line, source, n), source, n) for n, line in enumerate(lines, start=1) if line]
            return [e.messages if e.messages is not None else e.text for e in examples], source
        texts = [line for line in lines if line]
    for n, text in enumerate(texts, start=1):
        check_encodable(text, source, n)
    return texts, source


def predict_run(run_dir, texts: list[str | list[dict]], *, device: str | None = None, source: str = "<arguments>",
                log=print) -> list[tuple[str | None, str]]:
    """The `predict` command: (label, reply) for each input (a text or a conversation)
    with the student of a run, after the run, its models, `device` and the inputs
    are checked (a text task's label is its whole reply). Inputs over the
    student's context are reported by number (`source` names where they came
    from), then truncated or (data.too_long = "skip") answered (None, "??")."""
    run = RunDir(check_run_dir(run_dir))
    check_device_flag(device, "--device")
    cfg = run.load_config()
    check_models(cfg.models)
    run.adapter()
    if not texts:
        raise PromptDistillError("no texts given (pass them as arguments or on stdin)")
    task = Task(cfg.task)
    examples = [Example(id=str(n), text=t, line=n) if isinstance(t, str) else
                Example(id=str(n), text=t[-1]["content"], line=n, messages=t) for n, t in enumerate(texts, start=1)]
    fitted = {e.id: e.conversation() for e in fit_context(examples, task, cfg, source, log, roles=("student",))}
    student = run.load_student(cfg, device=device)
    answers = dict(zip(fitted, predict_texts(task, student, list(fitted.values()))))
    return [answers.get(e.id, (None, UNPARSED)) for e in examples]


def load_student(run_dir, device: str | None = None) -> tuple[Task, LoadedModel]:
    """The task and the trained student (base + adapter) of a run directory."""
    run = RunDir(run_dir)
    cfg = run.load_config()
    return Task(cfg.task), run.load_student(cfg, device=device)


def predict_texts(task: Task, student: LoadedModel, texts: list[str | list[dict]]) -> list[tuple[str | None, str]]:
    """(label, reply) for each text or conversation; label is None when the reply does not parse.

    Texts are answered in batches decoded together (`generate_answers`, the
    evaluation's path), which gives each text the reply it gets alone."""
    out = []
    for i in range(0, len(texts), GENERATE_BATCH_SIZE):
        batch = texts[i : i + GENERATE_BATCH_SIZE]
        for reply, _ in generate_answers(task, student, [task.student_messages(t) for t in batch]):
            out.append((task.parse_answer(reply)[0], reply))
    return out
