"""Report pictures: what people would rather look at than read.

From an evaluation report and the training metrics, draw with matplotlib:

- `confusion_figure`: one heat map per system (teacher, base, student), gold
  labels down, predicted labels across, with an extra `??` column for
  replies that did not parse; every cell is annotated with its count;
- `field_agreement_figure`: for JSON tasks (no label set), agreement with the
  teacher per field and system;
- `loss_figure`: training loss per step and held-out loss;
- `cost_figure`: prompt tokens and median latency per request, per system.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot), so
drawing never touches a global backend and works headless (PNGs are written
with the Agg renderer). matplotlib is imported when the first picture is
drawn, keeping `import promptdistill` fast.
"""

from __future__ import annotations

from pathlib import Path

from .report import fmt

SYSTEM_COLORS = {"teacher": "#4C72B0", "base": "#8C8C8C", "student": "#DD8452"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def confusion_figure(report: dict):
    """Heat maps of the confusion matrix of every system, or None when there are no gold labels."""
    systems = {name: m["confusion"] for name, m in report["systems"].items() if m.get("confusion")}
    if not systems:
        return None
    first = next(iter(systems.values()))
    rows = list(first)
    cols = list(first[rows[0]])
    fig = _figure(5.2 * len(systems) + 0.8, 0.36 * len(rows) + 2.2)
    axes = fig.subplots(1, len(systems), squeeze=False)[0]
    peak = max(max(r.values()) for m in systems.values() for r in m.values()) or 1
    for ax, (name, matrix) in zip(axes, systems.items()):
        counts = [[matrix[g][c] for c in cols] for g in rows]
        image = ax.imshow(counts, cmap="Blues", vmin=0, vmax=peak, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=90 if max(map(len, cols)) > 3 else 0)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        m = report["systems"][name]
        ax.set_title(f"{name}: accuracy {fmt(m.get('accuracy'), '.1%')}")
        for i, row in enumerate(counts):
            for j, n in enumerate(row):
                if n:
                    ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if n > peak / 2 else "black")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="inputs")
    fig.suptitle(f"Confusion matrices on {report['n_examples']} held-out inputs (?? = reply not parsed)")
    return fig


def field_agreement_figure(report: dict):
    """Agreement with the teacher per JSON field and system, or None for label tasks."""
    systems = {name: m["json"] for name, m in report["systems"].items() if m.get("json") and name != "teacher"}
    if not systems:
        return None
    fields = ["valid", "exact"] + list(next(iter(systems.values()))["field_agreement"])
    fig = _figure(1.0 * len(fields) + 2.5, 4.0)
    ax = fig.subplots()
    width = 0.8 / len(systems)
    for k, (name, j) in enumerate(systems.items()):
        values = [j["validity"], j["exact_agreement"]] + [j["field_agreement"][f] for f in fields[2:]]
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(fields))]
        bars = ax.bar(xs, [100 * (v or 0) for v in values], width, label=name, color=SYSTEM_COLORS.get(name))
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(fields)), fields, rotation=20)
    ax.set_ylim(0, 110)
    ax.set_ylabel("% of held-out inputs")
    ax.set_title("Agreement with the teacher's JSON reply, per field")
    ax.legend()
    return fig


def loss_figure(metrics: list[dict]):
    """Training loss per step and held-out loss, from train/metrics.jsonl records; None if empty."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    heldout = [(m["step"], m["heldout_loss"]) for m in metrics if "heldout_loss" in m]
    if not train:
        return None
    fig = _figure(7.0, 4.2)
    ax = fig.subplots()
    ax.plot(*zip(*train), label="training loss (per step)", color=SYSTEM_COLORS["student"], linewidth=1.2)
    if heldout:
        ax.plot(*zip(*heldout), "o-", label="held-out loss", color=SYSTEM_COLORS["teacher"])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per trained token")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Student training")
    return fig


def cost_figure(report: dict):
    """Prompt tokens and median latency per request, one bar per system; on the
    teacher's latency, hatched, what computing its prompt adds to every request
    without prefix caching (latency.py), where it was measured."""
    names = list(report["systems"])
    colors = [SYSTEM_COLORS.get(n, "#55A868") for n in names]
    fig = _figure(8.0, 3.8)
    left, right = fig.subplots(1, 2)
    for ax, key, title in ((left, "mean_prompt_tokens", "prompt tokens per request"),
                           (right, "median_latency_ms", "median latency per request (ms)")):
        heights = [report["systems"][n][key] or 0 for n in names]
        bars = ax.bar(names, heights, color=colors)
        ax.bar_label(bars, fmt="%.0f", label_type="center" if ax is right else "edge")
        ax.set_title(title)
        ax.margins(y=0.15)
    prompt_ms = (report.get("latency") or {}).get("teacher_prompt_ms")
    if prompt_ms and "teacher" in names:
        i = names.index("teacher")
        extra = right.bar([names[i]], [prompt_ms], bottom=[heights[i]], color="white", edgecolor=colors[i], hatch="//",
                          label="+ its prompt, without prefix caching")
        right.bar_label(extra, labels=[f"+{prompt_ms:.0f}"])
        right.legend(loc="upper right", fontsize="small")
    fig.suptitle("Cost of a request: the teacher carries the prompt, the student does not")
    return fig


def write_pictures(report: dict, metrics: list[dict], out_dir) -> dict[str, str]:
    """Draw every picture that applies and save it as PNG in `out_dir`; return {title: file name}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = {
        "Confusion matrices": ("confusion.png", confusion_figure(report)),
        "Agreement per JSON field": ("field_agreement.png", field_agreement_figure(report)),
        "Training and held-out loss": ("loss.png", loss_figure(metrics)),
        "Prompt tokens and latency per request": ("cost.png", cost_figure(report)),
    }
    written = {}
    for title, (name, fig) in drawn.items():
        if fig is None:
            continue
        tmp = out_dir / f".{name}.tmp"
        fig.savefig(tmp, format="png")
        tmp.replace(out_dir / name)  # whole picture or none
        written[title] = name
    return written
