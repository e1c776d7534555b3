"""The records that flow between stages, and the readers for input files.

`Example` is an input (text, optional gold label). `LabeledExample` is an input
plus the teacher's answer; it serialises to one JSONL line in the conversation
schema every fine-tuning tool reads:

    {"messages": [{"role": "user", "content": TEXT},
                  {"role": "assistant", "content": TARGET}],
     "id": ..., "text": ..., "gold_label": ..., "teacher_reply": ...,
     "label": ..., "status": "ok", "label_probs": {...}}

Inputs come as plain text (one per line), JSONL (`text`, optional `label`,
optional `id`) or CSV with the same columns. A JSONL input may instead hold a
conversation, `messages`: a history of user and assistant turns ending in the
user turn to answer (`check_conversation` says what is refused and why); its
`text` is then that last user turn. Every problem is reported with the file,
line and field.

Files are read one line at a time (`iter_lines`), never whole: a labels file
with the teacher's top logprobs runs to gigabytes, and it is read again at
every resume. A line longer than `MAX_LINE_BYTES` is refused before it is
held in memory, and whatever a line holds ends in one error naming it: JSON
nested too deeply to parse, a CSV field over the line cap, a CSV quote left
open (it would merge the lines after it into one input).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import PromptDistillError
from .io import check_file

# The longest line a reader accepts (bytes, newline excluded): far above any
# record the tool writes (a reply of 4096 tokens with 20 top logprobs each is
# about 2 MiB), and low enough that one line cannot exhaust memory.
MAX_LINE_BYTES = 64 * 2**20
# How deeply an input's extra fields may nest (JSON objects and arrays).
MAX_INPUT_NESTING = 64


# The roles an input conversation may hold. A system turn is refused: the
# system prompt is the task's, and the student must never see one.
INPUT_ROLES = ("user", "assistant")


@dataclass
class Example:
    id: str
    # The input; for a conversation, the content of its last user turn (ids,
    # duplicates and display use it).
    text: str
    gold_label: str | None = None
    # Extra columns of the input (e.g. a category), carried along untouched.
    meta: dict = field(default_factory=dict)
    # Line in the file it was read from, for error messages; not serialised.
    line: int | None = field(default=None, compare=False)
    # A multi-turn input: user and assistant turns ending in a user turn; None
    # for a single-turn input (the conversation is then `text` alone).
    messages: list[dict] | None = None

    def conversation(self) -> list[dict]:
        """The turns the model answers (without any system prompt)."""
        return self.messages if self.messages is not None else [{"role": "user", "content": self.text}]

    @property
    def key(self) -> str:
        """What makes two inputs the same input: the text of a single-turn input,
        the whole history of a conversation (two conversations that end in the
        same "thanks!" are different inputs)."""
        return self.text if self.messages is None else json.dumps(self.messages, ensure_ascii=False, sort_keys=True)

    def to_json(self) -> dict:
        d = {"id": self.id, "text": self.text, "label": self.gold_label}
        if self.messages is not None:
            d["messages"] = self.messages
        if self.meta:
            d["meta"] = self.meta
        return d


@dataclass
class LabeledExample:
    id: str
    text: str
    gold_label: str | None
    teacher_reply: str
    label: str | None
    status: str
    # Student conversation: the input without the prompt, and the target reply.
    messages: list[dict]
    # Teacher's probability for each allowed label (choose mode), else None.
    label_probs: dict[str, float] | None = None
    meta: dict = field(default_factory=dict)
    # How sure the teacher is: the top label's probability (choose mode) or
    # its vote share among sampled answers (generate mode with samples > 1).
    confidence: float | None = None
    # Entropy (nats) of label_probs, when there is a distribution.
    entropy: float | None = None
    # Parsed label -> number of sampled answers (generate mode with samples > 1).
    votes: dict[str, int] | None = None
    # The teacher's reply as token ids and, per reply token, its top-k
    # alternatives as [token_id, logprob] pairs (most likely first): the soft
    # target of `kd` training on free-form replies. Generate mode with
    # task.top_logprobs > 0; None otherwise.
    #   {"token_ids": [int, ...], "top": [[[int, float], ...], ...]}
    teacher_logprobs: dict | None = None

    def conversation(self) -> list[dict]:
        """The student's input: the messages up to and including the last user
        turn (without the target reply, if the record has one)."""
        last = max((i for i, m in enumerate(self.messages) if m["role"] == "user"), default=None)
        if last is None:
            return [{"role": "user", "content": self.text}]
        return self.messages[: last + 1]

    @property
    def trainable(self) -> bool:
        """Whether the student learns from this record: an answer the task accepts
        ("ok", or a text reply cut at max_new_tokens that task.truncated_replies =
        "keep" kept), which then ends in the target assistant turn."""
        return self.status in ("ok", "truncated") and bool(self.messages) and self.messages[-1]["role"] == "assistant"

    def to_json(self) -> dict:
        d = {
            "messages": self.messages,
            "id": self.id,
            "text": self.text,
            "gold_label": self.gold_label,
            "teacher_reply": self.teacher_reply,
            "label": self.label,
            "status": self.status,
            "label_probs": self.label_probs,
            "confidence": self.confidence,
            "entropy": self.entropy,
            "votes": self.votes,
        }
        if self.teacher_logprobs is not None:
            d["teacher_logprobs"] = self.teacher_logprobs
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_json(cls, d: dict, path=None, line=None) -> "LabeledExample":
        required = {"messages": list, "id": str, "text": str, "teacher_reply": str, "status": str}
        for key, typ in required.items():
            if key not in d:
                raise PromptDistillError("missing field", path=path, line=line, field=key)
            if not isinstance(d[key], typ):
                raise PromptDistillError(f"expected {typ.__name__}, got {type(d[key]).__name__}", path=path, line=line, field=key)
        for i, m in enumerate(d["messages"]):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise PromptDistillError("each message needs string 'role' and 'content'", path=path, line=line, field=f"messages[{i}]")
        return cls(
            id=d["id"],
            text=d["text"],
            gold_label=d.get("gold_label"),
            teacher_reply=d["teacher_reply"],
            label=d.get("label"),
            status=d["status"],
            messages=d["messages"],
            label_probs=d.get("label_probs"),
            meta=d.get("meta") or {},
            confidence=d.get("confidence"),
            entropy=d.get("entropy"),
            votes=d.get("votes"),
            teacher_logprobs=d.get("teacher_logprobs"),
        )


def read_inputs(path, columns: dict[str, str] | None = None) -> list[Example]:
    """Read inputs from .txt, .jsonl/.json or .csv, by extension, or from a Parquet or
    Arrow file, a `datasets.save_to_disk` folder, an hf://datasets/ address or a
    `datasets.Dataset` (dataset_inputs.py). `columns` (record key -> column name,
    dataset_inputs.columns_of(cfg.data)) maps a JSONL or dataset's own column names."""
    from .dataset_inputs import check_input_source, dataset_rows, is_dataset_source, rename_fields, source_name

    if not isinstance(path, (str, Path)) or is_dataset_source(path):
        where = check_input_source(path) if isinstance(path, (str, Path)) else source_name(path)
        examples = [input_from_json(obj, where, n) for n, obj in dataset_rows(path, columns)]
        if not examples:
            raise PromptDistillError("no inputs found", path=where)
        _check_unique_ids(examples, where)
        return examples
    path = check_file(path, "input file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        examples = [input_from_json(rename_fields(obj, columns or {}), path, n) for n, obj in iter_jsonl(path)]
    elif suffix == ".csv":
        examples = _read_csv_inputs(path)
    else:
        examples = [_example_from_fields({"text": line, "id": str(n)}, path, n) for n, line in iter_lines(path) if line.strip()]
    if not examples:
        raise PromptDistillError("no inputs found", path=path)
    _check_unique_ids(examples, path)
    return examples


def read_labeled(path) -> list[LabeledExample]:
    """The labeled records of a JSONL file written by `label_inputs` (or `promptdistill label`)."""
    path = check_file(path, "labeled file")
    return [LabeledExample.from_json(obj, path, n) for n, obj in iter_jsonl(path)]


def write_examples(path, examples: list[Example]) -> None:
    """Write inputs as JSONL (id, text, label, meta), readable again by `read_inputs` (atomic)."""
    from .io import atomic_write_jsonl

    atomic_write_jsonl(path, [e.to_json() for e in examples])


def iter_jsonl(path):
    """Yield (line number, object) for each non-blank line of a JSONL file, read
    line by line (`iter_lines`)."""
    for n, line in iter_lines(path):
        if not line.strip():
            continue
        yield n, parse_json_line(line, path, n)


def parse_json_line(line: str, path, n: int) -> dict:
    """One JSONL line as an object, or one error naming the line."""
    try:
        obj = json.loads(line)
        if "\\u" in line:  # only a JSON escape can make a lone surrogate (the file itself is valid UTF-8)
            check_encodable(obj, path, n)
    except json.JSONDecodeError as e:
        raise PromptDistillError(f"invalid JSON: {e.msg} (column {e.colno})", path=path, line=n) from None
    except RecursionError:
        raise PromptDistillError("JSON nested too deeply to read", path=path, line=n) from None
    if not isinstance(obj, dict):
        raise PromptDistillError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=n)
    return obj


def iter_lines(path, *, binary: bool = False):
    """Yield (line number, line without its line break) of a UTF-8 file, one line in
    memory at a time; a line over MAX_LINE_BYTES is refused before it is read whole.
    A byte-order mark before the first line is dropped. With `binary`, lines are
    the raw bytes, line break included (a last line without one is torn).
    Both forms split at "\\n" only: U+2028 and friends may sit inside a text."""
    path = Path(path)
    try:
        f = path.open("rb")
    except IsADirectoryError:
        raise PromptDistillError("is a folder, expected a file", path=path) from None
    except OSError as e:
        raise PromptDistillError(f"cannot be read ({e.strerror})", path=path) from None
    with f:
        n, offset = 0, 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            n += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise PromptDistillError(f"line longer than {MAX_LINE_BYTES // 2**20} MiB; no input or record is that long",
                                         path=path, line=n)
            line = raw.removesuffix(b"\n").removesuffix(b"\r")
            if n == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if binary:
                yield n, raw
            else:
                try:
                    yield n, line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise PromptDistillError(f"invalid UTF-8 at byte {offset + e.start}", path=path, line=n) from None
            offset += len(raw)


def check_encodable(obj, path=None, line=None, field_name: str | None = None) -> None:
    """Refuse text no tokenizer (nor UTF-8 file) can take: a JSON escape such as
    "\\ud800" decodes to a lone surrogate, which fails later when tokenized or
    written back, leaving half-written outputs. Named with its line and field."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError as e:
            raise PromptDistillError(f"text holds a lone surrogate code point U+{ord(obj[e.start]):04X} at character {e.start}, "
                                     "which no tokenizer can take", path=path, line=line, field=field_name) from None
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_encodable(k, path, line, field_name)
            check_encodable(v, path, line, f"{field_name}.{k}" if field_name else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_encodable(v, path, line, f"{field_name}[{i}]" if field_name else f"[{i}]")


def _read_csv_inputs(path: Path) -> list[Example]:
    """CSV rows as inputs, streamed. The csv module's field cap (128 KiB) is raised
    to the line cap while reading; `strict` makes a quote that is never closed, or
    closed mid-field, an error instead of a silent merge."""
    old_limit = csv.field_size_limit(MAX_LINE_BYTES)
    out: list[Example] = []
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, strict=True)
            first = 1
            try:
                if not reader.fieldnames or "text" not in reader.fieldnames:
                    raise PromptDistillError("CSV needs a header row with a 'text' column", path=path, line=1, field="text")
                first = reader.line_num + 1
                for row in reader:
                    _check_csv_row(row, path, first, len(reader.fieldnames))
                    start, first = first, reader.line_num + 1
                    if not any((v or "").strip() for v in row.values()):
                        continue
                    fields = {k: v for k, v in row.items() if v is not None}
                    if fields.get("label", None) == "":
                        fields["label"] = None
                    out.append(_example_from_fields(fields, path, start))
            except csv.Error as e:
                raise PromptDistillError(f"invalid CSV ({e}); an unclosed quote, or a field over "
                                         f"{MAX_LINE_BYTES // 2**20} MiB", path=path, line=first) from None
            except UnicodeDecodeError as e:
                raise PromptDistillError(f"invalid UTF-8 ({e.reason})", path=path, line=reader.line_num + 1) from None
    except OSError as e:
        raise PromptDistillError(f"cannot be read ({e.strerror})", path=path) from None
    finally:
        csv.field_size_limit(old_limit)
    return out


def _check_csv_row(row: dict, path, line: int, columns: int) -> None:
    """A row with more values than the header, or one whose quoted field swallowed
    whole rows: a quote opened in one row and closed in a later one reads every
    line between as part of one field. A field may hold line breaks (CSV allows
    it), but not a line that would be a row of its own (as many delimiters as
    the header has columns, less one): texts like that belong in a JSONL file."""
    if None in row:
        raise PromptDistillError("more values than header columns", path=path, line=line)
    for name, value in row.items():
        if value and "\n" in value and columns > 1:
            inner = value.replace("\r\n", "\n").split("\n")[1:]
            if any(part.count(",") >= columns - 1 for part in inner):
                raise PromptDistillError("a quoted field runs over several lines that look like rows of their own: an "
                                         "unclosed quote? (texts with line breaks and commas go in a JSONL file)",
                                         path=path, line=line, field=name)


def check_conversation(messages, path=None, line=None, field_name: str = "messages") -> list[dict]:
    """A conversation input, checked: a non-empty list of {"role", "content"}
    objects, roles user or assistant only (a system turn is refused: the
    prompt is the task's), no empty turn, ending in the user turn to answer.
    Returns the turns with only their role and content."""
    if not isinstance(messages, list):
        raise PromptDistillError(f"expected a list of messages, got {type(messages).__name__}", path=path, line=line, field=field_name)
    if not messages:
        raise PromptDistillError("empty conversation", path=path, line=line, field=field_name)
    turns = []
    for i, m in enumerate(messages):
        where = f"{field_name}[{i}]"
        if not isinstance(m, dict):
            raise PromptDistillError(f"expected an object with 'role' and 'content', got {type(m).__name__}", path=path, line=line, field=where)
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str):
            raise PromptDistillError("missing or non-string 'role'", path=path, line=line, field=f"{where}.role")
        if role == "system":
            raise PromptDistillError("a system turn is not an input: the system prompt is the task's (task.system_prompt)",
                                     path=path, line=line, field=f"{where}.role")
        if role not in INPUT_ROLES:
            raise PromptDistillError(f"role must be one of {', '.join(INPUT_ROLES)}; got {role!r}", path=path, line=line, field=f"{where}.role")
        if not isinstance(content, str):
            raise PromptDistillError("missing or non-string 'content'", path=path, line=line, field=f"{where}.content")
        if not content.strip():
            raise PromptDistillError("empty turn", path=path, line=line, field=f"{where}.content")
        turns.append({"role": role, "content": content})
    if turns[-1]["role"] != "user":
        raise PromptDistillError("the conversation ends in an assistant turn; an input ends in the user turn to answer",
                                 path=path, line=line, field=f"{field_name}[{len(turns) - 1}].role")
    return turns


def input_from_json(obj: dict, path, line: int) -> Example:
    """A JSONL line as an input: a conversation when it holds `messages`, else a text.
    (CSV and text files hold single-turn inputs only.)"""
    if "messages" in obj:
        return _conversation_from_fields(obj, path, line)
    return _example_from_fields(obj, path, line)


def _example_from_fields(obj: dict, path, line: int) -> Example:
    text = obj.get("text")
    if text is None:
        raise PromptDistillError("missing field", path=path, line=line, field="text")
    if not isinstance(text, str):
        raise PromptDistillError(f"expected a string, got {type(text).__name__}", path=path, line=line, field="text")
    if not text.strip():
        raise PromptDistillError("empty text", path=path, line=line, field="text")
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        raise PromptDistillError(f"expected a string or null, got {type(label).__name__}", path=path, line=line, field="label")
    ident = obj.get("id", str(line))
    if not isinstance(ident, (str, int)) or isinstance(ident, bool):
        raise PromptDistillError("expected a string or integer", path=path, line=line, field="id")
    meta = {k: v for k, v in obj.items() if k not in ("text", "label", "id")}
    _check_nesting(meta, path, line)
    if isinstance(obj.get("meta"), dict):
        meta = {**{k: v for k, v in meta.items() if k != "meta"}, **obj["meta"]}
    return Example(id=str(ident), text=text.strip(), gold_label=label, meta=meta, line=line)


def _conversation_from_fields(obj: dict, path, line: int) -> Example:
    """A JSONL input holding `messages`; a `text` beside it must be its last user turn.
    A conversation of one user turn is a single-turn input like any text."""
    messages = check_conversation(obj["messages"], path, line)
    text = obj.get("text")
    if text is not None and (not isinstance(text, str) or text.strip() != messages[-1]["content"].strip()):
        raise PromptDistillError("with messages, text (if given) is the last user turn; leave it out", path=path, line=line, field="text")
    fields = {k: v for k, v in obj.items() if k not in ("messages", "text")}
    example = _example_from_fields({**fields, "text": messages[-1]["content"]}, path, line)
    return replace(example, messages=messages) if len(messages) > 1 else example


def _check_nesting(value, path, line: int) -> None:
    """An input's extra fields nest at most MAX_INPUT_NESTING deep: they are carried
    into every record written, and JSON deep enough ends in a RecursionError there."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_INPUT_NESTING:
            raise PromptDistillError(f"extra fields nest deeper than {MAX_INPUT_NESTING} levels", path=path, line=line)
        if isinstance(v, dict):
            stack += [(x, depth + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, depth + 1) for x in v]


def _check_unique_ids(examples: list[Example], path) -> None:
    seen = set()
    for e in examples:
        if e.id in seen:
            raise PromptDistillError(f"duplicate id {e.id!r}", path=path, line=e.line, field="id")
        seen.add(e.id)


def check_gold_labels(examples: list[Example], labels: list[str], path) -> None:
    """Refuse gold labels outside the task's label set."""
    if not labels:
        return
    allowed = set(labels)
    for e in examples:
        if e.gold_label is not None and e.gold_label not in allowed:
            raise PromptDistillError(
                f"gold label {e.gold_label!r} is not in the label set ({', '.join(labels)})", path=path, line=e.line, field="label"
            )


def find_duplicates(examples: list[Example]) -> list[list[Example]]:
    """Groups of two or more inputs with the same text, in input order."""
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.key, []).append(e)
    return [g for g in groups.values() if len(g) > 1]


def describe_duplicates(groups: list[list[Example]], path) -> str:
    shown = "; ".join(f"lines {', '.join(str(e.line or e.id) for e in g)}: {g[0].text[:40]!r}" for g in groups[:5])
    more = f" (and {len(groups) - 5} more)" if len(groups) > 5 else ""
    return f"{path}: {sum(len(g) - 1 for g in groups)} duplicate inputs in {len(groups)} groups: {shown}{more}"


def drop_duplicates(examples: list[Example]) -> list[Example]:
    """Keep the first input of each text (of each whole conversation, for conversations)."""
    seen: set[str] = set()
    kept = []
    for e in examples:
        if e.key not in seen:
            seen.add(e.key)
            kept.append(e)
    return kept


def report_duplicates(examples: list[Example], path, dedupe: bool, log, how_to_drop: str) -> list[Example]:
    """Log duplicate texts with their lines; with `dedupe`, keep only the first of each."""
    groups = find_duplicates(examples)
    if not groups:
        return examples
    log(describe_duplicates(groups, path) + ("; keeping the first of each" if dedupe else f"; {how_to_drop} drops them"))
    return drop_duplicates(examples) if dedupe else examples
