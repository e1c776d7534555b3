"""Reply checks: deterministic rules a system prompt asks of every reply.

A free-text prompt ("answer in at most three sentences", "never use bullet
lists", "always end with a question") has no label to agree on, but its rules
can be checked on each reply. A task file declares them as `[[eval.checks]]`
tables, each a `name`, a `kind` and that kind's parameters:

    kind                         parameters
    regex / not_regex            pattern (Python regex, searched), ignore_case (optional)
    starts_with / ends_with      text, ignore_case (optional)
    max_words / min_words        max / min
    max_sentences / min_sentences  max / min
    json                         (the whole reply parses as JSON)
    json_schema                  schema (an inline table; needs the `checks` extra, jsonschema)
    language                     language (ISO 639-1 code, see LANGUAGES)
    asks_question                (some sentence of the reply is a question)
    ends_with_question           (the reply's last character is "?")

Words are whitespace-separated tokens and sentences end at . ! or ? followed
by whitespace: crude, but deterministic and easy to state, which matters more
for a with/without comparison than linguistic accuracy. A check reads the
reply without a reasoning teacher's thinking (reasoning.py) and without
surrounding whitespace, which is decoding noise.

This module sits with config.py at the bottom of the layers because the task
file's checks are validated when it is read (`parse_checks`: an invalid regex,
schema or language is refused before anything runs, naming file, line and
field `eval.checks[i].key`); evaluation/checks.py turns the checks into pass
rates per system.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import PromptDistillError
from .reasoning import strip_reasoning


def count_words(reply: str) -> int:
    return len(reply.split())


def sentences(reply: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", reply.strip()) if s]


def count_sentences(reply: str) -> int:
    return len(sentences(reply))


# ---------------------------------------------------------------- language
# A built-in heuristic rather than a language-identification dependency: a
# check asks "is the reply in the language the prompt demands", nearly always
# a choice between very different languages, and a reply of a few sentences
# settles it by its script or its most common function words. Non-Latin
# scripts are told apart by the share of their letters; Latin-script languages
# by which language's function words cover most of the reply's words.
_SCRIPTS = {
    "ru": r"[\u0400-\u04ff]", "uk": r"[\u0400-\u04ff]", "el": r"[\u0370-\u03ff]", "ar": r"[\u0600-\u06ff]",
    "he": r"[\u0590-\u05ff]", "hi": r"[\u0900-\u097f]", "th": r"[\u0e00-\u0e7f]", "ko": r"[\uac00-\ud7af\u1100-\u11ff]",
    "ja": r"[\u3040-\u30ff]", "zh": r"[\u4e00-\u9fff]",
}
_FUNCTION_WORDS = {
    "en": "the a an and or of to in is are was it that this you for with on be have not do i we they what how",
    "fr": "le la les un une et ou de des du à au en est sont que qui pas pour avec dans ce vous je nous il elle",
    "de": "der die das ein eine und oder von zu im ist sind nicht mit für auf den dem ich sie es wir du wie was",
    "es": "el la los las un una y o de del en es son que no por para con se lo su yo usted como qué",
    "it": "il lo la gli le un una e o di del della in è sono che non per con si mi io lei come cosa",
    "pt": "o a os as um uma e ou de do da em é são que não por para com se eu você como",
    "nl": "de het een en of van in is zijn dat niet met voor op ik je wij hij zij wat hoe",
}
_FUNCTION_WORDS = {lang: set(words.split()) for lang, words in _FUNCTION_WORDS.items()}
LANGUAGES = tuple(_FUNCTION_WORDS) + tuple(_SCRIPTS)


def detect_language(reply: str) -> str | None:
    """The reply's language code by the heuristic above, None when nothing decides it."""
    letters = [c for c in reply if c.isalpha()]
    if not letters:
        return None
    text = "".join(letters)
    if len(re.findall(r"[\u3040-\u30ff]", text)) > 0.05 * len(letters):
        return "ja"  # Japanese mixes kana into Han characters
    shares = {lang: len(re.findall(p, text)) / len(letters) for lang, p in _SCRIPTS.items() if lang not in ("uk", "ja")}
    script, share = max(shares.items(), key=lambda kv: kv[1])
    if share > 0.5:
        if script == "ru" and re.search(r"[іїєґІЇЄҐ]", text):
            return "uk"
        return script
    words = re.findall(r"[^\W\d_]+", reply.casefold())
    hits = {lang: sum(w in vocab for w in words) for lang, vocab in _FUNCTION_WORDS.items()}
    best = max(hits, key=hits.get)
    return best if hits[best] else None


# ---------------------------------------------------------------- the checks

def _regex(reply, pattern):
    return pattern.search(reply) is not None


def _not_regex(reply, pattern):
    return pattern.search(reply) is None


def _starts_with(reply, text, ignore_case=False):
    return reply.casefold().startswith(text.casefold()) if ignore_case else reply.startswith(text)


def _ends_with(reply, text, ignore_case=False):
    return reply.casefold().endswith(text.casefold()) if ignore_case else reply.endswith(text)


def _json(reply):
    try:
        json.loads(reply)
    except ValueError:
        return False
    return True


def _json_schema(reply, schema):
    try:
        value = json.loads(reply)
    except ValueError:
        return False
    return schema.is_valid(value)


# kind -> (function, {parameter: type}, optional parameters)
KINDS = {
    "regex": (_regex, {"pattern": str, "ignore_case": bool}, {"ignore_case"}),
    "not_regex": (_not_regex, {"pattern": str, "ignore_case": bool}, {"ignore_case"}),
    "starts_with": (_starts_with, {"text": str, "ignore_case": bool}, {"ignore_case"}),
    "ends_with": (_ends_with, {"text": str, "ignore_case": bool}, {"ignore_case"}),
    "max_words": (lambda reply, max: count_words(reply) <= max, {"max": int}, set()),
    "min_words": (lambda reply, min: count_words(reply) >= min, {"min": int}, set()),
    "max_sentences": (lambda reply, max: count_sentences(reply) <= max, {"max": int}, set()),
    "min_sentences": (lambda reply, min: count_sentences(reply) >= min, {"min": int}, set()),
    "json": (_json, {}, set()),
    "json_schema": (_json_schema, {"schema": dict}, set()),
    "language": (lambda reply, language: detect_language(reply) == language, {"language": str}, set()),
    "asks_question": (lambda reply: any(s.endswith("?") for s in sentences(reply)), {}, set()),
    "ends_with_question": (lambda reply: reply.endswith("?"), {}, set()),
}


@dataclass
class Check:
    """One named check with its parameters bound (a compiled regex, a schema validator); called on a reply."""

    name: str
    kind: str
    params: dict

    def __call__(self, reply: str) -> bool:
        return bool(KINDS[self.kind][0](strip_reasoning(reply).strip(), **self.params))


def parse_checks(tables, source=None) -> list[Check]:
    """Validated `Check`s from the task file's `[[eval.checks]]` tables; any fault is
    one PromptDistillError naming the file, the table's line (when `source` is a
    readable file) and the field, e.g. `eval.checks[2].pattern`."""
    if not isinstance(tables, list):
        raise PromptDistillError("must be a list of tables ([[eval.checks]])", path=source, field="eval.checks")
    lines = _table_lines(source)
    checks, names = [], set()
    for i, table in enumerate(tables):
        where = dict(path=source, line=lines[i] if i < len(lines) else None)
        field = f"eval.checks[{i}]"
        if not isinstance(table, dict):
            raise PromptDistillError("must be a table", field=field, **where)
        name = table.get("name")
        if not isinstance(name, str) or not name.strip():
            raise PromptDistillError("needs a non-empty string 'name'", field=f"{field}.name", **where)
        if name in names:
            raise PromptDistillError(f"duplicate check name {name!r}", field=f"{field}.name", **where)
        names.add(name)
        try:
            checks.append(_parse_one(table, name, field, where))
        except PromptDistillError as e:
            raise PromptDistillError(f"check {name!r}: {e.message}", path=e.path, line=e.line, field=e.field) from None
    return checks


def _parse_one(table: dict, name: str, field: str, where: dict) -> Check:
    """One table as a bound check (its name already checked)."""
    kind = table.get("kind")
    if kind not in KINDS:
        raise PromptDistillError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}", field=f"{field}.kind", **where)
    _, types, optional = KINDS[kind]
    extra = sorted(set(table) - set(types) - {"name", "kind"})
    if extra:
        takes = f" (it takes {', '.join(types)})" if types else " (it takes none)"
        raise PromptDistillError(f"not a parameter of kind {kind!r}{takes}", field=f"{field}.{extra[0]}", **where)
    params = {}
    for key, typ in types.items():
        if key not in table:
            if key in optional:
                continue
            raise PromptDistillError(f"kind {kind!r} needs '{key}'", field=f"{field}.{key}", **where)
        value = table[key]
        bad = not isinstance(value, typ) or (typ is int and (isinstance(value, bool) or value < 0))
        if bad:
            what = {int: "a non-negative integer", str: "a string", bool: "true/false", dict: "a table"}[typ]
            raise PromptDistillError(f"must be {what}, got {value!r}", field=f"{field}.{key}", **where)
        params[key] = value
    return Check(name, kind, _bind(kind, params, field, where))


def _bind(kind: str, params: dict, field: str, where: dict) -> dict:
    """Compile what a check compiles once (its regex, its schema validator), refusing what cannot be."""
    if "pattern" in params:
        flags = re.IGNORECASE if params.pop("ignore_case", False) else 0
        try:
            params["pattern"] = re.compile(params["pattern"], flags)
        except re.error as e:
            raise PromptDistillError(f"invalid regex: {e}", field=f"{field}.pattern", **where) from None
    if kind == "json_schema":
        try:
            import jsonschema
        except ImportError:
            raise PromptDistillError("a json_schema check needs jsonschema: pip install 'promptdistill[checks]'",
                                     field=f"{field}.kind", **where) from None
        cls = jsonschema.validators.validator_for(params["schema"])
        try:
            cls.check_schema(params["schema"])
        except jsonschema.SchemaError as e:
            raise PromptDistillError(f"invalid JSON schema: {e.message}", field=f"{field}.schema", **where) from None
        params["schema"] = cls(params["schema"])
    if kind == "language":
        if params["language"] not in LANGUAGES:
            raise PromptDistillError(f"the built-in language check knows {', '.join(LANGUAGES)}; got {params['language']!r}",
                                     field=f"{field}.language", **where)
    return params


def _table_lines(source) -> list[int]:
    """The line of each `[[eval.checks]]` header of the task file, in order (empty when unreadable)."""
    try:
        text = Path(source).read_text(encoding="utf-8") if source is not None else ""
    except (OSError, ValueError):
        return []
    return [n for n, line in enumerate(text.splitlines(), 1) if re.match(r"\s*\[\[\s*eval\s*\.\s*checks\s*\]\]", line)]
