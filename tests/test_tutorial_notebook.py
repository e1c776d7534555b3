"""The tutorial notebook executes from top to bottom on the packaged SmolLM2,
in a kernel running this interpreter (so it tests this checkout), and its run
directory ends up with the labels, the adapter, the report and the merged export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parent.parent / "examples" / "tutorial.ipynb"


@pytest.mark.slow
def test_tutorial_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # A kernel spec for this very interpreter, found first on JUPYTER_PATH, so a
    # `python3` kernel registered elsewhere on the machine cannot be picked up.
    spec = tmp_path / "jupyter" / "kernels" / "promptdistill-tutorial"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "promptdistill tutorial", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    run = tmp_path / "run"
    monkeypatch.setenv("TUTORIAL_RUN_DIR", str(run))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, kernel_name="promptdistill-tutorial", timeout=900,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails

    outputs = "\n".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    labeled = (run / "labels" / "train.jsonl").read_text().splitlines()
    assert f"Built {len(labeled)} training examples" in outputs and len(labeled) >= 20
    steps = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps if "loss" in m] == list(range(1, 9))
    assert f"Step  8: loss = {steps[-2]['loss']:.4f}" in outputs
    assert "same answer: True" in outputs  # the exported model answers like the student
    assert (run / "train" / "adapter" / "adapter_model.safetensors").exists()
    report = json.loads((run / "eval" / "report.json").read_text())
    assert report["n_examples"] == 8 and set(report["systems"]) == {"teacher", "base", "student"}
    assert "student" in outputs and f"{100 * report['systems']['student']['agreement']:.1f}%" in outputs
    for picture in ("confusion.png", "loss.png", "cost.png", "report.html"):
        assert (run / "eval" / picture).exists(), picture
    assert (run / "merged" / "model.safetensors").exists()
