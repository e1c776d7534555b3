"""The Ollama Modelfile written beside a GGUF export.

Ollama does not run the model's Jinja chat template; it needs the same
prompt written as a Go template. The student answers well only with the
exact prompt it was trained on (including the default system text a template
such as SmolLM2's inserts when the conversation has none), so the Go template
is derived from the tokenizer's own template by rendering it around marker
texts (`chat_pieces`): the text before and after a system, user and assistant
message, the default prefix, and the generation prompt. The resulting Go
template is then checked by rendering conversations both ways
(`render_like_ollama` against the Jinja template); a template that does not
decompose this way (one that renders messages depending on their neighbours)
is refused rather than written approximately.

No SYSTEM line is written: answering without the task's system prompt is
what the student was trained for.
"""

from __future__ import annotations

import json

from .errors import PromptDistillError

_S, _U, _A, _V = "\x01SYS\x01", "\x01USER\x01", "\x01ASSISTANT\x01", "\x01NEXT\x01"


def _render(tokenizer, messages, generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _between(text: str, start: str | None, end: str | None) -> str:
    i = 0 if start is None else text.index(start) + len(start)
    j = len(text) if end is None else text.index(end, i)
    return text[i:j]


def _strip_prefix(text: str, prefix: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(prefix)
    return text[len(prefix):]


def chat_pieces(tokenizer) -> dict[str, str]:
    """The literal texts the chat template puts around each message, derived by rendering it."""
    u = _render(tokenizer, [{"role": "user", "content": _U}], False)
    u_gen = _render(tokenizer, [{"role": "user", "content": _U}], True)
    ua = _render(tokenizer, [{"role": "user", "content": _U}, {"role": "assistant", "content": _A}], False)
    uav = _render(tokenizer, [{"role": "user", "content": _U}, {"role": "assistant", "content": _A},
                              {"role": "user", "content": _V}], False)
    su = _render(tokenizer, [{"role": "system", "content": _S}, {"role": "user", "content": _U}], False)
    user_post = _between(u, _U, None)
    assistant_pre = _strip_prefix(_between(ua, _U, _A), user_post)
    assistant_post = _between(ua, _A, None)
    user_pre = _strip_prefix(_between(uav, _A, _V), assistant_post)
    before_user = _between(u, None, _U)
    if not before_user.endswith(user_pre):
        raise ValueError(user_pre)
    system_and_user_pre = _between(su, _S, _U)
    if not system_and_user_pre.endswith(user_pre):
        raise ValueError(user_pre)
    return {
        "default": before_user[: len(before_user) - len(user_pre)],
        "system_pre": _between(su, None, _S),
        "system_post": system_and_user_pre[: len(system_and_user_pre) - len(user_pre)],
        "user_pre": user_pre, "user_post": user_post,
        "assistant_pre": assistant_pre, "assistant_post": assistant_post,
        "generation": _strip_prefix(u_gen, u),
    }


def render_like_ollama(pieces: dict[str, str], messages: list[dict]) -> str:
    """What `go_template(pieces)` renders for `messages` in Ollama (its logic, in Python)."""
    out = pieces["default"] if messages[0]["role"] != "system" else ""
    for m in messages:
        out += pieces[f"{m['role']}_pre"] + m["content"] + pieces[f"{m['role']}_post"]
    return out + pieces["generation"]


def _go(text: str) -> str:
    """A Go template action printing `text` literally (a Go string literal; JSON escapes are valid Go)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def go_template(pieces: dict[str, str]) -> str:
    """The chat template as an Ollama (Go) template over .Messages."""
    return ('{{ if ne (index .Messages 0).Role "system" }}' + _go(pieces["default"]) + "{{ end }}"
            "{{ range .Messages }}"
            '{{ if eq .Role "system" }}' + _go(pieces["system_pre"]) + "{{ .Content }}" + _go(pieces["system_post"])
            + '{{ else if eq .Role "user" }}' + _go(pieces["user_pre"]) + "{{ .Content }}" + _go(pieces["user_post"])
            + '{{ else if eq .Role "assistant" }}' + _go(pieces["assistant_pre"]) + "{{ .Content }}"
            + _go(pieces["assistant_post"]) + "{{ end }}{{ end }}" + _go(pieces["generation"]))


_CHECKS = [
    [{"role": "user", "content": "Bonjour"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": "c"}],
]


def check_ollama_template(tokenizer) -> dict[str, str]:
    """The template's pieces, once the Go template is shown to render like the Jinja one."""
    try:
        pieces = chat_pieces(tokenizer)
        same = all(render_like_ollama(pieces, m) == _render(tokenizer, m, True) for m in _CHECKS)
    except (ValueError, KeyError, TypeError) as e:
        same = False
        detail = f" ({type(e).__name__})"
    else:
        detail = ""
    if not same:
        raise PromptDistillError("the student's chat template cannot be written as an Ollama template that renders the "
                                 f"same prompts{detail}; export --merged and convert it yourself", field="--gguf")
    return pieces


def modelfile(gguf_name: str, pieces: dict[str, str], stop_tokens: list[str], temperature: float,
              max_new_tokens: int) -> str:
    """The Modelfile: the GGUF file beside it, the chat template, the end-of-turn stops, and
    the decoding the student was evaluated with; no SYSTEM line."""
    lines = [
        "# Ollama: ollama create NAME -f Modelfile, then ollama run NAME",
        "# No system prompt: the student answers the task without one.",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{go_template(pieces)}"""',
        *(f"PARAMETER stop {json.dumps(t, ensure_ascii=False)}" for t in stop_tokens),
        f"PARAMETER temperature {temperature:g}",
        f"PARAMETER num_predict {max_new_tokens}",
    ]
    return "\n".join(lines) + "\n"
