"""The run's report files: report.md with its pictures, and a self-contained report.html.

`write_run_report(run_dir)` reads what evaluation and training left in the
run directory (eval/report.json, train/metrics.jsonl), draws the pictures
(plots.py) into eval/, writes report.md (report.py's markdown with the
pictures after the summary table), and report.html: the same content as one
file with the PNGs inlined as base64, so it can be mailed or attached and
still show its pictures.

The HTML is converted from our own markdown, which only uses headings,
paragraphs, pipe tables, inline code, bold and images; no markdown library
is needed for that subset.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import stat
from pathlib import Path

from ..io import atomic_write_text
from .report import pictures_markdown, report_markdown

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
code{background:#f3f3f3;padding:0 3px}"""


def write_run_report(run_dir) -> dict[str, str]:
    """Pictures, report.md and report.html for a run directory's evaluation; return {title: png name}."""
    from ..rundir import RunDir

    run = RunDir(run_dir)
    return write_report_files(run.eval_dir, run.metrics_path)


def write_report_files(eval_dir, metrics_path=None) -> dict[str, str]:
    """Pictures, report.md and report.html beside the report.json in `eval_dir` (a
    run's eval/ or an `eval --student --out` folder); the loss curves come from
    `metrics_path` (train/metrics.jsonl) when there is one. Return {title: png name}."""
    from ..rundata import read_metrics
    from .plots import write_pictures

    eval_dir = Path(eval_dir)
    report = json.loads((eval_dir / "report.json").read_text(encoding="utf-8"))
    metrics = read_metrics(metrics_path) if metrics_path is not None and Path(metrics_path).exists() else []
    pictures = write_pictures(report, metrics, eval_dir)
    # The pictures go after the summary table, before the long per-system tables.
    head, sep, tail = report_markdown(report).partition("\n## ")
    markdown = head.rstrip("\n") + "\n\n" + pictures_markdown(pictures) + (sep + tail if sep else "")
    atomic_write_text(eval_dir / "report.md", markdown)
    atomic_write_text(eval_dir / "report.html", markdown_to_html(markdown, eval_dir, title=f"promptdistill: {report['task']}",
                                                                 pictures=set(pictures.values())))
    return pictures


def _inline(text: str) -> str:
    # A backslash-escaped character (report.md_text: a user's string) is literal
    # text: set aside before code and bold are read, put back escaped.
    escaped: list[str] = []

    def keep(m):
        escaped.append(m.group(1))
        return f"\x00{len(escaped) - 1}\x00"

    text = re.sub(r"\\([\\`*\[\]#|!<>])", keep, text.replace("\x00", ""))
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub("\x00([0-9]+)\x00", lambda m: html.escape(escaped[int(m.group(1))]), text)


def _image(alt: str, name: str, image_dir: Path, pictures: set[str]) -> str | None:
    """An inlined picture, only one the evaluation drew itself (`pictures`, names
    write_pictures returned) and only a regular file there, never through a
    symlink: a task name or label could otherwise smuggle an image line naming
    any file (~/.ssh/id_rsa) into the report people attach to tickets. Anything
    else is None (the line is shown as text)."""
    if name not in pictures or "/" in name or name.startswith("."):
        return None
    path = image_dir / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: list[str]) -> str:
    # Cells split at pipes that are not escaped (a label's own | is \\|).
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", r.strip()[1:-1] if r.strip().endswith("|") else r.strip()[1:])]
             for r in rows]
    head, body = cells[0], [r for r in cells[2:]]  # cells[1] is the |---| rule
    out = ["<table>", "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join(out + ["</table>"])


def markdown_to_html(markdown: str, image_dir, title: str, pictures=frozenset()) -> str:
    """A standalone HTML page for our report markdown; of its image lines only
    the `pictures` (file names in `image_dir` the evaluation drew) are inlined."""
    image_dir = Path(image_dir)
    body: list[str] = []
    lines = markdown.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            body.append(_table(lines[i:j]))
            i = j
            continue
        heading = re.match(r"(#{1,6}) (.*)", line)
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip())
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image and (tag := _image(image.group(1), image.group(2), image_dir, set(pictures))) is not None:
            body.append(tag)
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
        i += 1
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
