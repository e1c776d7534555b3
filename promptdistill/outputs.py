"""What a command may read and write: the one rule, checked before anything is written.

The rule: **promptdistill only removes or replaces what it created itself.**
A user's file or folder is never overwritten, truncated, replaced or deleted,
whatever the arguments say. Every command goes through this module in the
same order, validate, then lock, then write:

1. It names the paths it reads and the paths it writes (`check_paths`). An
   output that is the same as an input, inside one, or contains one is
   refused (`label --out data.jsonl --inputs data.jsonl` would have cut the
   input's last line; `export RUN --adapter RUN/x` would have replaced the
   run), and so are two outputs that overlap. Paths are compared after
   resolving symlinks, and existing files also by inode (hard links).
2. Each input must exist and be a readable file (`check_file`) or folder
   (`check_run_dir`, `check_model_folder`).
3. Each output must be the tool's to replace:
   - an export folder (`claim_folder`) is new, empty, or one promptdistill
     exported and nobody changed since: export writes a manifest
     (`MANIFEST`, every file with its size and sha256) into each folder, and a
     folder holding anything not in its manifest (a user's file, an edited
     README) is refused unless `--overwrite`;
   - a labels file (`claim_labels_file`) is new, empty, or holds labeled
     records (label appends to it and cuts a torn last line, which would
     truncate anything else);
   - a run directory (`claim_run_dir`) is new, empty, or a run (its
     config.json is a promptdistill configuration): `run` and `train` write
     config.json and whole subfolders into it;
   - nothing may be written inside a run directory from outside it
     (`check_outside_runs`): a run's files are only written by the commands
     that work on that run. The one exception: an export of a run may go
     into a new folder directly in that run (RUN/merged, as the tutorial
     keeps everything of a run together), never into the run's own entries
     (config.json, stages/, split/, labels/, train/, eval/).

Only then does a command take its lock and write its first byte, so a
refused command leaves no config, lock or sidecar behind. Each refusal is
one `PromptDistillError` naming the path and what to do instead.

Why one module: the same mistakes (an output that is an input, a folder that
is not ours) were possible in every command, and each command had grown its
own partial checks; here each check is written once and every path argument
of every command goes through it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .config import Config
from .errors import PromptDistillError

# Written by export into every folder it creates: the files it wrote, with sizes and hashes.
MANIFEST = ".promptdistill-export.json"
# The sections of a promptdistill configuration (a run's config.json).
# The tables of a task file, as a run's config.json holds them.
_RUN_SECTIONS = set(Config().to_dict())
# Left in a run directory by a command that stopped before writing config.json.
_RUN_SCRATCH = {".lock"}


# -- relations between paths ---------------------------------------------------

def _real(path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def relation(a, b) -> str | None:
    """How path `a` relates to path `b`: 'is', 'is inside', 'contains', or None."""
    ra, rb = _real(a), _real(b)
    if ra == rb:
        return "is"
    try:
        if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
            return "is"
    except OSError:
        pass
    if rb in ra.parents:
        return "is inside"
    if ra in rb.parents:
        return "contains"
    return None


def check_paths(reads: dict[str, object], writes: dict[str, object]) -> None:
    """Refuse outputs that are, lie inside or contain an input, or overlap another output.

    `reads` and `writes` map a name the user knows ('--inputs', 'the task
    file', 'run directory') to a path; None values are skipped."""
    reads = {k: v for k, v in reads.items() if v is not None}
    writes = {k: v for k, v in writes.items() if v is not None}
    for wname, w in writes.items():
        for rname, r in reads.items():
            rel = relation(r, w)
            if rel is None:
                continue
            what = {"is": "is the same path as", "is inside": "is inside", "contains": "contains"}[rel]
            raise PromptDistillError(f"{rname} ({r}) {what} {wname} ({w}), which this command writes; "
                                     "writing it would destroy what the command reads: use separate paths")
    names = list(writes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rel = relation(writes[a], writes[b])
            if rel is not None:
                what = {"is": "is the same path as", "is inside": "is inside", "contains": "contains"}[rel]
                raise PromptDistillError(f"{a} {what} {b} ({writes[b]}); give them different paths", path=writes[a])


# -- inputs ----------------------------------------------------------------------

def check_file(path, what: str) -> Path:
    """An input file: it exists, is a file (not a folder) and can be read."""
    p = Path(path)
    if not p.exists():
        raise PromptDistillError(f"{what} not found", path=p)
    if p.is_dir():
        raise PromptDistillError(f"{what} is a folder, expected a file", path=p)
    if not os.access(p, os.R_OK):
        raise PromptDistillError(f"{what} cannot be read (permission denied)", path=p)
    return p


def is_run_config(path) -> bool:
    """Whether `path` (a config.json) holds a promptdistill configuration."""
    try:
        raw = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and "task" in raw and set(raw) <= _RUN_SECTIONS


def looks_like_run(path) -> bool:
    """A folder some promptdistill command made a run of (possibly with a damaged config.json)."""
    p = Path(path)
    if not (p / "config.json").is_file():
        return False
    return is_run_config(p / "config.json") or any((p / sub).is_dir() for sub in ("stages", "train", "split", "labels"))


def check_run_dir(path, what: str = "run directory") -> Path:
    """A run directory a command reads (eval, predict, export): it exists, is a folder, and is a run."""
    p = Path(path)
    if not p.exists():
        raise PromptDistillError(f"{what} not found", path=p)
    if not p.is_dir():
        raise PromptDistillError(f"{what} is a file, expected a run directory", path=p)
    if not os.access(p, os.R_OK | os.X_OK):
        raise PromptDistillError(f"{what} cannot be read (permission denied)", path=p)
    if not (p / "config.json").exists():
        raise PromptDistillError("not a run directory (no config.json); pass the folder `run` or `train` wrote", path=p)
    return p


def check_model_folder(name: str | None, field: str) -> None:
    """A model given as a local folder must hold a transformers model (config.json).
    Names that are no existing path and do not look like one are hub ids (or the built-in model)."""
    if not name:
        return
    p = Path(os.path.expanduser(name))
    if not (p.exists() or name.startswith(("/", "./", "../", "~", "."))):
        return
    if not p.exists():
        raise PromptDistillError(f"model folder {name!r} not found", field=field)
    if not p.is_dir():
        raise PromptDistillError(f"model {name!r} is a file; a model is a folder holding config.json and weights (or a hub id)",
                                 field=field)
    if not (p / "config.json").is_file():
        raise PromptDistillError(f"model folder {name!r} holds no config.json (empty, or not a transformers model)", field=field)


# -- outputs ---------------------------------------------------------------------

def _existing_ancestor(p: Path) -> Path:
    q = _real(p).parent
    while not q.exists():
        q = q.parent
    return q


def check_output_file(path, what: str) -> Path:
    """A file the command writes: not a folder, its folder creatable, writable where it exists."""
    p = Path(path)
    if p.is_dir():
        raise PromptDistillError(f"{what} is a folder, expected a file path", path=p)
    _check_parent(p, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise PromptDistillError(f"{what} cannot be written (permission denied)", path=p)
    return p


def _check_parent(p: Path, what: str) -> None:
    anc = _existing_ancestor(p)
    if not anc.is_dir():
        raise PromptDistillError(f"{what}: {anc} is a file, so no folder can be made there", path=p)
    if not os.access(anc, os.W_OK | os.X_OK):
        raise PromptDistillError(f"{what} cannot be written (no permission in {anc})", path=p)


# What a run directory holds of its own (rundir.py's layout): nothing else may be written there.
RUN_ENTRIES = ("config.json", ".lock", "stages", "synth", "split", "labels", "train", "eval")


def check_outside_runs(path, what: str, *, own_run=None) -> None:
    """Refuse writing inside a run directory. Into `own_run` (the run an export
    is made from) only a new folder beside the run's own entries is allowed,
    e.g. RUN/merged: never into config.json, stages/, split/, labels/, train/ or eval/."""
    real = _real(path)
    for parent in real.parents:
        if own_run is not None and parent == _real(own_run):
            top = real.relative_to(parent).parts[0]
            if top in RUN_ENTRIES:
                raise PromptDistillError(f"{what} is inside the run's own {top}; choose a path outside the run, "
                                         "or a new folder directly in it (such as RUN/merged)", path=path)
            continue
        if looks_like_run(parent):
            raise PromptDistillError(f"{what} is inside the run directory {parent}; a run's files are written only by the "
                                     "commands that work on that run: choose a path outside it", path=path)


def claim_run_dir(path, what: str = "--run-dir") -> Path:
    """A run directory `run` or `train` will write into: new, empty, or already a run."""
    p = Path(path)
    if not (p / "config.json").is_file():
        # A new run may not be made inside another run (its folders are that run's).
        check_outside_runs(p, what)
    if not p.exists():
        _check_parent(p, what)
        return p
    if not p.is_dir():
        raise PromptDistillError(f"{what} is a file, expected a run directory (a folder)", path=p)
    if not os.access(p, os.W_OK | os.X_OK):
        raise PromptDistillError(f"{what} cannot be written (permission denied)", path=p)
    config = p / "config.json"
    if config.exists():
        if config.is_file() and is_run_config(config):
            return p
        raise PromptDistillError("config.json is not a promptdistill configuration (corrupt, or another tool's); "
                                 "if this is a run, delete config.json and rerun, otherwise choose another --run-dir", path=config)
    # config.json being written right now (another process of a torchrun launch) is ours too.
    other = sorted(e.name for e in p.iterdir()
                   if e.name not in _RUN_SCRATCH and not (e.name.startswith(".config.json.") and e.name.endswith(".tmp")))
    if other:
        shown = ", ".join(other[:3]) + (" ..." if len(other) > 3 else "")
        raise PromptDistillError(f"{what} exists and is not a run directory (it holds {shown}); choose a new or empty folder", path=p)
    return p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder, kind: str) -> None:
    """Record every file of `folder` (written by the tool) in its manifest."""
    folder = Path(folder)
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            f = Path(root) / name
            rel = f.relative_to(folder).as_posix()
            if rel != MANIFEST:
                files[rel] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    from .io import atomic_write_json

    atomic_write_json(folder / MANIFEST, {"written_by": "promptdistill", "kind": kind, "files": dict(sorted(files.items()))})


def foreign_entries(folder) -> list[str]:
    """What in `folder` the tool did not write, or what changed since it did (per its manifest)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"] if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        files = {}
    foreign = []
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            rel = (Path(root) / d).relative_to(folder).as_posix()
            if not any(k.startswith(rel + "/") for k in files):
                foreign.append(rel + "/")
        for name in names:
            f = Path(root) / name
            rel = f.relative_to(folder).as_posix()
            if rel == MANIFEST and files:
                continue
            entry = files.get(rel)
            if not isinstance(entry, dict):
                foreign.append(rel)
            elif f.is_symlink() or f.stat().st_size != entry.get("size") or _sha256(f) != entry.get("sha256"):
                foreign.append(f"{rel} (changed since export)")
    return sorted(foreign)


def claim_folder(path, what: str, *, overwrite: bool = False) -> Path:
    """A folder the command replaces whole (an export): new, empty, or exported
    by promptdistill and unchanged since; with `overwrite`, any folder."""
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise PromptDistillError(f"{what} is a broken symlink; choose another path", path=p)
        _check_parent(p, what)
        return p
    if not p.is_dir():
        raise PromptDistillError(f"{what} exists and is a file, not a folder; choose another path", path=p)
    _check_parent(p, what)
    if overwrite:
        return p
    foreign = foreign_entries(p)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise PromptDistillError(f"{what} exists and holds what promptdistill did not write ({shown}); choose a new or "
                                 "empty folder, or pass --overwrite to replace it", path=p)
    return p


def claim_labels_file(path, what: str, *, sidecars: bool = True) -> Path:
    """A labeled JSONL file `label` appends to: new, empty, or holding labeled records.
    With `sidecars`, its sidecar (<file>.meta.json) and lock (<file>.lock) must
    not be folders, and the sidecar must be readable JSON."""
    p = check_output_file(path, what)
    meta = p.with_name(p.name + ".meta.json")
    if sidecars:
        check_output_file(meta, f"{what}'s sidecar")
        check_output_file(p.with_name(p.name + ".lock"), f"{what}'s lock file")
    if sidecars and meta.exists():
        try:
            ok = isinstance(json.loads(meta.read_bytes().decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            raise PromptDistillError("corrupt labels sidecar; delete it and rerun with --force to relabel", path=meta)
    if not p.exists() or p.stat().st_size == 0:
        return p
    data = p.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop() if lines else b""  # text after the last newline: a record cut by a kill, cut on resume
    records = 0
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
            ok = isinstance(obj, dict) and "id" in obj and "status" in obj
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok and records == 0:
            raise PromptDistillError(f"{what} exists and is not a labeled JSONL file written by `label` (line {n}); "
                                     "choose another file", path=p)
        if not ok:
            raise PromptDistillError("corrupt labeled record; fix or delete this line", path=p, line=n)
        records += 1
    if torn.strip() and not (torn.startswith(b'{"') and (records or meta.exists())):
        raise PromptDistillError(f"{what} exists and is not a labeled JSONL file written by `label` (its last line); "
                                 "choose another file", path=p)
    return p
