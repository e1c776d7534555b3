"""Teachers: who runs the model that sees the long prompt.

    base          the `Teacher` interface every stage talks to
    local         LocalTeacher: transformers in this process (shared-prefix cache)
    vllm_engine   VllmTeacher: vLLM's offline engine in this process
    server        ServerTeacher: a vLLM server, token-id prompts to /completions ("vllm-server")
    chat          ChatTeacher: any chat API's /chat/completions, no local tokenizer ("chat")
    records       answers -> labeled records, the same for every backend

`load_teacher(cfg)` (or `load_teacher(cfg.models)`) builds the backend
`models.teacher_backend` names; every stage that needs a teacher (labeling,
the evaluation's teacher row, fidelity, on-policy training, synthesis) gets it
from here, so the setting means the same everywhere. What each backend can do is in config.TEACHER_CAPABILITIES,
which validate_config checks when a task file is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .base import Completion, CompletionRequest, Teacher

if TYPE_CHECKING:
    from ..config import Config, ModelsConfig
    from ..models import LoadedModel


def _transformers(models: ModelsConfig, base: LoadedModel | None) -> Teacher:
    from ..models import LoadedModel
    from .local import LocalTeacher

    if base is not None and models.teacher == models.student:
        # The student's base weights (adapter switched off by the caller): one copy in memory.
        return LocalTeacher(LoadedModel(base.model, base.tokenizer, models.teacher, base.device), models.prefix_attention)
    return LocalTeacher.load(models.teacher, models.device, models.dtype, models.prefix_attention)


def _vllm(models: ModelsConfig, base: LoadedModel | None) -> Teacher:
    from .vllm_engine import VllmTeacher

    return VllmTeacher(models.teacher, dtype=models.dtype, options=models.vllm_options, trust_remote_code=models.trust_remote_code)


def _vllm_server(models: ModelsConfig, base: LoadedModel | None) -> Teacher:
    from .server import ServerTeacher

    return ServerTeacher(models.teacher_url, models.teacher, concurrency=models.teacher_concurrency, models=models,
                         timeout=models.teacher_timeout, max_retries=models.teacher_max_retries)


def _chat(models: ModelsConfig, base: LoadedModel | None) -> Teacher:
    from .chat import ChatTeacher

    return ChatTeacher.from_models(models)


# models.teacher_backend -> how to build it; the keys are config.TEACHER_CAPABILITIES'.
BACKENDS: dict[str, Callable[..., Teacher]] = {"transformers": _transformers, "vllm": _vllm, "vllm-server": _vllm_server,
                                               "chat": _chat}


def load_teacher(settings: Config | ModelsConfig, *, base: LoadedModel | None = None) -> Teacher:
    """The teacher a task's `[models]` table names (`settings` is the whole
    `Config` or just its `models`): a local transformers model, vLLM's offline
    engine, or a client of an OpenAI-compatible server.

    `base` is the student's base model (e.g. `models.AdapterDisabled` over the
    trained student): when the teacher is that same model on the transformers
    backend it is reused instead of loading a second copy.
    """
    models = getattr(settings, "models", settings)
    return BACKENDS[models.teacher_backend](models, base)




__all__ = ["BACKENDS", "Completion", "CompletionRequest", "Teacher", "load_teacher"]
