"""`make lint` rejects import cycles: the project's `acyclic_siblings` contract
(.importlinter), run by lint-imports on tiny packages written here, fails on a
cycle between two modules (top level or inside a subpackage, function-level
imports included) and passes on the same package without it."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # import-linter, in the test extra


def cycle_contract() -> dict:
    """The project's contract that forbids cycles, as its .importlinter section."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    sections = [s for s in config.sections() if config[s].get("type") == "acyclic_siblings"]
    assert len(sections) == 1, "the project has one acyclic_siblings contract"
    section = dict(config[sections[0]])
    assert section["ancestors"].split() == ["promptdistill"]
    return section


def lint(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    """Write package `pkg` (relative path -> source) and run the contract on it."""
    for rel, source in files.items():
        path = tmp_path / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    contract = {**cycle_contract(), "ancestors": "pkg"}
    body = "\n".join(f"{k} = {v}" for k, v in contract.items())
    (tmp_path / "lint.ini").write_text(f"[importlinter]\nroot_package = pkg\n\n[importlinter:contract:acyclic]\n{body}\n",
                                       encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(tmp_path / "lint.ini")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


ACYCLIC = {
    "pkg/__init__.py": "",
    "pkg/ground.py": "X = 1\n",
    "pkg/stage.py": "from .ground import X\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/a.py": "from . import b\nfrom ..stage import X\n",
    "pkg/sub/b.py": "Y = 2\n",
}


def test_acyclic_package_passes(tmp_path):
    done = lint(tmp_path, ACYCLIC)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "KEPT" in done.stdout


@pytest.mark.parametrize("cycle, names", [
    # the ground reaching back into a stage from inside a function, as load_config once did
    ({"pkg/ground.py": "X = 1\n\ndef load():\n    from .stage import X as again\n    return again\n"}, [".ground", ".stage"]),
    # two modules of a subpackage importing each other
    ({"pkg/sub/b.py": "from . import a\nY = 2\n"}, ["pkg.sub", ".a", ".b"]),
])
def test_a_cycle_fails_and_is_named(tmp_path, cycle, names):
    done = lint(tmp_path, {**ACYCLIC, **cycle})
    assert done.returncode != 0
    assert "BROKEN" in done.stdout
    for name in names:
        assert name in done.stdout, done.stdout
