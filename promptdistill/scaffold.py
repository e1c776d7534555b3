"""A first task file from a prompt: what `promptdistill init` writes.

A newcomer has a prompt in a file and perhaps the answers it allows; the
task file around it (which key holds the prompt, how answers are read, how
a label is written as a reply) is what stands between them and a first run.
`write_task_file` writes the smallest file that runs:

- the prompt inlined: `user_template` when it contains `{text}` (the input
  goes there), else `system_prompt` (the input is the user message);
- with labels, a closed label set in `choose` mode: the teacher picks the
  most likely of the replies `Final Answer: <label>`, which works whatever
  the prompt says about the format, and the student learns to write it;
- without labels, open answers read from `Final Answer: <answer>` in the
  teacher's own reply (the prompt has to ask for that line);
- `data.inputs` when an inputs file is given, as a path relative to the task file.

Everything is checked before anything is written: the prompt file is read,
the inputs are parsed, and the file's text is loaded and validated exactly as
`load_config` would. An existing file is never replaced (the tool only
replaces what it created, and it did not create this), not even when one
appears while the file is written.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

from .config import TaskConfig, config_from_dict
from .errors import PromptDistillError
from .io import atomic_write_text

# The task file's defaults, written out so that the file shows how answers are
# read: "Final Answer: {label}" and a pattern that reads one word after it.
_DEFAULTS = TaskConfig()
# A label is one token of text: no spaces or control characters, and no quotes
# or backslashes, so that it reads the same in the file, the reply and a shell.
_LABEL = re.compile(r"[^\s\"'\\]+")


def write_task_file(path, prompt_file, *, labels: str | Sequence[str] | None = None, inputs=None,
                    name: str | None = None) -> str:
    """Write a minimal, valid task file at `path` from the prompt in `prompt_file`;
    return the commands to run next. `labels` is a list or a comma-separated string;
    `inputs` an inputs file (.txt, .jsonl or .csv); `name` defaults to the file's stem.
    Refuses (PromptDistillError, nothing written) an existing `path` and any bad input."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise PromptDistillError("already exists; init writes a new task file and never replaces one "
                                 "(choose another path, or edit this file)", path=path)
    if path.suffix != ".toml":
        raise PromptDistillError("a task file is TOML: give a path ending in .toml", path=path)
    prompt = _read_prompt(Path(prompt_file))
    label_list = _labels(labels)
    name = _name(path.stem if name is None else name)
    inputs_rel = _inputs(Path(inputs), path) if inputs is not None else None
    text = task_file_text(prompt, label_list, inputs_rel, name, source=Path(prompt_file).name)
    try:
        config_from_dict(tomllib.loads(text), source=path)
    except tomllib.TOMLDecodeError as e:  # a writer bug, not the user's: say so plainly
        raise PromptDistillError(f"the task file init built is not valid TOML ({e})", path=path) from None
    _write_new(path, text)
    return next_commands(path, name, has_inputs=inputs_rel is not None)


def task_file_text(prompt: str, labels: list[str], inputs: str | None, name: str, source: str) -> str:
    """The task file's text (checked by the caller before it is written)."""
    key = "user_template" if "{text}" in prompt else "system_prompt"
    lines = [f"# Written by `promptdistill init` from {source}. Any key can be changed here or",
             "# overridden with --set section.key=value; the task file reference lists them all.",
             "", "[task]", f"name = {_toml_string(name)}",
             "# The teacher's prompt" + (": {text} is replaced by the input." if key == "user_template"
                                        else "; the input is sent as the user message."),
             f"{key} = {_toml_multiline(prompt)}"]
    if labels:
        pattern = _DEFAULTS.answer_pattern
        if not all(re.fullmatch(r"\w+", label) for label in labels):
            # labels such as "pt-br": any one of them, longest first, not followed by more of a word
            alternatives = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
            pattern = pattern.replace(r"(\w+)", f"({alternatives})(?![\\w-])")
        lines += [f"labels = [{', '.join(_toml_string(label) for label in labels)}]",
                  "# choose: the teacher picks the most likely of the replies answer_template makes of the",
                  "# labels, whatever the prompt says about the format. Use \"generate\" when the prompt",
                  "# makes the teacher write \"Final Answer: <label>\" itself.",
                  'answer_mode = "choose"',
                  f"answer_template = {_toml_string(_DEFAULTS.answer_template)}",
                  f"answer_pattern = {_toml_string(pattern)}"]
    else:
        lines += ["# The answer is read from the teacher's reply with this pattern: the prompt has to",
                  "# make it end with a line \"Final Answer: <answer>\".",
                  'answer_mode = "generate"',
                  f"answer_template = {_toml_string(_DEFAULTS.answer_template)}",
                  f"answer_pattern = {_toml_string(_DEFAULTS.answer_pattern)}"]
    lines += ["", "[data]"]
    lines += [f"inputs = {_toml_string(inputs)}"] if inputs else [
        '# inputs = "inputs.jsonl"   # one input per line (.txt), or .jsonl / .csv with a "text" field']
    return "\n".join(lines) + "\n"


def next_commands(path: Path, name: str, *, has_inputs: bool) -> str:
    """What to run after init, as printed by the CLI."""
    task = str(path)
    steps = [] if has_inputs else [
        f"# add inputs: set data.inputs in {task}, or have the teacher write some:",
        f"promptdistill synthesize {task} --n 200 --out {path.with_name('inputs.jsonl')}",
        f"#   then set data.inputs = \"inputs.jsonl\" in {task}"]
    steps.append(f"promptdistill run {task} --run-dir runs/{name}")
    return f"Wrote {task}. Next:\n" + "\n".join(f"  {s}" for s in steps)


def _read_prompt(prompt_file: Path) -> str:
    try:
        prompt = prompt_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptDistillError("prompt file not found", path=prompt_file) from None
    except IsADirectoryError:
        raise PromptDistillError("prompt file is a folder, expected a file", path=prompt_file) from None
    except UnicodeDecodeError as e:
        raise PromptDistillError(f"prompt file is not valid UTF-8 ({e.reason} at byte {e.start})", path=prompt_file) from None
    except OSError as e:
        raise PromptDistillError(f"prompt file cannot be read ({e.strerror})", path=prompt_file) from None
    # The file's surrounding blank lines and final newline are not part of the prompt.
    prompt = prompt.strip()
    if not prompt:
        raise PromptDistillError("prompt file is empty", path=prompt_file)
    if "\x00" in prompt:
        raise PromptDistillError("prompt file holds a NUL byte: not a text prompt", path=prompt_file)
    return prompt


def _labels(labels) -> list[str]:
    if labels is None:
        return []
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    items = [item.strip() if isinstance(item, str) else item for item in items]
    for item in items:
        if not isinstance(item, str) or not _LABEL.fullmatch(item):
            raise PromptDistillError(f"bad label {item!r}: a label is one word without spaces, quotes or backslashes "
                                     "(labels are separated by commas)", field="--labels")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise PromptDistillError(f"labels must be unique; repeated: {', '.join(duplicates)}", field="--labels")
    if len(items) == 1:
        raise PromptDistillError("one label is no choice: give at least two, or none for open answers", field="--labels")
    return items


def _name(name: str) -> str:
    name = name.strip() if isinstance(name, str) else name
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise PromptDistillError(f"bad task name {name!r}: use letters, digits, '_', '-' and '.' (it names the run "
                                 "directory)", field="--name")
    return name


def _inputs(inputs: Path, task_path: Path) -> str:
    """The inputs file, read as a run would read it, as a path relative to the task file's folder."""
    from .records import read_inputs

    if not inputs.is_file():
        raise PromptDistillError("inputs file not found" if not inputs.exists() else "inputs file is not a file", path=inputs)
    read_inputs(inputs)
    return Path(os.path.relpath(inputs.resolve(), task_path.resolve().parent)).as_posix()


def _write_new(path: Path, text: str) -> None:
    """Write `text` to `path` whole, failing if `path` exists at the moment of writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        written = Path(staging) / path.name
        atomic_write_text(written, text)
        try:
            os.link(written, path)  # unlike a rename, refuses to replace a file that appeared meanwhile
        except FileExistsError:
            raise PromptDistillError("appeared while init was writing; left as it is", path=path) from None


def _toml_string(value: str) -> str:
    """A one-line TOML string: basic ("...", JSON's escapes are TOML's too), or literal
    ('...') for a regex, whose backslashes read better unescaped."""
    if "\\" in value and "'" not in value and not any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"'{value}'"
    return json.dumps(value, ensure_ascii=False)


def _toml_multiline(value: str) -> str:
    """The prompt as it reads: a multi-line literal string where TOML allows one, else a basic string."""
    if "'''" not in value and not value.endswith("'") and not any(
            (ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in value) and "\r" not in value:
        return "'''\n" + value + "'''"
    return json.dumps(value, ensure_ascii=False)
