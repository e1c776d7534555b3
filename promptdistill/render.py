"""Rendering: a conversation becomes token ids plus per-token loss weights.

The model's own chat template decides the tokens. For a conversation ending in
an assistant reply we render the prompt part (everything before the reply,
with the generation header) and the reply part separately and concatenate the
ids, so the prompt ids are exactly what the model sees at inference time.

Loss weights are 1 on the reply tokens up to and including the end-of-turn
token (so the student learns to stop) and 0 everywhere else. Whatever the
template puts after the end-of-turn token (often a newline) is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PromptDistillError

# End-of-turn markers used by common chat templates, looked up in the vocabulary.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


@dataclass
class RenderedExample:
    input_ids: list[int]
    weights: list[float]

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_trained(self) -> int:
        return int(sum(1 for w in self.weights if w > 0))


def end_of_turn_ids(tokenizer) -> set[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    for tok in _END_OF_TURN_TOKENS:
        if tok in vocab and tok in tokenizer.all_special_tokens:
            ids.add(vocab[tok])
    return ids


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _template(tokenizer, messages, add_generation_prompt: bool) -> str:
    if tokenizer.chat_template is None:
        raise PromptDistillError(f"tokenizer {tokenizer.name_or_path!r} has no chat template", field="models")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


# Private-use characters that mark where a message's content sits in the rendered template.
_OPEN, _CLOSE = "\ue000", "\ue001"


def _has_control_text(tokenizer, text: str) -> bool:
    return any(tok in text for tok in tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()))


def render_prompt(tokenizer, messages: list[dict], reply_prefix: str = "") -> list[int]:
    """Token ids of a conversation followed by the assistant's generation header
    (and `reply_prefix`, the start of the reply the model is made to continue).

    Message contents are data: a text that spells a control token (say
    `<|im_end|>`) is tokenized as those characters, never as the control token,
    so an input cannot close its turn or open another one.
    """
    prefill = _encode(tokenizer, reply_prefix) if reply_prefix else []
    if not any(_has_control_text(tokenizer, m["content"]) for m in messages):
        return _encode(tokenizer, _template(tokenizer, messages, add_generation_prompt=True)) + prefill
    marked = [{**m, "content": f"{_OPEN}{i}{_CLOSE}"} for i, m in enumerate(messages)]
    rendered = _template(tokenizer, marked, add_generation_prompt=True)
    ids: list[int] = []
    for piece in rendered.split(_OPEN):
        if _CLOSE in piece:
            index, rest = piece.split(_CLOSE, 1)
            ids += tokenizer(messages[int(index)]["content"], add_special_tokens=False, split_special_tokens=True)["input_ids"]
            ids += _encode(tokenizer, rest)
        else:
            ids += _encode(tokenizer, piece)
    return ids + prefill


def reply_ids(tokenizer, prompt_messages: list[dict], reply: str) -> list[int]:
    """Token ids of `reply` as the assistant's turn after `prompt_messages`, ending
    with the end-of-turn token."""
    prompt = _template(tokenizer, prompt_messages, add_generation_prompt=True)
    full = _template(tokenizer, prompt_messages + [{"role": "assistant", "content": reply}], add_generation_prompt=False)
    if not full.startswith(prompt):
        raise PromptDistillError(
            "the chat template does not render the conversation as prompt + reply; cannot locate the reply tokens", field="models"
        )
    ids = _encode(tokenizer, full[len(prompt):])
    eot = end_of_turn_ids(tokenizer)
    for i, t in enumerate(ids):
        if t in eot:
            return ids[: i + 1]
    return ids + [tokenizer.eos_token_id]


def render_example(tokenizer, messages: list[dict]) -> RenderedExample:
    """Render a conversation whose last message is the assistant reply to train on."""
    if not messages or messages[-1]["role"] != "assistant":
        raise PromptDistillError("the conversation must end with an assistant message", field="messages")
    prompt_ids = render_prompt(tokenizer, messages[:-1])
    target_ids = reply_ids(tokenizer, messages[:-1], messages[-1]["content"])
    return RenderedExample(
        input_ids=prompt_ids + target_ids,
        weights=[0.0] * len(prompt_ids) + [1.0] * len(target_ids),
    )
