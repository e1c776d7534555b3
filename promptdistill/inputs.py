"""Which inputs a stage gets: read, checked, deduplicated, fitted to the models' contexts.

Decided once, for the split stage of `run` and for `label`, `eval` and
`predict` alike: data.dedupe, data.too_long (inputs too long for
train.max_length or for the student's or teacher's context window, reported
with their lines, skipped or truncated) and data.limit mean the same in
every command, and a bad file fails before anything is written.
"""

from __future__ import annotations

from dataclasses import replace

from .config import Config
from .dataset_inputs import columns_of
from .errors import PromptDistillError
from .records import check_gold_labels, read_inputs, report_duplicates
from .render import render_prompt
from .split import subsample
from .task import Task


def read_offtask(cfg: Config) -> list | None:
    """eval.offtask_inputs read and checked (None when unset); `run` and `eval` read it
    before writing anything, so a bad file fails before an hour of labeling and training."""
    if not cfg.eval.offtask_inputs:
        return None
    return read_inputs(cfg.resolve_path(cfg.eval.offtask_inputs))


def prepare_inputs(cfg: Config, task: Task, path, log, *, dedupe_hint: str = "data.dedupe = true") -> list:
    """The inputs of the input file that get labeled, the same for `run` (its
    split stage) and `label`: read and checked (gold labels in the label set),
    duplicates reported (only the first kept with data.dedupe), inputs too
    long for the student or the teacher reported with their lines (skipped or
    truncated per data.too_long), then data.limit of them drawn with data.seed."""
    examples = read_inputs(path, columns_of(cfg.data))
    check_gold_labels(examples, task.labels, path)
    examples = report_duplicates(examples, path, cfg.data.dedupe, lambda m: log(f"[promptdistill] {m}"), dedupe_hint)
    examples = fit_inputs(examples, task, cfg, path, log)
    examples = fit_context(examples, task, cfg, path, log, roles=("teacher",))
    examples = subsample(examples, cfg.data.limit, cfg.data.seed)
    if not examples:
        raise PromptDistillError("no inputs left after dropping those too long (see above); raise train.max_length or "
                                 "set data.too_long = \"truncate\"", path=path)
    return examples


def fit_inputs(examples, task: Task, cfg: Config, path, log) -> list:
    """Report inputs too long for the student (prompt + reply within train.max_length,
    and within the student model's context); skip them or truncate their text, as
    data.too_long says."""
    from .models import load_tokenizer

    tok = load_tokenizer(cfg.models.student)
    limit, what = cfg.train.max_length, f"train.max_length={cfg.train.max_length}"
    context = model_context(cfg.models.student, tok)
    if context is not None and context < limit:
        limit, what = context, f"the student {cfg.models.student}'s context of {context} tokens"
    return _fit(examples, tok, task.student_messages, "", limit - cfg.task.max_new_tokens, what, cfg, path, log)


def fit_context(examples, task: Task, cfg: Config, path, log, roles=("teacher", "student")) -> list:
    """Report inputs whose prompt plus reply limit (the teacher's own, see
    Task.teacher_max_new_tokens) exceed the teacher's (its
    prompt included) or the student's context window, with their lines; skip
    or truncate them per data.too_long. A vLLM server's teacher (vllm-server
    backend) is measured against the context the server reports for it (vLLM's
    max_model_len), asked before anything is written; a server that reports
    none is not checked. A chat API's teacher (chat backend) is not measured:
    there is no tokenizer here to count with, and the API applies its own
    template; an input too long for it fails at its request."""
    from .models import load_tokenizer

    m = cfg.models
    for role in roles:
        name = m.teacher if role == "teacher" else m.student
        if role == "teacher" and m.teacher_backend == "chat":
            continue
        if role == "teacher" and m.teacher_backend == "vllm-server":
            from .teachers import load_teacher

            server = load_teacher(m)
            context = server.served_context()
            tok = server.tokenizer if context is not None else None
        else:
            tok = load_tokenizer(name)
            context = model_context(name, tok)
        if role == "teacher" and m.teacher_backend == "vllm" and isinstance(m.vllm_options.get("max_model_len"), int):
            context = m.vllm_options["max_model_len"]
        if context is None:
            continue
        messages, prefix = (task.teacher_messages, cfg.task.reply_prefix) if role == "teacher" else (task.student_messages, "")
        reply = task.teacher_max_new_tokens if role == "teacher" else cfg.task.max_new_tokens
        examples = _fit(examples, tok, messages, prefix, context - reply,
                        f"the {role} {name}'s context of {context} tokens", cfg, path, log)
    return examples


def check_max_length(cfg: Config) -> None:
    """train.max_length may not exceed the student's context: training examples
    longer than the model's positions would fail, or train on garbage."""
    from .models import load_tokenizer

    context = model_context(cfg.models.student, load_tokenizer(cfg.models.student))
    if context is not None and cfg.train.max_length > context:
        raise PromptDistillError(f"{cfg.train.max_length} exceeds the student {cfg.models.student}'s context of {context} tokens; "
                                 f"set train.max_length <= {context}", field="train.max_length")


def model_context(name: str, tokenizer) -> int | None:
    """The most tokens a model takes: its config's max_position_embeddings (or the
    equivalent key), capped by the tokenizer's model_max_length when that is set."""
    from transformers import AutoConfig

    from .models import model_path

    limits = []
    try:
        mc = AutoConfig.from_pretrained(model_path(name))
    except (OSError, ValueError, KeyError):
        mc = None
    for c in (mc, getattr(mc, "text_config", None)):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(c, key, None) if c is not None else None
            if isinstance(value, int) and value > 0:
                limits.append(value)
                break
        if limits:
            break
    cap = getattr(tokenizer, "model_max_length", None)
    if isinstance(cap, int) and 0 < cap < 10**8:
        limits.append(cap)
    return min(limits) if limits else None


def _fit(examples, tok, messages, reply_prefix: str, budget: int, what: str, cfg: Config, path, log) -> list:
    # The prompt's tokens around an empty text, plus the text's own: exact up to a
    # few tokens where they meet, so inputs near the budget are rendered whole.
    # A conversation is always rendered whole: its earlier turns count too, and
    # a turn the model's chat template cannot render is refused here, by line.
    around = len(render_prompt(tok, messages(""), reply_prefix))
    kept, too_long = [], []
    for e in examples:
        ids = tok(e.text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        size = around + len(ids)
        if e.messages is not None or size > budget - 16:
            size = len(_render_input(tok, messages, e, reply_prefix, path))
        extra = size - budget
        if extra <= 0:
            kept.append(e)
            continue
        too_long.append(e)
        if cfg.data.too_long == "truncate" and extra < len(ids):
            kept.append(_shortened(e, tok.decode(ids[: len(ids) - extra]).strip()))
    if too_long:
        lines = ", ".join(str(e.line or e.id) for e in too_long[:20]) + (" ..." if len(too_long) > 20 else "")
        action = "truncated to fit" if cfg.data.too_long == "truncate" else "skipped (data.too_long = \"truncate\" keeps them shortened)"
        log(f"[promptdistill] {path}: {len(too_long)} inputs too long for {what} "
            f"with room for {cfg.task.max_new_tokens} reply tokens, {action}: lines {lines}")
    return kept


def _render_input(tok, messages, e, reply_prefix: str, path) -> list[int]:
    """The prompt's token ids for input `e`; a chat template that refuses the
    conversation (roles it cannot render, turns out of the order it wants)
    is one error naming the input's line."""
    try:
        return render_prompt(tok, messages(e.conversation()), reply_prefix)
    except PromptDistillError:
        raise
    except Exception as err:  # jinja's TemplateError (raise_exception in the template) and friends
        raise PromptDistillError(f"the chat template of {tok.name_or_path} cannot render this conversation "
                                 f"({type(err).__name__}: {str(err)[:200]})", path=path, line=e.line,
                                 field="messages" if e.messages is not None else "text") from None


def _shortened(e, text: str):
    """`e` with its text (a conversation's last user turn) cut to `text`."""
    if e.messages is None:
        return replace(e, text=text)
    return replace(e, text=text, messages=e.messages[:-1] + [{**e.messages[-1], "content": text}])
