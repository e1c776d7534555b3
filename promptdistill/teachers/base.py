"""The teacher interface: what every stage may ask of the model that sees the prompt.

Labeling, the evaluation's teacher row, fidelity scoring and on-policy
training all need "the teacher". Each holds a `Teacher` and asks it; which
engine answers is the backend's business, so no stage special-cases a
backend, and `models.teacher_backend` means the same in every stage.

The interface is kept small on purpose:

- `name`, `backend`, `tokenizer` (every backend renders prompts here with
  render.py, so inputs that spell control tokens stay plain text);
- `meta()`: what the labels sidecar records about where the teacher ran
  (the backend's name at least);
- `label(examples, task, mode, seed, batch_size)`: one `LabeledExample` per
  input, **in input order** (resume relies on it), built by records.py so
  voting, confidence and statuses are the same whoever answers;
- capability flags read from config.TEACHER_CAPABILITIES, the table
  config.py checks when it reads a task file, so a stage a backend cannot
  serve is refused before anything runs;
- `continuation_logprobs(task, texts, continuations, full)`: per-token
  log-probabilities (or whole log-distributions) of given continuations
  after the prompt, which on-policy training and free-form fidelity need.
  Only backends with the `continuation_logprobs` capability implement it.
- `complete(requests)`: sampled replies, one `CompletionRequest` each (its
  own seed, temperature and length), yielded in request order. Synthesis
  (synthesis.py) writes inputs through it: a generator conversation (its
  `messages`, rendered here by the backends that render prompts, sent as
  messages by the chat backend), or a raw template cut open inside the user
  turn (Magpie), which only backends that take token-id prompts can continue
  (capability `raw_prompts`; every backend has `complete`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from ..config import TEACHER_CAPABILITIES
from ..errors import PromptDistillError
from ..records import Example, LabeledExample
from ..task import Task
from .records import label_candidates


@dataclass(frozen=True)
class CompletionRequest:
    """One sampled continuation of a token-id prompt (stops at the tokenizer's end-of-turn
    tokens). `messages` is the conversation the prompt renders, where there is one: a chat
    API takes it instead of token ids; a raw template (Magpie) has none."""

    prompt: list[int] | None
    seed: int
    temperature: float
    max_new_tokens: int
    messages: list[dict] | None = None


@dataclass(frozen=True)
class Completion:
    """The generated tokens (end-of-turn not included) and whether the model stopped on its own;
    `text` where the backend answers in text (a chat API: no token ids, nothing to decode here)."""

    token_ids: list[int]
    stopped: bool
    text: str | None = None


class Teacher(ABC):
    """A teacher model with the task's long prompt, run by one backend."""

    #: the `models.teacher_backend` value this class implements
    backend: str = ""
    #: the model's name (a hub id, a folder, or the name a server serves)
    name: str = ""

    @property
    @abstractmethod
    def tokenizer(self):
        """The teacher's tokenizer, with which prompts are rendered here."""

    def meta(self) -> dict:
        """What the labels sidecar records about this backend (checked on resume):
        its name, and whatever else decides where its answers come from."""
        return {"backend": self.backend}

    @abstractmethod
    def label(self, examples: list[Example], task: Task, mode: str, seed: int, batch_size: int | None = None, *,
              reuse_prefix: bool = True) -> Iterator[LabeledExample]:
        """Yield one record per input, in input order.

        `mode` is "generate" or "choose"; `seed` seeds the samples (see
        records.sample_seed); `batch_size` is the backend's unit of work
        (None: its default). `reuse_prefix=False` asks a backend that shares
        the prompt's cache itself to send every request whole instead (for
        comparison); backends whose engine caches prefixes ignore it.
        """

    def candidates(self, task: Task) -> list[list[int]]:
        """Choose mode's allowed replies as token ids, end-of-turn included, computed
        once per task: after the generation header they do not depend on the input,
        and the evaluation asks for one input at a time."""
        cache = self.__dict__.setdefault("_candidates_by_task", {})
        key = task.fingerprint()
        if key not in cache:
            cache[key] = label_candidates(task, self.tokenizer, task.teacher_messages("x"))
        return cache[key]

    def can(self, capability: str) -> bool:
        """Whether this backend has `capability` (a key of config.TEACHER_CAPABILITIES)."""
        return TEACHER_CAPABILITIES[self.backend][capability]

    def continuation_logprobs(self, task: Task, texts: list[str], continuations: list[list[int]],
                              full: bool = False) -> list:
        """Per text, the teacher's log-probability of each continuation token after
        the prompt (with `full`, the log-distribution over the vocabulary at each
        of its positions). Backends without the capability refuse."""
        raise PromptDistillError(
            f"teacher backend {self.backend!r} cannot score given continuations (on-policy training and "
            "per-token fidelity need it); use teacher_backend = \"transformers\"", field="models.teacher_backend")

    def complete(self, requests: list[CompletionRequest], batch_size: int | None = None) -> Iterator[Completion]:
        """One `Completion` per request, in request order. Backends without the capability refuse."""
        raise PromptDistillError(f"teacher backend {self.backend!r} cannot complete raw prompts (synthesis needs it)",
                                 field="models.teacher_backend")
