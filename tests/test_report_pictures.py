"""Report pictures: PNGs for the confusion matrices, loss curves and cost, in
report.md and inlined in a self-contained report.html (no model needed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from promptdistill.evaluation.agreement import reference_points


LABELS = ["ar", "de", "el", "en", "es", "fr", "hi", "ru", "tr", "ur", "vi", "zh", "ot"]


def system(accuracy, latency, tokens, confusion=None, json_metrics=None):
    return {"uses_prompt": False, "n": 26, "accuracy": accuracy, "agreement": 0.5, "parse_rate": 1.0,
            "mean_prompt_tokens": tokens, "median_latency_ms": latency, "confusion": confusion or {}, "json": json_metrics}


def label_report():
    confusion = {g: {p: (2 if p == g else 0) + (1 if p == "??" else 0) for p in LABELS + ["??"]} for g in LABELS}
    systems = {"teacher": system(0.66, 1100.0, 487.0, confusion), "base": system(0.0, 880.0, 63.0, confusion),
               "student": system(0.6, 345.0, 63.0, confusion)}
    return {"task": "language_id", "n_examples": 39, "teacher_mode": "choose", "majority_label": "ot", "majority_agreement": 0.2,
            "models": {"teacher": "t", "student": "s"}, "systems": systems, "reference_points": reference_points([], {})}


def write_run(tmp_path, report, metrics):
    (tmp_path / "eval").mkdir(parents=True)
    (tmp_path / "train").mkdir()
    (tmp_path / "eval" / "report.json").write_text(json.dumps(report))
    (tmp_path / "train" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics) + '{"step": 9, "lo')
    return tmp_path


METRICS = [{"step": s, "loss": 10.0 / s, "lr": 1e-3} for s in range(1, 9)] + [{"step": 4, "heldout_loss": 3.0}, {"step": 8, "heldout_loss": 2.0}]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_label_task_pictures_in_markdown_and_html(tmp_path):
    from promptdistill.evaluation.run_report import write_run_report

    run = write_run(tmp_path, label_report(), METRICS)
    pictures = write_run_report(run)
    assert set(pictures.values()) == {"confusion.png", "loss.png", "cost.png"}
    for name in pictures.values():
        width, height = png_size(run / "eval" / name)
        assert width >= 600 and height >= 300, name
    # three panels of a 13-label matrix: wide enough for readable cells
    assert png_size(run / "eval" / "confusion.png")[0] >= 1500

    md = (run / "eval" / "report.md").read_text()
    for title, name in pictures.items():
        assert f"![{title}]({name})" in md
    # the pictures come before the per-system confusion tables
    assert md.index("## Pictures") < md.index("## Confusion matrix: teacher")

    page = (run / "eval" / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<table>" in page and "<th>system</th>" in page and "Evaluation: language_id" in page


def test_json_task_draws_field_agreement_instead_of_confusion(tmp_path):
    from promptdistill.evaluation.run_report import write_run_report

    fields = {"category": 0.5, "priority": 0.25}
    j = {"validity": 0.9, "exact_agreement": 0.1, "field_agreement": fields, "mean_field_agreement": 0.375}
    report = label_report()
    report["systems"] = {name: system(None, 10.0, 5.0, json_metrics=j) for name in ("teacher", "base", "student")}
    run = write_run(tmp_path, report, METRICS)
    assert set(write_run_report(run).values()) == {"field_agreement.png", "loss.png", "cost.png"}
    assert not (run / "eval" / "confusion.png").exists()


def test_loss_figure_plots_every_step_and_heldout_point():
    from promptdistill.evaluation.plots import loss_figure

    fig = loss_figure(METRICS)
    lines = fig.axes[0].get_lines()
    assert [list(line.get_xdata()) for line in lines] == [list(range(1, 9)), [4, 8]]
    assert list(lines[1].get_ydata()) == [3.0, 2.0]
    assert loss_figure([]) is None


def test_confusion_figure_has_every_label_and_the_unparsed_column():
    from promptdistill.evaluation.plots import confusion_figure

    fig = confusion_figure(label_report())
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().split(":")[0] for ax in panels] == ["teacher", "base", "student"]
    for ax in panels:
        assert [t.get_text() for t in ax.get_xticklabels()] == LABELS + ["??"]
        assert [t.get_text() for t in ax.get_yticklabels()] == LABELS


def test_import_is_light_and_public_names_are_documented():
    code = ("import sys, promptdistill as pd\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "missing = [n for n in pd.__all__ if not (getattr(pd, n).__doc__ or '').strip()]\n"
            "assert not missing, missing\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cost_picture_shows_what_the_prompt_adds_without_prefix_caching():
    """The teacher's latency bar is as measured (prompt cached); what computing the prompt adds to
    every request without prefix caching is a hatched part on top, only where it was measured."""
    from promptdistill.evaluation.plots import cost_figure

    report = label_report()
    latency_axes = cost_figure(report).axes[1]
    assert [round(p.get_height()) for p in latency_axes.patches] == [1100, 880, 345]
    report["latency"] = {"teacher_prompt_ms": 650.0}
    latency_axes = cost_figure(report).axes[1]
    *plain, extra = latency_axes.patches
    assert [round(p.get_height()) for p in plain] == [1100, 880, 345]
    assert (round(extra.get_y()), round(extra.get_height()), extra.get_hatch()) == (1100, 650, "//")
