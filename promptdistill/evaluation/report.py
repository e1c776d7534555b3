"""The run's report with its pictures: report.md and a self-contained report.html.

`write_run_report(run_dir)` reads what evaluation and training left in the
run directory (eval/report.json, train/metrics.jsonl), draws the pictures
(plots.py) into eval/, appends them to report.md, and writes report.html: the
same content as one file with the PNGs inlined as base64, so it can be mailed
or attached to an issue and still show its pictures.

The HTML is converted from our own markdown, which only uses headings,
paragraphs, pipe tables, inline code, bold and images; no markdown library
is needed for that subset.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from ..io import atomic_write_text
from ..jsonreply import json_report_lines, json_summary_lines
from .agreement import agreement_report_lines, agreement_summary_lines, json_agreement_report_lines
from .general_ability import general_ability_lines
from .offtask import offtask_lines
from .systems import UNPARSED

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
code{background:#f3f3f3;padding:0 3px}"""


def write_run_report(run_dir) -> dict[str, str]:
    """Pictures, report.md and report.html for a run directory's evaluation; return {title: png name}."""
    from ..rundata import read_metrics
    from ..rundir import RunDir
    from .plots import write_pictures

    run = RunDir(run_dir)
    eval_dir = run.eval_dir
    report = json.loads(run.report_path.read_text(encoding="utf-8"))
    metrics = read_metrics(run.metrics_path) if run.metrics_path.exists() else []
    pictures = write_pictures(report, metrics, eval_dir)
    # The pictures go after the summary table, before the long per-system tables.
    head, sep, tail = report_markdown(report).partition("\n## ")
    markdown = head.rstrip("\n") + "\n\n" + pictures_markdown(pictures) + (sep + tail if sep else "")
    atomic_write_text(run.report_md, markdown)
    atomic_write_text(eval_dir / "report.html", markdown_to_html(markdown, eval_dir, title=f"promptdistill: {report['task']}"))
    return pictures


def pictures_markdown(pictures: dict[str, str]) -> str:
    if not pictures:
        return ""
    lines = ["## Pictures", ""]
    for title, name in pictures.items():
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def _image(alt: str, name: str, image_dir: Path) -> str:
    data = base64.b64encode((image_dir / name).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    head, body = cells[0], [r for r in cells[2:]]  # cells[1] is the |---| rule
    out = ["<table>", "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join(out + ["</table>"])


def markdown_to_html(markdown: str, image_dir, title: str) -> str:
    """A standalone HTML page for our report markdown, images inlined from `image_dir`."""
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
        elif image:
            body.append(_image(image.group(1), image.group(2), image_dir))
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
        i += 1
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _fmt(x, pct=False, digits=1) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.{digits}f}%" if pct else f"{x:.{digits}f}"


def results_table(report: dict) -> str:
    """The three-way table, as plain aligned text."""
    head = (f"{'system':<9} {'prompt':>6} {'accuracy':>9} {'agreement':>10} {'KL(T||.)':>9} {'parsed':>7} "
            f"{'tokens/req':>11} {'latency ms':>11}")
    lines = [head, "-" * len(head)]
    for name, m in report["systems"].items():
        lines.append(
            f"{name:<9} {'yes' if m['uses_prompt'] else 'no':>6} {_fmt(m['accuracy'], True):>9} {_fmt(m['agreement'], True):>10} "
            f"{_fmt(m.get('kl_to_teacher'), digits=3):>9} {_fmt(m['parse_rate'], True, 0):>7} {_fmt(m['mean_prompt_tokens']):>11} "
            f"{_fmt(m['median_latency_ms']):>11}"
        )
    if (gap := _gap_line(report)) is not None:
        lines.append(gap)
    if report.get("majority_label") is not None:
        lines.append(f"(always answering '{report['majority_label']}' would agree {_fmt(report['majority_agreement'], True)} with the teacher)")
    lines += json_summary_lines(report, _fmt)
    if report.get("reference_points"):  # absent from reports written before issue 18
        lines += agreement_summary_lines(report["reference_points"])
    if off := report.get("offtask"):
        s = off["student"]
        lines.append(f"off-task ({off['n']} inputs): student agrees {_fmt(s['agreement_teacher'], True)} with the teacher, "
                     f"{_fmt(s['agreement_base'], True)} with its base; in the task's format: teacher {_fmt(off['in_format']['teacher'], True)}, "
                     f"base {_fmt(off['in_format']['base'], True)}, student {_fmt(off['in_format']['student'], True)}")
    if general := report.get("general_ability"):
        flag = "  ** dropped more than eval.general_max_drop **" if general["flagged"] else ""
        lines.append(f"general ability ({general['n']} checks): base {_fmt(general['base_score'], True)}, "
                     f"student {_fmt(general['student_score'], True)}, KL(base||student) {_fmt(general['kl_base_student'], digits=3)}{flag}")
    return "\n".join(lines)


def _gap_line(report: dict) -> str | None:
    f = report.get("fidelity") or {}
    if f.get("unavailable"):
        return f"({f['unavailable']})"
    if f.get("gap_closed") is None:
        return None
    return (f"(the student closes {_fmt(f['gap_closed'], True)} of the base-to-teacher gap: KL {f['kl_base']:.3f} -> "
            f"{f['kl_student']:.3f} nats, {f['kind']})")


def reference_lines(report: dict) -> list[str]:
    """Agreement in context (issue 18): floors, ceiling, per-answer fidelity,
    confusion against the teacher; per field for JSON tasks. Empty for older reports."""
    section = report.get("reference_points")
    if not section:
        return []
    out = agreement_report_lines(section)
    if section.get("ceiling") is None and report.get("teacher_mode") == "generate":
        out += ["No ceiling: in generate mode the teacher's self-consistency needs new sampled answers; "
                "set eval.teacher_resamples = K (with task.temperature > 0) to ask for K more per input.", ""]
    return out + json_agreement_report_lines(report.get("json_reference_points") or {})


def report_markdown(report: dict) -> str:
    s = report["systems"]
    out = [
        f"# Evaluation: {report['task']}",
        "",
        f"{report['n_examples']} held-out inputs, none seen in training. Teacher: `{report['models']['teacher']}` "
        f"with the prompt ({report['teacher_mode']} mode). Student: `{report['models']['student']}` without the prompt.",
        "",
        "| system | prompt | accuracy (gold) | agreement (teacher) | KL(teacher ‖ system) | parse rate | prompt tokens / request | median latency (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s.items():
        out.append(
            f"| {name} | {'yes' if m['uses_prompt'] else 'no'} | {_fmt(m['accuracy'], True)} | {_fmt(m['agreement'], True)} | "
            f"{_fmt(m.get('kl_to_teacher'), digits=3)} | {_fmt(m['parse_rate'], True)} | {_fmt(m['mean_prompt_tokens'])} | {_fmt(m['median_latency_ms'])} |"
        )
    source = report.get("heldout_source")
    if source == "synthetic":
        out += ["", "**The held-out inputs are synthetic** (written by the generator, see synth/inputs.synthesis.md): these "
                "numbers say how the student imitates the teacher on the generator's inputs, not on real ones."]
    elif source == "mixed":
        out += ["", "The held-out inputs are partly synthetic (written by the generator): read the numbers with that in mind."]
    elif source == "real" and report.get("synthetic_train"):
        out += ["", "The held-out inputs are real inputs only; synthetic inputs were used for training."]
    out += ["", "Agreement is measured on inputs where the teacher gave a label. Accuracy counts unparsed answers as wrong. "
            "KL is in nats (fidelity.py): over the label distribution for label-constrained tasks, per reply token otherwise."]
    if report.get("latency"):
        out.append(f"Latency: {report['latency']['how']}.")
    if (gap := _gap_line(report)) is not None:
        sentence = gap.strip("()")
        out.append(sentence[:1].upper() + sentence[1:] + ".")  # not capitalize(): it would lower "KL"
    if report.get("majority_label") is not None:
        out.append(f"Always answering the teacher's most frequent label (`{report['majority_label']}`) would agree "
                   f"{_fmt(report['majority_agreement'], True)} of the time.")
    out.append("")
    out += json_report_lines(report, _fmt)
    out += reference_lines(report)
    out += offtask_lines(report.get("offtask"))
    out += general_ability_lines(report.get("general_ability"))
    for name, m in s.items():
        labels = list(m["confusion"])
        if not labels:
            continue
        cols = labels + [UNPARSED]
        out += [f"## Confusion matrix: {name} (rows gold, columns predicted)", "", "| gold \\ pred | " + " | ".join(cols) + " |",
                "|---" * (len(cols) + 1) + "|"]
        for g in labels:
            out.append(f"| **{g}** | " + " | ".join(str(m["confusion"][g][c]) or "" for c in cols) + " |")
        out.append("")
    return "\n".join(out)
