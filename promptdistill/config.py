"""Configuration as data.

A task file is TOML with one table per concern; each table maps onto a
dataclass below. Unknown keys are refused with the closest valid name, and
values are type-checked, so a typo fails at load time instead of silently
falling back to a default an hour into a run. Paths in the file are relative
to the file itself.

    [task]      the teacher prompt, answer parsing, labels, student target
    [data]      where the inputs are, held-out fraction, split seed
    [models]    teacher and student model names, device, dtype
    [train]     LoRA and optimiser settings
    [eval]      evaluation settings
    [synthesize] how inputs are written when there are few or none (synthesis.py)
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .api_access import check_url
from .errors import PromptDistillError
from .models import BUILTIN_SMOLLM2
from .replychecks import parse_checks

ANSWER_MODES = ("generate", "choose")
# What each teacher backend (models.teacher_backend) can do beyond labeling.
# teachers/ implements the backends; the table sits here so validate_config
# refuses a setting the chosen backend cannot serve when the task file is
# read, without importing any stage.
#   continuation_logprobs: score given token sequences after the prompt, with
#   the full log-distribution per token (on-policy training, per-token fidelity KL)
#   complete: sampled replies to a generator conversation (synthesis)
#   raw_prompts: continue raw token-id prompts (synthesis's magpie strategy
#   continues the task's template cut open in the user turn); the server
#   backend sends token ids to /completions (vLLM takes them); a chat API cannot
TEACHER_CAPABILITIES = {
    "transformers": {"continuation_logprobs": True, "complete": True, "raw_prompts": True},
    "vllm": {"continuation_logprobs": False, "complete": True, "raw_prompts": True},
    "vllm-server": {"continuation_logprobs": False, "complete": True, "raw_prompts": True},
    # a chat API (teachers/chat.py): messages in, text out; no token ids, so no raw template (Magpie)
    "chat": {"continuation_logprobs": False, "complete": True, "raw_prompts": False},
}
# The backends that send requests over HTTP (teacher_url, the API key rules of teachers/api.py).
HTTP_BACKENDS = ("vllm-server", "chat")
TEACHER_BACKENDS = tuple(TEACHER_CAPABILITIES)
TURNS_NEED_RAW_PROMPTS = ("synthesize.turns > 1 writes follow-up user turns Magpie-style, from the raw chat template, which teacher "
                          "backend {backend!r} cannot send (a chat API takes messages only); set synthesize.turns = 1")
MAGPIE_NEEDS_RAW_PROMPTS = ("the magpie strategy continues the task's raw chat template, which teacher backend {backend!r} cannot "
                            "send (a chat API takes messages only); set synthesize.strategies to \"prompt\" and/or \"seeds\"")
STUDENT_TARGETS = ("normalized", "teacher_reply")
REPLY_FORMATS = ("label", "json", "text")
TRUNCATED_REPLIES = ("reject", "keep")  # task.truncated_replies, for reply_format = "text"
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow", "trackio")  # trackers, see tracking.py
LR_SCHEDULES = ("constant", "linear", "cosine")
LOSSES = ("sft", "kd", "on-policy")
BALANCE = ("none", "answers")  # train.balance, see training/data.py
REPLY_FILTERS = ("none", "checks")  # train.reply_filter, see training/data.py
AUTOCAST = ("auto", "bf16", "none")  # train.autocast, see training/precision.py
# Inputs per batch wherever a local model answers many inputs (labeling on the
# transformers backend, the evaluation's answers, predict). With shared-prefix
# attention a row costs only its own tokens' cache, so a large batch is cheap
# in memory and keeps the decode steps' matrix products busy; records are
# written a batch at a time.
GENERATE_BATCH_SIZE = 64
# models.prefix_attention: how a batch attends to the teacher's cached prompt
# (prefix_cache.py). "cascade": our two-part attention over one copy of the
# prefix; "expand": the prefix's cache copied per row, the model's own
# attention (SDPA, fused kernels on a GPU); "auto": cascade on CPU, expand elsewhere.
PREFIX_ATTENTION = ("auto", "cascade", "expand")


@dataclass
class TaskConfig:
    """What the teacher is asked and how its answer is read."""

    name: str = "task"
    # Exactly one of the two: a system message sent before the input as the user
    # message, or a user message template whose `{text}` is replaced by the input.
    system_prompt: str | None = None
    user_template: str | None = None
    answer_pattern: str = r"Final Answer:\s*(\w+)"
    labels: list[str] = field(default_factory=list)
    answer_mode: str = "generate"
    # How a label is written as a reply: the target in `choose` mode and for
    # student_target = "normalized".
    answer_template: str = "Final Answer: {label}"
    student_target: str = "normalized"
    # "label": the answer is one label read with answer_pattern. "json": the
    # answer is a JSON object that must have every field of json_fields; its
    # canonical form plays the label's role (see jsonreply.py).
    # "text": the teacher's whole reply (reasoning cut off) is the answer and
    # the student's target: an assistant prompt (persona, style, policies).
    reply_format: str = "label"
    json_fields: list[str] = field(default_factory=list)
    # reply_format = "text": a reply cut off at the teacher's reply limit is
    # set aside ("reject", status "truncated" in the rejects file) or trained
    # as it stands ("keep"); counted in the labels summary either way.
    truncated_replies: str = "reject"
    # Text the teacher's reply is made to start with (assistant prefill, e.g.
    # '{"category": "'): the teacher continues it, and the recorded reply is
    # prefix + continuation. Steers a small teacher into the format; the
    # student and the base model get no prefill.
    reply_prefix: str = ""
    max_new_tokens: int = 32
    # The teacher's reply limit when it differs from the student's
    # max_new_tokens: a reasoning teacher thinks before it answers, and its
    # thinking is never what the student learns (reasoning.py). Unset: the same.
    teacher_max_new_tokens: int | None = None
    temperature: float = 0.0
    # Self-consistency (generate mode): draw this many answers per input and
    # keep the majority label; needs temperature > 0.
    samples: int = 1
    # Inputs whose confidence (vote share, or top label probability in choose
    # mode) is below this go to the rejects file with status low_confidence.
    min_confidence: float = 0.0
    # Generate mode: store the teacher's top-k log-probabilities for each reply
    # token (the soft target of `kd` training on free-form replies); 0 disables.
    top_logprobs: int = 20


@dataclass
class DataConfig:
    inputs: str | None = None
    heldout_fraction: float = 0.2
    # A file of held-out inputs (read like data.inputs): the evaluation then
    # uses exactly these, every input of data.inputs is trained on, and
    # heldout_fraction is not used. An input in both files is refused (it
    # would be scored on what it was trained with).
    heldout_inputs: str | None = None
    seed: int = 0
    # Use only this many inputs (after shuffling with `seed`); 0 means all.
    limit: int = 0
    # Duplicate texts are always reported; with dedupe only the first is kept.
    dedupe: bool = False
    # Inputs whose student prompt leaves no room within train.max_length for
    # the reply are reported with their lines, then skipped or truncated.
    too_long: str = "skip"  # skip | truncate
    # Synthesize this many inputs (synthesis.py, settings in [synthesize]) before
    # the split: `run` can then start from the prompt alone. With data.inputs
    # too, the synthetic inputs join the training side only and the held-out
    # set stays real (the report says which it was).
    synthesize: int = 0
    # Share of the training items that are the base model's own answers to
    # general prompts (general.py's pool, none of them in the general-ability
    # check): 0.2 makes one item in five such an answer. Self-generated, so no
    # outside data is needed; it keeps the student close to its base off the
    # task (the general-ability check in the report measures how close).
    mix_general: float = 0.0
    # Which column of the inputs holds each field, where it is not named text /
    # messages / id / label (a Parquet, Arrow or Hub dataset's, or a JSONL
    # file's own names; dataset_inputs.py). Unset: the standard name.
    text_column: str | None = None
    messages_column: str | None = None
    id_column: str | None = None
    label_column: str | None = None


@dataclass
class ModelsConfig:
    teacher: str = BUILTIN_SMOLLM2
    student: str = BUILTIN_SMOLLM2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    # Load the student's base weights in 4-bit NF4 while it trains (QLoRA, bitsandbytes:
    # the qlora extra; CUDA only). The teacher, evaluation, predict and export load the
    # base in `dtype` as always; the adapter trained on the 4-bit base is applied to it.
    load_in_4bit: bool = False
    # Who runs the teacher wherever it answers (labeling, the evaluation's
    # teacher row, fidelity; see TEACHER_CAPABILITIES for what needs
    # transformers): transformers in this process, vLLM's offline engine in
    # this process (the vllm extra), or an OpenAI-compatible server at
    # teacher_url (then `teacher` is the model name the server knows, and its
    # tokenizer must load here under that name: prompts are rendered here).
    # vllm-server: token-id prompts to a vLLM server's /completions (the
    # tokenizer must load here under `teacher`); chat: messages to any chat
    # API's /chat/completions (no local tokenizer; see docs/teacher-api.md).
    teacher_backend: str = "transformers"  # transformers | vllm | vllm-server | chat
    teacher_url: str | None = None  # e.g. http://localhost:8000/v1
    # HTTP backends: requests in flight at once.
    teacher_concurrency: int = 8
    # HTTP backends: the environment variable holding the API key (besides
    # PROMPTDISTILL_API_KEY, which wins); a key is never read from a file.
    teacher_api_key_env: str | None = None
    # HTTP backends: allow sending the key over plain http:// to a host that is not this machine.
    teacher_allow_insecure_http: bool = False
    # chat backend: price per million prompt / completion tokens (cost in the
    # labels summary and the report), a spending limit that stops labeling
    # (resumable), and request / token rate limits per minute (0 = none).
    teacher_price_in: float = 0.0
    teacher_price_out: float = 0.0
    teacher_max_cost: float = 0.0
    teacher_rpm: int = 0
    teacher_tpm: int = 0
    # HTTP backends: seconds one request may take, retries for 429/5xx/timeouts/malformed replies.
    teacher_timeout: float = 300.0
    teacher_max_retries: int = 6
    # vllm backend: keyword arguments for vllm.LLM, e.g. {tensor_parallel_size = 4, max_model_len = 4096};
    # only the engine options in VLLM_OPTIONS.
    vllm_options: dict = field(default_factory=dict)
    # Let the teacher's hub repository run its own Python code (vLLM's
    # trust_remote_code). Set only by the --trust-remote-code flag (or a Python
    # caller's settings): a task file may come from someone else, and is refused
    # when it sets this.
    trust_remote_code: bool = False
    # transformers backend: how labeling attends to the cached prompt (PREFIX_ATTENTION).
    # On 2 CPU cores cascade labeled 8.7x faster than a plain batched generate; on a
    # GPU it runs without fused kernels, so auto copies the prefix there (docs/teachers.md).
    prefix_attention: str = "auto"


@dataclass
class TrainConfig:
    # sft: cross-entropy on the teacher's answer; kd: KL from the teacher's
    # stored distribution; on-policy: the student samples, the teacher scores
    # (see losses.py and onpolicy.py, and the README's "Which loss").
    loss: str = "sft"
    # kd: weight of hard-label cross-entropy mixed into the KL (0 = pure KL).
    kd_alpha: float = 0.0
    # on-policy: temperature of the student's samples (1.0 = its own distribution).
    onpolicy_temperature: float = 1.0
    # on-policy: "full" reverse KL over the vocabulary at each sampled position,
    # or the "sampled"-token estimate used as a policy-gradient advantage.
    onpolicy_kl: str = "full"
    lora_rank: int = 32
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    # Clip the global gradient norm before each optimiser step (0 = no clipping).
    # 1.0 is transformers' Trainer default: early LoRA steps on short replies
    # have large gradients, and unclipped they overshoot.
    max_grad_norm: float = 1.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    epochs: int = 1
    max_steps: int = 0  # 0: run `epochs` full passes
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    eval_every: int = 50
    save_every: int = 100
    seed: int = 0
    # Also send the training metrics to a tracker: none | tensorboard | wandb (see tracking.py).
    report_to: str = "none"
    # How training examples are drawn: "none" = each example once per epoch;
    # "answers" = drawn with replacement, each teacher answer equally often
    # (an example's weight is 1 / its answer's count), so rare answers are not
    # drowned by the most common one (training/data.py). Label tasks only.
    balance: str = "none"
    # Which teacher replies are trained: "none" = every accepted reply;
    # "checks" = only those that pass every [[eval.checks]] rule (rejection
    # sampling: a teacher that follows its prompt 60% of the time teaches the
    # rule, not its lapses; training/data.py). sft and kd.
    reply_filter: str = "none"
    # Start from this trained adapter (a folder with adapter_config.json, e.g.
    # RUN/train/adapter; `--init-from RUN` sets it) instead of fresh LoRA
    # weights, with any loss: on-policy after sft or kd refines a student that
    # already answers in the task's format. The adapter's own LoRA shape
    # (rank, alpha, modules) is used.
    init_adapter: str | None = None
    # Recompute each layer's activations in the backward pass instead of keeping
    # them (less memory, about a third more compute; the same gradients).
    gradient_checkpointing: bool = False
    # Run the forward passes under bfloat16 autocast: "auto" does where the student
    # trains float32 weights on a CUDA device with bf16 (training/precision.py).
    autocast: str = "auto"  # auto | bf16 | none


@dataclass
class EvalConfig:
    # Evaluate on at most this many held-out inputs; 0 means all.
    max_examples: int = 0
    # Also evaluate the base student (no adapter) for the three-way table.
    include_base: bool = True
    # Per-request latency: this many held-out inputs are sent one at a time to
    # every system (one generated answer each, what all of a system's requests
    # start with cached, as a prefix-caching server does; evaluation/latency.py),
    # so all rows' latencies are measured alike; the quality metrics use
    # batched answers on all inputs.
    latency_requests: int = 32
    # The ceiling of the report's agreement: ask the teacher this many more
    # times per held-out input (generate mode, at task.temperature, which must
    # be > 0) and measure how often it repeats its own answer. 0 = off; choose
    # mode needs none (its ceiling comes from the stored distribution).
    teacher_resamples: int = 0
    # A second held-out set of inputs the prompt is not about (greetings,
    # unrelated questions, code; a file read like data.inputs): teacher, base
    # and student answer them, and the report gives the student's agreement
    # and KL with the teacher and with the base there (offtask.py).
    offtask_inputs: str | None = None
    # Score base and student on general.py's built-in general-ability check
    # (about 50 prompts with checkable answers) and the KL(base || student) there.
    general_ability: bool = True
    # The report flags a general-ability drop (base score - student score) above this share.
    general_max_drop: float = 0.1
    # Rules the prompt asks of every reply ([[eval.checks]] tables: name, kind and
    # the kind's parameters; replychecks.py): pass rates per system and the
    # prompt effect the student recovers on each (evaluation/checks.py, effect.py).
    checks: list[dict] = field(default_factory=list)
    # A judge compares each system's reply with the teacher's (evaluation/judge.py):
    # "teacher" (the teacher itself, with the prompt) or "off". Unset: "teacher"
    # for reply_format = "text", "off" otherwise.
    judge: str | None = None
    # The judge's model when it is not the teacher's (same backend and settings).
    judge_model: str | None = None


def task_settings(cfg: TaskConfig) -> dict:
    """The task settings that decide the teacher's labels, as hashed into fingerprints.
    An unset teacher_max_new_tokens is hashed as the max_new_tokens it stands
    for, so spelling the default out does not ask for new labels."""
    settings = dataclasses.asdict(cfg)
    if settings["teacher_max_new_tokens"] is None:
        settings["teacher_max_new_tokens"] = cfg.max_new_tokens
    return settings


def training_settings(cfg: TrainConfig) -> dict:
    """The train settings that decide the adapter: all but where metrics are mirrored
    (turning a tracker on must not invalidate checkpoints or a finished stage),
    gradient checkpointing (the same gradients, recomputed: it may change on
    resume) and autocast as spelled ("auto" means bf16 on one machine and
    nothing on another: checkpoint.checkpoint_settings records it resolved)."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("report_to", "gradient_checkpointing", "autocast")}
    if settings["reply_filter"] == "none":  # off, it changes nothing: runs trained before it existed stay valid
        del settings["reply_filter"]
    return settings


def reply_filter_settings(cfg: Config) -> dict:
    """What train.reply_filter's choice depends on besides the train settings, to
    spread into a stage's or checkpoint's settings: the checks it applies
    (eval.checks), so editing a rule retrains; nothing when the filter is off."""
    return {"reply_filter_checks": cfg.eval.checks} if cfg.train.reply_filter == "checks" else {}


def eval_settings(cfg: EvalConfig) -> dict:
    """The eval settings that decide the report, as hashed into the eval stage's fingerprint."""
    return dataclasses.asdict(cfg)


SYNTHESIS_STRATEGIES = ("prompt", "magpie", "seeds")
DEFAULT_PERSONAS = [
    "a busy professional writing quickly on a phone", "a student who is new to the topic", "a domain expert who uses jargon",
    "a non-native speaker", "an annoyed customer", "a retiree who writes long, polite messages", "a teenager using slang",
    "a journalist checking facts",
]


@dataclass
class SynthesizeConfig:
    """How synthetic inputs are written (synthesis.py; `promptdistill synthesize` or data.synthesize)."""

    # prompt: the generator reads the task's prompt and writes inputs it is about;
    # magpie: the generator continues the task's own template cut open in the user
    # turn; seeds: paraphrases and minimal edits of real inputs (seed_inputs).
    # The kept inputs are shared evenly between the strategies listed.
    strategies: list[str] = field(default_factory=lambda: ["prompt"])
    # Generator model (same backend as the teacher); default: the teacher itself.
    generator: str | None = None
    # Real inputs for the seeds strategy (a file read like data.inputs); `run` uses its real train split.
    seed_inputs: str | None = None
    # One persona and one difficulty are drawn per request (Persona Hub's idea: who writes steers what is written).
    personas: list[str] = field(default_factory=lambda: list(DEFAULT_PERSONAS))
    difficulties: list[str] = field(default_factory=lambda: ["easy", "typical", "hard", "ambiguous"])
    # Sampling temperature ramps from the first to the last request (diversity grows as the pool fills).
    temperature_min: float = 0.7
    temperature_max: float = 1.1
    max_new_tokens: int = 96
    # Earlier accepted inputs shown to the generator as examples not to repeat.
    feedback_examples: int = 3
    # Share of the prompt strategy's inputs that are edge cases or out of scope.
    edge_share: float = 0.1
    # Closed label sets: ask for inputs that should get each label in equal numbers.
    label_quotas: bool = True
    # Quality gates: character n-gram Jaccard at or above this against a kept input is a near duplicate.
    near_duplicate_threshold: float = 0.7
    ngram: int = 5
    min_chars: int = 3
    max_chars: int = 2000
    # Drop generations cut off at max_new_tokens (half an input); false keeps them as cut.
    drop_truncated: bool = True
    # Requests are planned in rounds of this many (feedback and quotas update between rounds).
    round_size: int = 32
    # Give up after this many requests per kept input asked for.
    max_requests_per_input: float = 4.0
    # User turns per synthetic input: above 1 each kept input opens a conversation that
    # the teacher answers turn by turn and the generator continues (Magpie-style) until
    # it has this many user turns; the inputs are then `messages` conversations.
    turns: int = 1


@dataclass
class Config:
    """A whole task file: one dataclass per table (task, data, models, train, eval)."""

    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    synthesize: SynthesizeConfig = field(default_factory=SynthesizeConfig)
    # Folder the config was read from: relative paths resolve against it.
    base_dir: Path = field(default_factory=Path.cwd, repr=False)

    def resolve_path(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else (self.base_dir / p)

    def to_dict(self) -> dict:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "base_dir"}


_SECTIONS = {"task": TaskConfig, "data": DataConfig, "models": ModelsConfig, "train": TrainConfig, "eval": EvalConfig,
             "synthesize": SynthesizeConfig}


def load_config(path, *, limits: bool = True) -> Config:
    """Read a task TOML file into a validated `Config` (`limits`: the upper bounds of LIMITS apply)."""
    from .io import check_file

    path = check_file(path, "task file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PromptDistillError(f"not valid UTF-8 ({e.reason} at byte {e.start})", path=path) from None
    except OSError as e:
        raise PromptDistillError(f"cannot be read ({e.strerror})", path=path) from None
    except tomllib.TOMLDecodeError as e:
        line = getattr(e, "lineno", None)
        raise PromptDistillError(f"invalid TOML: {getattr(e, 'msg', e)}", path=path, line=line) from None
    except RecursionError:
        raise PromptDistillError("invalid TOML: arrays or tables nested too deeply to read", path=path) from None
    cfg = config_from_dict(raw, source=path, limits=limits)
    cfg.base_dir = path.resolve().parent
    return cfg


def save_config(cfg: Config, path) -> None:
    """Write the resolved configuration as JSON (what a run directory's config.json holds;
    `load_student`, `evaluate_run` and `export` read it back)."""
    from .io import atomic_write_json

    atomic_write_json(path, cfg.to_dict())


def config_from_dict(raw: dict, source=None, *, limits: bool = True, remote_code: bool = False) -> Config:
    """A validated `Config` from a dict shaped like the task file (`source` names it in errors).

    A task file is trusted like a script, so two of its powers need the person
    running the command: `models.trust_remote_code` is accepted only with
    `remote_code` (the --trust-remote-code flag), and the counts of LIMITS are
    capped unless `limits` is off (--no-limits)."""
    _check_keys(raw, _SECTIONS, source, prefix="")
    models = raw.get("models")
    if isinstance(models, dict) and models.get("trust_remote_code") is True and not remote_code:
        raise PromptDistillError(_REMOTE_CODE, path=source, field="models.trust_remote_code")
    sections = {}
    for name, cls in _SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise PromptDistillError(f"[{name}] must be a table", path=source, field=name)
        sections[name] = _build(cls, values, source, name)
    cfg = Config(**sections)
    validate_config(cfg, source, limits=limits)
    return cfg


def _check_keys(values: dict, allowed, source, prefix: str) -> None:
    for key in values:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(allowed)}"
            raise PromptDistillError(f"unknown key{hint}", path=source, field=prefix + key)


def _build(cls, values: dict, source, section: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(values, fields, source, prefix=f"{section}.")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if not _matches(value, hints[key]):
            raise PromptDistillError(
                f"expected {_type_name(hints[key])}, got {type(value).__name__} {value!r}",
                path=source,
                field=f"{section}.{key}",
            )
    return cls(**values)


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(args[0])}"
    if args:
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "a table"}.get(hint, hint.__name__)


def validate_config(cfg: Config, source=None, *, limits: bool = True) -> None:
    """Every number within its range (validate_numbers, with the upper bounds of
    LIMITS unless `limits` is off), then the cross-field checks that a type
    check alone cannot do."""
    import re

    validate_numbers(cfg, source, limits=limits)
    t = cfg.task
    validate_names(t, source)
    if (t.system_prompt is None) == (t.user_template is None):
        raise PromptDistillError("set exactly one of system_prompt or user_template", path=source, field="task")
    if t.user_template is not None and "{text}" not in t.user_template:
        raise PromptDistillError("user_template must contain the placeholder {text}", path=source, field="task.user_template")
    try:
        pattern = re.compile(t.answer_pattern)
    except re.error as e:
        raise PromptDistillError(f"invalid regex: {e}", path=source, field="task.answer_pattern") from None
    if pattern.groups != 1:
        raise PromptDistillError(f"the regex must have exactly one group, it has {pattern.groups}", path=source, field="task.answer_pattern")
    _one_of(t.answer_mode, ANSWER_MODES, source, "task.answer_mode")
    _one_of(t.student_target, STUDENT_TARGETS, source, "task.student_target")
    _one_of(t.reply_format, REPLY_FORMATS, source, "task.reply_format")
    _one_of(t.truncated_replies, TRUNCATED_REPLIES, source, "task.truncated_replies")
    if t.reply_format == "json":
        _validate_json_task(t, source)
    elif t.reply_format == "text":
        _validate_text_task(t, source)
    elif t.json_fields:
        raise PromptDistillError("json_fields applies to reply_format = \"json\"", path=source, field="task.json_fields")
    if t.reply_prefix and t.answer_mode != "generate":
        raise PromptDistillError("reply_prefix applies to answer_mode = \"generate\"", path=source, field="task.reply_prefix")
    if t.answer_mode == "choose" and not t.labels:
        raise PromptDistillError("answer_mode 'choose' needs a closed label set (task.labels)", path=source, field="task.labels")
    if len(set(t.labels)) != len(t.labels):
        raise PromptDistillError("labels must be unique", path=source, field="task.labels")
    if "{label}" not in t.answer_template:
        raise PromptDistillError("answer_template must contain {label}", path=source, field="task.answer_template")
    if t.truncated_replies != "reject" and t.reply_format != "text":
        raise PromptDistillError("truncated_replies applies to reply_format = \"text\" (a label or JSON reply cut off has no answer)",
                                 path=source, field="task.truncated_replies")
    for label in t.labels if t.reply_format == "label" else ():
        if not _reads_back(pattern, t.answer_template, label):
            raise PromptDistillError(
                f"answer_pattern does not read label {label!r} back from answer_template", path=source, field="task.answer_template"
            )
    if t.reply_format == "label" and not t.labels and not any(_reads_back(pattern, t.answer_template, probe) for probe in ("label", "x", "1", "A")):
        raise PromptDistillError("answer_pattern does not read a label back from answer_template", path=source, field="task.answer_template")
    if t.samples > 1 and t.temperature == 0:
        raise PromptDistillError("samples > 1 needs temperature > 0 (greedy answers are all the same)", path=source, field="task.samples")
    if t.samples > 1 and t.answer_mode == "choose":
        raise PromptDistillError("samples > 1 applies to answer_mode 'generate'; choose mode already gives a distribution",
                                 path=source, field="task.samples")
    m = cfg.models
    if m.teacher_backend == "openai":
        raise PromptDistillError("teacher_backend 'openai' is gone: use 'vllm-server' (token-id prompts, vLLM only) or 'chat' "
                                 "(any chat API)", path=source, field="models.teacher_backend")
    _one_of(m.teacher_backend, TEACHER_BACKENDS, source, "models.teacher_backend")
    _one_of(m.prefix_attention, PREFIX_ATTENTION, source, "models.prefix_attention")
    if m.teacher_backend in HTTP_BACKENDS and not m.teacher_url:
        raise PromptDistillError(f"teacher_backend {m.teacher_backend!r} needs models.teacher_url (e.g. http://localhost:8000/v1)",
                                 path=source, field="models.teacher_url")
    if m.teacher_url is not None and m.teacher_backend not in HTTP_BACKENDS:
        raise PromptDistillError(f"teacher_url is only used with teacher_backend = 'chat' or 'vllm-server' (it is {m.teacher_backend!r}); "
                                 "set one (--teacher-backend)", path=source, field="models.teacher_url")
    if m.teacher_url is not None:
        check_url(m.teacher_url, source)
    if m.teacher_max_cost and not (m.teacher_price_in or m.teacher_price_out):
        raise PromptDistillError("a spending limit needs the prices: set models.teacher_price_in and teacher_price_out (per million tokens)",
                                 path=source, field="models.teacher_max_cost")
    if m.teacher_backend == "chat" and cfg.train.loss == "kd":
        raise PromptDistillError("the kd loss learns from the teacher's top_logprobs over token ids, which a chat API does not return; "
                                 "use train.loss = \"sft\" (or teacher_backend = \"vllm-server\")", path=source, field="train.loss")
    _one_of(cfg.data.too_long, ("skip", "truncate"), source, "data.too_long")
    tr = cfg.train
    _one_of(tr.lr_schedule, LR_SCHEDULES, source, "train.lr_schedule")
    _one_of(tr.loss, LOSSES, source, "train.loss")
    _one_of(tr.onpolicy_kl, ("full", "sampled"), source, "train.onpolicy_kl")
    if tr.loss == "on-policy" and not TEACHER_CAPABILITIES[m.teacher_backend]["continuation_logprobs"]:
        raise PromptDistillError(
            f"on-policy training needs a teacher that scores the student's samples token by token, which teacher_backend "
            f"{m.teacher_backend!r} cannot; use teacher_backend = \"transformers\" (or another loss)", path=source, field="train.loss")
    _one_of(tr.report_to, REPORT_TO, source, "train.report_to")
    _one_of(tr.balance, BALANCE, source, "train.balance")
    if tr.balance != "none" and t.reply_format in ("json", "text"):
        raise PromptDistillError(f"balance applies to label tasks (a {t.reply_format} reply is nearly always its own answer)",
                                 path=source, field="train.balance")
    _one_of(tr.autocast, AUTOCAST, source, "train.autocast")
    _one_of(tr.reply_filter, REPLY_FILTERS, source, "train.reply_filter")
    if tr.reply_filter == "checks" and not cfg.eval.checks:
        raise PromptDistillError("reply_filter = \"checks\" trains on the replies that pass the [[eval.checks]] rules; "
                                 "the task declares none", path=source, field="train.reply_filter")
    if tr.reply_filter != "none" and tr.loss == "on-policy":
        raise PromptDistillError("on-policy training learns from the student's own samples, not the teacher's replies; "
                                 "set reply_filter = \"none\" (or filter in the sft run it starts from)", path=source,
                                 field="train.reply_filter")
    validate_devices(cfg.models, source)
    _validate_precision(cfg, source)
    validate_vllm_options(m.vllm_options, source)
    validate_text(cfg, source)
    _validate_synthesize(cfg, source)
    _validate_resamples(cfg, source)
    _validate_eval_replies(cfg, source)


def _validate_precision(cfg: Config, source) -> None:
    """The precision settings that contradict the device or dtype on their face; whether
    this machine has CUDA and bitsandbytes is overrides.check_training_precision's."""
    m, tr = cfg.models, cfg.train
    if m.load_in_4bit and m.device in ("cpu", "mps"):
        raise PromptDistillError(f"4-bit loading (bitsandbytes) needs a CUDA device; models.device is {m.device!r}",
                                 path=source, field="models.load_in_4bit")
    if tr.autocast == "bf16" and m.dtype in ("float16", "bfloat16") and not m.load_in_4bit:
        raise PromptDistillError(f"bf16 autocast applies to float32 weights; models.dtype is {m.dtype!r} "
                                 "(use dtype = \"float32\" or autocast = \"none\")", path=source, field="train.autocast")


def _validate_synthesize(cfg: Config, source) -> None:
    sy = cfg.synthesize
    if not sy.strategies:
        raise PromptDistillError(f"name at least one of {', '.join(SYNTHESIS_STRATEGIES)}", path=source, field="synthesize.strategies")
    for s in sy.strategies:
        _one_of(s, SYNTHESIS_STRATEGIES, source, "synthesize.strategies")
    if len(set(sy.strategies)) != len(sy.strategies):
        raise PromptDistillError("strategies must be unique", path=source, field="synthesize.strategies")
    if "seeds" in sy.strategies and not (sy.seed_inputs or cfg.data.inputs):
        raise PromptDistillError("the seeds strategy needs real inputs: set synthesize.seed_inputs (or data.inputs)",
                                 path=source, field="synthesize.seed_inputs")
    if cfg.data.synthesize and "magpie" in sy.strategies and not TEACHER_CAPABILITIES[cfg.models.teacher_backend]["raw_prompts"]:
        raise PromptDistillError(MAGPIE_NEEDS_RAW_PROMPTS.format(backend=cfg.models.teacher_backend), path=source,
                                 field="synthesize.strategies")
    if cfg.data.synthesize and sy.turns > 1 and not TEACHER_CAPABILITIES[cfg.models.teacher_backend]["raw_prompts"]:
        raise PromptDistillError(TURNS_NEED_RAW_PROMPTS.format(backend=cfg.models.teacher_backend), path=source, field="synthesize.turns")
    if not sy.personas or not sy.difficulties:
        raise PromptDistillError("needs at least one entry", path=source,
                                 field="synthesize.personas" if not sy.personas else "synthesize.difficulties")
    if not 0 <= sy.temperature_min <= sy.temperature_max:
        raise PromptDistillError("needs 0 <= temperature_min <= temperature_max", path=source, field="synthesize.temperature_min")
    if sy.max_chars < sy.min_chars:
        raise PromptDistillError("must be >= min_chars", path=source, field="synthesize.max_chars")


def _validate_resamples(cfg: Config, source) -> None:
    """eval.teacher_resamples needs answers that can differ: sampled, in generate mode."""
    k = cfg.eval.teacher_resamples
    if k and cfg.task.answer_mode == "choose":
        raise PromptDistillError("choose mode's ceiling comes from the stored label distribution; set teacher_resamples = 0",
                                 path=source, field="eval.teacher_resamples")
    if k and cfg.task.temperature == 0:
        # Greedy resamples repeat the recorded answer: a ceiling of 100% that says nothing.
        raise PromptDistillError("resamples need task.temperature > 0 (greedy answers are all the same)",
                                 path=source, field="eval.teacher_resamples")


JUDGES = ("teacher", "off")


def judge_enabled(settings: EvalConfig, reply_format: str) -> bool:
    """Whether the evaluation asks a judge: eval.judge, else on for free-text replies."""
    return (settings.judge or ("teacher" if reply_format == "text" else "off")) == "teacher"


def _validate_eval_replies(cfg: Config, source) -> None:
    """The reply checks (every regex and schema compiled now, not when the evaluation
    reaches them) and the judge settings."""
    parse_checks(cfg.eval.checks, source)
    e = cfg.eval
    if e.judge is not None:
        _one_of(e.judge, JUDGES, source, "eval.judge")
        if e.judge == "teacher" and cfg.task.reply_format != "text":
            raise PromptDistillError("the judge compares free-text replies: it applies to task.reply_format = \"text\"",
                                     path=source, field="eval.judge")
    if e.judge_model is not None and not judge_enabled(e, cfg.task.reply_format):
        raise PromptDistillError("judge_model is unused with the judge off (eval.judge)", path=source, field="eval.judge_model")
    if e.judge_model is not None and not e.judge_model.strip():
        raise PromptDistillError("must name a model", path=source, field="eval.judge_model")


def _validate_json_task(t: TaskConfig, source) -> None:
    """A JSON reply has fields, not a label: no label set, no choosing among labels."""
    if not t.json_fields:
        raise PromptDistillError("reply_format = \"json\" needs the required fields (task.json_fields = [\"...\"])",
                                 path=source, field="task.json_fields")
    if len(set(t.json_fields)) != len(t.json_fields):
        raise PromptDistillError("json_fields must be unique", path=source, field="task.json_fields")
    if t.answer_mode != "generate":
        raise PromptDistillError("reply_format = \"json\" needs answer_mode = \"generate\"", path=source, field="task.answer_mode")
    if t.labels:
        raise PromptDistillError("reply_format = \"json\" has no label set; remove task.labels", path=source, field="task.labels")


def _validate_text_task(t: TaskConfig, source) -> None:
    """A text reply is the answer as a whole: no label set, no pattern to read one
    with, nothing to choose among; the student learns the reply itself."""
    defaults = TaskConfig()
    if t.labels:
        raise PromptDistillError("reply_format = \"text\" has no label set; remove task.labels", path=source, field="task.labels")
    if t.answer_mode != "generate":
        raise PromptDistillError("reply_format = \"text\" needs answer_mode = \"generate\"", path=source, field="task.answer_mode")
    for name in ("answer_pattern", "answer_template"):
        if getattr(t, name) != getattr(defaults, name):
            raise PromptDistillError(f"reply_format = \"text\" reads no answer out of the reply; remove task.{name}",
                                     path=source, field=f"task.{name}")
    if t.samples > 1:
        raise PromptDistillError("samples > 1 votes among labels; a text reply has none (set samples = 1)",
                                 path=source, field="task.samples")
    if t.min_confidence:
        raise PromptDistillError("min_confidence needs a label vote or distribution; a text reply has none",
                                 path=source, field="task.min_confidence")


def _reads_back(pattern, template: str, label: str) -> bool:
    m = pattern.search(template.replace("{label}", label))
    return bool(m) and m.group(1) == label


def _one_of(value, allowed, source, field_name) -> None:
    if value not in allowed:
        raise PromptDistillError(f"must be one of {', '.join(allowed)}; got {value!r}", path=source, field=field_name)


# -- numbers, devices and dtypes (every setting checked when the config is read) --

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:[0-9]+)?"

# Every single-field bound, checked beyond "finite" by validate_numbers:
# field -> (low, high, low inclusive, high inclusive); None is unbounded.
# Bounds that relate two fields are validate_config's.
_RANGES = {
    "task.max_new_tokens": (1, None, True, False),
    "task.teacher_max_new_tokens": (1, None, True, False),
    "task.temperature": (0, None, True, False),
    "task.samples": (1, None, True, False),
    "task.min_confidence": (0, 1, True, True),
    "task.top_logprobs": (0, None, True, False),
    "data.heldout_fraction": (0, 1, False, False),
    "data.limit": (0, None, True, False),
    "data.synthesize": (0, None, True, False),
    "data.mix_general": (0, 1, True, False),
    "models.teacher_concurrency": (1, None, True, False),
    "models.teacher_price_in": (0, None, True, False),
    "models.teacher_price_out": (0, None, True, False),
    "models.teacher_max_cost": (0, None, True, False),
    "models.teacher_rpm": (0, None, True, False),
    "models.teacher_tpm": (0, None, True, False),
    "models.teacher_timeout": (0, None, False, False),
    "models.teacher_max_retries": (0, None, True, False),
    "train.kd_alpha": (0, 1, True, True),
    "train.onpolicy_temperature": (0, None, False, False),
    "train.lora_rank": (1, None, True, False),
    "train.lora_alpha": (0, None, False, False),
    "train.lora_dropout": (0, 1, True, False),
    "train.learning_rate": (0, None, False, False),
    "train.weight_decay": (0, None, True, False),
    "train.max_grad_norm": (0, None, True, False),
    "train.warmup_steps": (0, None, True, False),
    "train.epochs": (1, None, True, False),
    "train.max_steps": (0, None, True, False),
    "train.batch_size": (1, None, True, False),
    "train.grad_accum": (1, None, True, False),
    "train.max_length": (1, None, True, False),
    "train.eval_every": (1, None, True, False),
    "train.save_every": (1, None, True, False),
    "eval.max_examples": (0, None, True, False),
    "eval.latency_requests": (1, None, True, False),
    "eval.teacher_resamples": (0, None, True, False),
    "eval.general_max_drop": (0, 1, True, True),
    "synthesize.max_new_tokens": (1, None, True, False),
    "synthesize.turns": (1, None, True, False),
    "synthesize.feedback_examples": (0, None, True, False),
    "synthesize.edge_share": (0, 1, True, False),
    "synthesize.near_duplicate_threshold": (0, 1, False, True),
    "synthesize.ngram": (1, None, True, False),
    "synthesize.min_chars": (1, None, True, False),
    "synthesize.round_size": (1, None, True, False),
    "synthesize.max_requests_per_input": (1, None, True, False),
}
# Upper bounds on counts and concurrency that a task file from someone else
# could otherwise set to exhaust the machine (100000 threads, a million samples
# per input); --no-limits (limits=False) lifts them for a file you wrote.
LIMITS = {
    "task.samples": 64,
    "task.max_new_tokens": 32768,
    "task.top_logprobs": 20,
    "models.teacher_concurrency": 256,
    "eval.teacher_resamples": 64,
    "eval.latency_requests": 10000,
    "data.synthesize": 1_000_000,
    "synthesize.max_new_tokens": 32768,
    "synthesize.turns": 64,
    "synthesize.round_size": 100_000,
    "synthesize.max_requests_per_input": 100,
    "synthesize.feedback_examples": 1000,
}
# What a bound's edge means, added to its error.
_RANGE_NOTES = {"train.max_grad_norm": "0 = no clipping", "eval.teacher_resamples": "0 = off"}


def validate_numbers(cfg: Config, source=None, *, limits: bool = True) -> None:
    """Every number of every section is finite (TOML reads nan and inf, and
    comparisons with nan are all false, so range checks alone let it through)
    and within its range, with the field named; with `limits`, at most its LIMITS bound."""
    import math

    for section in _SECTIONS:
        values = getattr(cfg, section)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            name = f"{section}.{f.name}"
            if isinstance(value, float) and not math.isfinite(value):
                raise PromptDistillError(f"must be a finite number, got {value}", path=source, field=name)
            if name in _RANGES and isinstance(value, (int, float)):
                _check_range(value, name, *_RANGES[name], source)
            if limits and name in LIMITS and isinstance(value, (int, float)) and value > LIMITS[name]:
                raise PromptDistillError(f"must be <= {LIMITS[name]} (a limit against task files that exhaust the machine; "
                                         f"pass --no-limits to lift it), got {value}", path=source, field=name)
    if isinstance(cfg.train.target_modules, list) and not cfg.train.target_modules:
        raise PromptDistillError("must name at least one module (or \"all-linear\")", path=source, field="train.target_modules")


def _check_range(value, name, low, high, low_in, high_in, source) -> None:
    ok = (low is None or (value >= low if low_in else value > low)) and (high is None or (value <= high if high_in else value < high))
    if ok:
        return
    if high is None:
        text = f"must be {'>=' if low_in else '>'} {low}"
    else:
        text = f"must be in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
    note = f" ({_RANGE_NOTES[name]})" if name in _RANGE_NOTES else ""
    raise PromptDistillError(f"{text}{note}, got {value}", path=source, field=name)


def validate_devices(models: ModelsConfig, source=None) -> None:
    """The device and dtype strings, checked before any model loads."""
    check_device(models.device, source, "models.device")
    if models.dtype not in DTYPES:
        raise PromptDistillError(f"must be one of {', '.join(DTYPES)}; got {models.dtype!r}", path=source, field="models.dtype")


def check_device(device: str, source=None, field_name: str = "models.device") -> None:
    """auto, cpu, mps, cuda or cuda:N."""
    import re

    if not isinstance(device, str) or not re.fullmatch(DEVICE_PATTERN, device):
        raise PromptDistillError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps", path=source, field=field_name)


_REMOTE_CODE = ("trust_remote_code runs Python code from the model's repository and is never read from a task file "
                "(which may come from someone else): pass --trust-remote-code on the command line")
# The vllm.LLM engine options a task file may set (models.vllm_options): sizes,
# memory, parallelism and scheduling. Anything else is refused: an option that
# runs code (trust_remote_code: the flag), reads files or carries a secret
# (hf_token: the HF_TOKEN environment variable) has no place in a shared file.
VLLM_OPTIONS = ("max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "pipeline_parallel_size", "enforce_eager",
                "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching", "enable_chunked_prefill", "swap_space",
                "cpu_offload_gb", "kv_cache_dtype", "quantization", "block_size", "seed", "max_logprobs",
                "max_seq_len_to_capture", "distributed_executor_backend")
# Keys whose values are never echoed in an error (redacted), whatever table holds them.
SECRET_KEY_WORDS = ("token", "key", "secret", "password", "auth", "credential")


def redacted(options: dict) -> dict:
    """`options` with the values of secret-looking keys (token, api_key, ...) replaced by "***"."""
    return {k: "***" if any(w in str(k).lower() for w in SECRET_KEY_WORDS) else v for k, v in options.items()}


def validate_vllm_options(options: dict, source=None) -> None:
    """Only the engine options of VLLM_OPTIONS; trust_remote_code has its own flag."""
    for key in options:
        if key == "trust_remote_code":
            raise PromptDistillError(_REMOTE_CODE, path=source, field="models.vllm_options.trust_remote_code")
        if key not in VLLM_OPTIONS:
            raise PromptDistillError(f"not an engine option promptdistill passes to vLLM; allowed: {', '.join(VLLM_OPTIONS)}",
                                     path=source, field=f"models.vllm_options.{key}")


_CONTROL_CHARACTERS = "".join(map(chr, [*range(32), 127]))


def validate_names(t: TaskConfig, source=None) -> None:
    """The task's name, labels and JSON fields are one line of plain text: they
    are written into report headings, tables and file names, where a newline or
    NUL would start a line of its own (an image line the HTML report would inline)."""
    for name, values in (("task.name", [t.name]), ("task.labels", t.labels), ("task.json_fields", t.json_fields)):
        for value in values:
            bad = next((c for c in value if c in _CONTROL_CHARACTERS), None)
            if bad is not None:
                raise PromptDistillError(f"control character {bad!r} in {value!r}; names, labels and fields are one line of text",
                                         path=source, field=name)


def validate_text(cfg: Config, source=None) -> None:
    """Every string setting is text a tokenizer takes: a command-line argument
    with bytes that are not UTF-8 arrives as lone surrogates (Python's
    surrogateescape), which would fail only when the prompt is first tokenized."""
    def check(value, name):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise PromptDistillError(f"not valid text (undecodable byte or lone surrogate at character {e.start})",
                                         path=source, field=name) from None
        elif isinstance(value, (list, tuple)):
            for item in value:
                check(item, name)
        elif isinstance(value, dict):
            for k, item in value.items():
                check(k, name)
                check(item, f"{name}.{k}")

    for section in _SECTIONS:
        values = getattr(cfg, section)
        for f in dataclasses.fields(values):
            check(getattr(values, f.name), f"{section}.{f.name}")
