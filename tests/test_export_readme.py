"""The README written into a merged export is code a user copies: its Python
snippet runs as written (folder and input filled in) against the exported
model, with nothing but transformers, and prints the student's answer."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from test_export import run_dir  # noqa: F401  (the module-scoped run with a non-zero LoRA adapter)

TEXT = "Bonjour tout le monde"


def test_merged_readme_snippet_runs_and_prints_the_students_answer(run_dir, tmp_path):  # noqa: F811
    from promptdistill.export import export_merged
    from promptdistill.predict import load_student, predict_texts

    out = export_merged(run_dir, tmp_path / "merged")
    readme = (out / "README.md").read_text(encoding="utf-8")
    (snippet,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert "THIS_FOLDER" in snippet and '"..."' in snippet
    code = snippet.replace("THIS_FOLDER", str(out)).replace('"..."', repr(TEXT))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr

    task, student = load_student(run_dir, device="cpu")
    [(_, reply)] = predict_texts(task, student, [TEXT])
    assert reply.strip()
    assert done.stdout.strip() == reply.strip()


def test_adapter_readme_quotes_its_command_for_the_shell(tmp_path):
    """The `vllm serve` line is copied into a shell: a task name or folder with
    spaces or `;` stays one argument (shlex.quote), and the name stays one heading."""
    import shlex

    from promptdistill.config import config_from_dict
    from promptdistill.export import _adapter_readme

    cfg = config_from_dict({"task": {"name": "x; touch pwned #", "user_template": "{text}"}})
    out = tmp_path / "my adapter"
    readme = _adapter_readme(cfg, "/models/base dir", out, 8)
    (line,) = [ln for ln in readme.splitlines() if ln.startswith("vllm serve")]
    assert shlex.split(line) == ["vllm", "serve", "/models/base dir", "--enable-lora", "--lora-modules",
                                 f"x; touch pwned #={out}", "--max-lora-rank", "16"]
    assert readme.splitlines()[0] == "# x; touch pwned \\# student (LoRA adapter)"
