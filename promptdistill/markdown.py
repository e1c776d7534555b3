"""A user's strings inside markdown the tool writes (report.md, the synthesis
report, exported READMEs): shown as text, never read as markdown.

A label, a task or model name, a JSON field or a persona comes from a task
file or data that may be someone else's; written raw, a `|` would cut a table
row, a backtick open code, and `![...](path)` would become an image line (which
report.html would inline). `md_text` escapes them, `md_code` keeps the inline
code the reports use where that is safe.
"""

from __future__ import annotations

import re

# Characters that mean something to markdown (and to run_report's HTML subset)
# where a user's string is written: a label, a task or model name, a JSON field.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*\[\]#|!<>])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def md_text(value) -> str:
    """A user's string as literal markdown text: control characters (a newline
    would start a line of its own, such as an image line) become spaces, and
    every character markdown reads (`|` ends a table cell, backticks, `#`, `![`)
    is backslash-escaped, so a label or task name is shown, never interpreted."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _CONTROL.sub(" ", str(value)))


def md_code(value) -> str:
    """A user's string as inline code (literal in markdown except `|`, which would
    still end a table cell, so it is escaped); one holding a backtick as md_text."""
    text = _CONTROL.sub(" ", str(value))
    return md_text(text) if "`" in text else "`" + text.replace("|", "\\|") + "`"
