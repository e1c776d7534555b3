"""The records that flow between stages, and the readers for input files.

`Example` is an input (text, optional gold label). `LabeledExample` is an input
plus the teacher's answer; it serialises to one JSONL line in the conversation
schema every fine-tuning tool reads:

    {"messages": [{"role": "user", "content": TEXT},
                  {"role": "assistant", "content": TARGET}],
     "id": ..., "text": ..., "gold_label": ..., "teacher_reply": ...,
     "label": ..., "status": "ok", "label_probs": {...}}

Inputs come as plain text (one per line), JSONL (`text`, optional `label`,
optional `id`) or CSV with the same columns. Every problem is reported with
the file, line and field.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PromptDistillError
from .io import check_file


@dataclass
class Example:
    id: str
    text: str
    gold_label: str | None = None
    # Extra columns of the input (e.g. a category), carried along untouched.
    meta: dict = field(default_factory=dict)
    # Line in the file it was read from, for error messages; not serialised.
    line: int | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        d = {"id": self.id, "text": self.text, "label": self.gold_label}
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


def read_inputs(path) -> list[Example]:
    """Read inputs from .txt, .jsonl/.json or .csv, by extension."""
    path = check_file(path, "input file")
    text = _read_utf8(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        examples = _read_jsonl_inputs(path, text)
    elif suffix == ".csv":
        examples = _read_csv_inputs(path, text)
    else:
        examples = [Example(id=str(n), text=line.strip(), line=n) for n, line in _lines(text) if line.strip()]
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


def iter_jsonl(path, text: str | None = None):
    """Yield (line number, object) for each non-blank line of a JSONL file."""
    text = _read_utf8(Path(path)) if text is None else text
    for n, line in _lines(text):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptDistillError(f"invalid JSON: {e.msg} (column {e.colno})", path=path, line=n) from None
        if not isinstance(obj, dict):
            raise PromptDistillError(f"expected a JSON object, got {type(obj).__name__}", path=path, line=n)
        if "\\u" in line:  # only a JSON escape can make a lone surrogate (the file itself is valid UTF-8)
            check_encodable(obj, path, n)
        yield n, obj


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


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise PromptDistillError("is a folder, expected a file", path=path) from None
    except OSError as e:
        raise PromptDistillError(f"cannot be read ({e.strerror})", path=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PromptDistillError(f"invalid UTF-8 at byte {e.start}", path=path, line=line) from None
    return text.removeprefix("\ufeff")


def _lines(text: str):
    # splitlines() would also split on U+2028 and friends, which may sit inside a text.
    for n, line in enumerate(text.split("\n"), start=1):
        yield n, line.removesuffix("\r")


def _read_jsonl_inputs(path: Path, text: str) -> list[Example]:
    out = []
    for n, obj in iter_jsonl(path, text):
        out.append(_example_from_fields(obj, path, n))
    return out


def _read_csv_inputs(path: Path, text: str) -> list[Example]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "text" not in reader.fieldnames:
        raise PromptDistillError("CSV needs a header row with a 'text' column", path=path, line=1, field="text")
    out = []
    for row in reader:
        if None in row:
            raise PromptDistillError("more values than header columns", path=path, line=reader.line_num)
        if not any((v or "").strip() for v in row.values()):
            continue
        fields = {k: v for k, v in row.items() if v is not None}
        if fields.get("label", None) == "":
            fields["label"] = None
        out.append(_example_from_fields(fields, path, reader.line_num))
    return out


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
    if isinstance(obj.get("meta"), dict):
        meta = {**{k: v for k, v in meta.items() if k != "meta"}, **obj["meta"]}
    return Example(id=str(ident), text=text.strip(), gold_label=label, meta=meta, line=line)


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
        groups.setdefault(e.text, []).append(e)
    return [g for g in groups.values() if len(g) > 1]


def describe_duplicates(groups: list[list[Example]], path) -> str:
    shown = "; ".join(f"lines {', '.join(str(e.line or e.id) for e in g)}: {g[0].text[:40]!r}" for g in groups[:5])
    more = f" (and {len(groups) - 5} more)" if len(groups) > 5 else ""
    return f"{path}: {sum(len(g) - 1 for g in groups)} duplicate inputs in {len(groups)} groups: {shown}{more}"


def drop_duplicates(examples: list[Example]) -> list[Example]:
    """Keep the first input of each text."""
    seen: set[str] = set()
    kept = []
    for e in examples:
        if e.text not in seen:
            seen.add(e.text)
            kept.append(e)
    return kept


def report_duplicates(examples: list[Example], path, dedupe: bool, log, how_to_drop: str) -> list[Example]:
    """Log duplicate texts with their lines; with `dedupe`, keep only the first of each."""
    groups = find_duplicates(examples)
    if not groups:
        return examples
    log(describe_duplicates(groups, path) + ("; keeping the first of each" if dedupe else f"; {how_to_drop} drops them"))
    return drop_duplicates(examples) if dedupe else examples
