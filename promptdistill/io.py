"""The ground every stage writes on: atomic writes, durable JSONL appends,
locks, fingerprints, how paths relate, input and output file checks, and
resuming from what an earlier command left.

A file the tool writes either appears whole or not at all: we write to a
temporary file in the same folder, fsync it, `os.replace` it into place and
fsync the folder (so the rename itself survives a power cut). Temporaries are
named `.NAME.promptdistill-tmp-HOST-PID-...`; the next write of NAME removes
those of dead processes on this machine (`sweep_stale_temporaries`). Labeled
records are appended one line at a time and flushed, so an interrupted run
loses at most the record being written (a torn last line is ignored on read).

Results get the permissions any other program's files get: `mkstemp` and
`mkdtemp` create 0600 files and 0700 folders (private scratch space), and
safetensors writes its files 0600, so before a temporary file or folder is
renamed into place it (and all it holds) is given the mode the umask allows
(0666 / 0777 minus the umask), or, for a file that replaces another, the
mode the old file had. Otherwise an exported model
would be unreadable to the other accounts that serve it.

The rule every command keeps: **promptdistill only removes or replaces what
it created itself.** Each stage's preflight names the paths it reads and the
paths it writes (`check_paths`): an output that is, lies inside or contains
an input is refused (`label --out data.jsonl --inputs data.jsonl` would cut
the input's last line), and so are two outputs that overlap; paths are
compared after resolving symlinks, and existing files also by inode (hard
links). Inputs must be readable files (`check_file`), outputs writable paths
(`check_output_file`). Which existing outputs count as the tool's own is
decided beside what owns them: a run directory (`rundir.claim_run_dir`), an
export folder (`export.claim_folder`), a labels file
(`labeling.claim_labels_file`). Only then does a command take its lock and
write its first byte, so a refused command leaves nothing behind.

An output made with other settings is resumed only when the settings match
(`resume_or_refuse`): stage markers, labels and synthesis sidecars, training
checkpoints and an interrupted evaluation all record what they were made
from and go through that one comparison.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .errors import PromptDistillError


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows
    (os.umask can only be read by setting it, which races with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode a new file (or folder) gets under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


# Every temporary file or folder the tool creates beside a target is named
# `.NAME.promptdistill-tmp-HOST-PID-RANDOM` (files end in .tmp): what an
# interrupted write left behind is recognisably ours, and whose it was.
TEMP_MARKER = "promptdistill-tmp"


def temp_prefix(path: Path) -> str:
    """The name prefix of this process's temporary files and folders beside `path`."""
    return f".{path.name}.{TEMP_MARKER}-{_host()}-{os.getpid()}-"


def _host() -> str:
    # No '-' in it, so the pid after it parses; a run folder on a shared file
    # system is swept only of temporaries made on this machine.
    return "".join(c if c.isalnum() else "_" for c in os.uname().nodename) or "host"


def sweep_stale_temporaries(folder) -> list[Path]:
    """Remove the temporaries interrupted writes left in `folder` (a whole merged
    model, say): only names the tool gives (`temp_prefix`), made on this machine
    by a process that is no longer alive. A live process's, another machine's,
    and anything else is left alone. Called before each atomic write into the
    folder; returns what was removed."""
    mark = f".{TEMP_MARKER}-{_host()}-"
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or mark not in entry.name:
            continue
        target_name, rest = entry.name[1:].rsplit(mark, 1)
        pid, _, kind = rest.partition("-")
        if not pid.isdigit() or _alive(int(pid)):
            continue
        target, moved_aside = Path(folder) / target_name, Path(entry.path) / "x"
        if kind.startswith("old-") and moved_aside.is_dir() and not os.path.lexists(target):
            # Killed between moving the old folder aside and renaming the new one in: put the old one back.
            moved_aside.rename(target)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another account's process
        return True
    return True


def fsync_folder(folder) -> None:
    """Make a rename (or a new entry) in `folder` survive a power cut: the file's
    own fsync does not cover the folder entry that names it. A file system
    that cannot fsync a folder (some network ones) is left as it is."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder) -> None:
    """fsync every file and folder under `folder` (before it is renamed into place)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_folder(root)


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    if path.is_dir():
        raise PromptDistillError("is a folder, expected a file; choose another path", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            # mkstemp made it 0600; give it the mode of the file it replaces, or the umask's.
            try:
                mode = path.stat().st_mode & 0o7777
            except OSError:
                mode = default_mode()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def give_default_modes(folder) -> None:
    """Give `folder` and everything in it the modes the umask allows (keeping execute bits)."""
    dir_mode, file_mode = default_mode(directory=True), default_mode()
    os.chmod(folder, dir_mode)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), dir_mode)
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                os.chmod(p, file_mode | (os.stat(p).st_mode & 0o111 & dir_mode))


@contextmanager
def atomic_directory(path):
    """Yield a temporary folder beside `path`; when the block succeeds it
    replaces `path`, otherwise it is removed. Readers see the old folder or
    the whole new one, never a half-written one.

    This replaces whatever folder is at `path`: callers decide first that it
    is theirs to replace (`export.claim_folder` for folders a user names).
    A file at `path` is never removed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PromptDistillError("exists and is a file, not a folder; choose another path", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path.parent)  # what interrupted writes here left (a whole model)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path)))
    old = None
    try:
        yield tmp
        # mkdtemp made the folder 0700, and some writers (safetensors) make their files 0600.
        give_default_modes(tmp)
        fsync_tree(tmp)
        if path.exists():
            # Move the old folder aside first, and back if the new one cannot take its place.
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path) + "old-"))
            path.rename(old / "x")
            try:
                tmp.rename(path)
            except BaseException:
                (old / "x").rename(path)
                raise
            fsync_folder(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
            fsync_folder(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not (old / "x").exists():
            shutil.rmtree(old, ignore_errors=True)


def fingerprint(obj, *blobs: bytes, ensure_ascii: bool = True) -> str:
    """A short hash of `obj` (JSON with sorted keys) and any raw bytes after it.

    What a stage, a label file, a checkpoint or an interrupted evaluation was
    made from is recorded as one of these, and compared on rerun to decide
    whether the old output is still valid (16 hex digits: collisions are not a
    concern at the scale of one user's runs). `ensure_ascii=False` hashes
    non-ASCII text as its UTF-8 bytes (how a task's fingerprint is written)."""
    h = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str, ensure_ascii=ensure_ascii).encode())
    for blob in blobs:
        h.update(blob)
    return h.hexdigest()[:16]


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def atomic_write_jsonl(path, records) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


class JsonlAppender:
    """Appends one JSON object per line, flushed to disk after each record."""

    def __init__(self, path):
        self.path = Path(path)
        check_no_symlinks(self.path, "an appended file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_last_line(self.path)
        self._f = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, default_mode()),
                            "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def drop_torn_last_line(path) -> None:
    """A process killed mid-write leaves a last line without its newline; cut it."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        torn = torn_tail_length(f)
        if torn:
            f.truncate(f.seek(0, os.SEEK_END) - torn)


def torn_tail_length(f) -> int:
    """How many bytes follow the last newline of the open binary file `f` (0 when it
    ends with one): read backwards in blocks from the end, so a multi-GB labels
    file is not read whole to find its last line."""
    end = f.seek(0, os.SEEK_END)
    pos = end
    while pos > 0:
        step = min(1 << 16, pos)
        pos -= step
        f.seek(pos)
        block = f.read(step)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return end - (pos + cut + 1)
    return end


# What flock fails with where the file system has no locks (NFS without lockd, some FUSE mounts).
_NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class DirectoryLock:
    """An exclusive lock held while a process writes a run directory or output file.

    Uses flock, which the OS releases when the process dies (even by kill -9),
    so a crash never leaves a stale lock behind.
    """

    def __init__(self, lock_path, what: str):
        self.path = Path(lock_path)
        self.what = what
        self._f = None

    def __enter__(self):
        import fcntl

        check_no_symlinks(self.path, f"the lock file of {self.what}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Never through a symlink, and only a regular file: a lock that links to
        # a user's file would otherwise get that file truncated to a process id.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), default_mode())
        except OSError as e:
            raise PromptDistillError(f"the lock file cannot be opened ({e.strerror}); it must be a regular file promptdistill "
                                     "made: delete it if it is not", path=self.path) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PromptDistillError("the lock file is not a regular file; delete it", path=self.path)
        f = os.fdopen(fd, "r+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read(32).strip() or "?"
            f.close()
            raise PromptDistillError(f"another promptdistill process (pid {holder}) is writing {self.what}; wait for it or stop it",
                                     path=self.path.parent) from None
        except OSError as e:
            f.close()
            if e.errno in _NO_FLOCK:
                raise PromptDistillError(f"cannot lock {self.what}: this file system does not support flock "
                                         f"({os.strerror(e.errno)}; some network file systems); put it on a local disk or a "
                                         "file system with locks", path=self.path) from None
            raise
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


# -- relations between paths ---------------------------------------------------

def check_no_symlinks(path, what: str, *, below=None) -> None:
    """Refuse writing at `path` when it, or a folder between `below` and it, is a
    symlink: a write must land where the path says, never where a link points
    (a run's eval/ linked to a user's folder, a lock file linked to a user's
    file). Without `below`, only `path` itself is checked (lstat)."""
    p = Path(path)
    chain = [p]
    if below is not None:
        base = Path(below)
        try:
            rel = p.relative_to(base)
        except ValueError:
            rel = None
        if rel is not None:
            chain = [base / Path(*rel.parts[:i]) for i in range(1, len(rel.parts) + 1)]
    for q in chain:
        if q.is_symlink():
            raise PromptDistillError(f"{what}: {q} is a symlink; promptdistill never writes through one (delete the link)", path=q)


def real_path(path) -> Path:
    """`path` with ~ expanded and every symlink resolved (what two paths are compared as)."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def relation(a, b) -> str | None:
    """How path `a` relates to path `b`: 'is', 'is inside', 'contains', or None."""
    ra, rb = real_path(a), real_path(b)
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


_RELATION_WORDS = {"is": "is the same path as", "is inside": "is inside", "contains": "contains"}


def check_paths(reads: dict[str, object], writes: dict[str, object]) -> None:
    """Refuse outputs that are, lie inside or contain an input, or overlap another output.

    `reads` and `writes` map a name the user knows ('--inputs', 'the task
    file', 'run directory') to a path; None values are skipped."""
    reads = {k: v for k, v in reads.items() if v is not None}
    writes = {k: v for k, v in writes.items() if v is not None}
    for wname, w in writes.items():
        for rname, r in reads.items():
            rel = relation(r, w)
            if rel is not None:
                raise PromptDistillError(f"{rname} ({r}) {_RELATION_WORDS[rel]} {wname} ({w}), which this command writes; "
                                         "writing it would destroy what the command reads: use separate paths")
    names = list(writes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            rel = relation(writes[a], writes[b])
            if rel is not None:
                raise PromptDistillError(f"{a} {_RELATION_WORDS[rel]} {b} ({writes[b]}); give them different paths", path=writes[a])


# -- input and output files ----------------------------------------------------

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


def check_output_file(path, what: str) -> Path:
    """A file the command writes: not a folder, its folder creatable, writable where it exists."""
    p = Path(path)
    if p.is_dir():
        raise PromptDistillError(f"{what} is a folder, expected a file path", path=p)
    check_parent_writable(p, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise PromptDistillError(f"{what} cannot be written (permission denied)", path=p)
    return p


def check_output_folder(path, what: str) -> bool:
    """A folder a command writes into: creatable where it is new, a folder this process
    may write in where it exists. Returns whether it exists; what it holds, and
    whether that is the tool's own to write over, is the caller's to judge (from a
    record the tool wrote, never from the folder's shape)."""
    p = Path(path)
    if not p.exists():
        check_parent_writable(p, what)
        return False
    if not p.is_dir():
        raise PromptDistillError(f"{what} exists and is a file, not a folder; choose another path", path=p)
    if not os.access(p, os.W_OK | os.X_OK):
        raise PromptDistillError(f"{what} cannot be written (permission denied)", path=p)
    return True


def claim_side_file(path, what: str, *, ours: bool, marker: str) -> Path:
    """A file written beside a command's output (a sidecar, rejects, a report, a
    lock): never a symlink or a folder, and an existing non-empty one only when
    it is the tool's own, which `ours` says from a marker the tool wrote
    (`marker` names it in the refusal), never from the file's shape."""
    p = Path(path)
    check_no_symlinks(p, what)
    if p.exists() and not p.is_file():
        raise PromptDistillError(f"{what} exists and is not a regular file; choose another --out", path=p)
    if p.is_file() and p.stat().st_size and not ours:
        raise PromptDistillError(f"{what} exists and was not written by promptdistill ({marker}); it would be replaced: "
                                 "move it or choose another --out", path=p)
    return p


def is_lock_file(path) -> bool:
    """A lock file as DirectoryLock leaves it: empty or the process id it wrote."""
    try:
        data = Path(path).read_bytes()[:32]
    except OSError:
        return False
    return data.strip() == b"" or (data.strip().isdigit() and len(data.strip()) <= 10)


def check_parent_writable(p: Path, what: str) -> None:
    """The nearest existing folder above `p` is a folder this process may create `p` in."""
    anc = real_path(p).parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise PromptDistillError(f"{what}: {anc} is a file, so no folder can be made there", path=p)
    if not os.access(anc, os.W_OK | os.X_OK):
        raise PromptDistillError(f"{what} cannot be written (no permission in {anc})", path=p)


# -- resuming what an earlier command left ----------------------------------------

def read_settings(path, *, key: str | None = None, corrupt: str) -> dict | None:
    """The settings recorded in `path` (the whole JSON object, or its `key`), None when
    there is no record; `corrupt` is what the error says to do when it cannot be read."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        obj = None
    if not isinstance(obj, dict):
        raise PromptDistillError(corrupt, path=path)
    settings = obj if key is None else obj.get(key)
    return settings if isinstance(settings, dict) else {}


def changed_settings(old: dict, new: dict) -> list[str]:
    """The keys whose values differ, both ways (a key only one side has is a change);
    nested tables are compared key by key and named `table.key`. Both sides are
    compared as JSON holds them (a tuple and the list it was stored as are equal)."""
    return _changed(json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str)), "")


def _changed(old: dict, new: dict, prefix: str) -> list[str]:
    changed = []
    for k in sorted(old.keys() | new.keys()):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed(a, b, f"{prefix}{k}.")
        elif a != b:
            changed.append(f"{prefix}{k}")
    return changed


def resume_or_refuse(stored: dict | None, settings: dict, *, force: bool, what: str, discards: str,
                     discard: Callable[[], None], path=None) -> list[str]:
    """Decide whether an earlier output made with `stored` settings may be continued
    under `settings`, the one rule of every resumable output: the same settings
    resume; different ones are refused with one line naming the keys that differ
    (`what` says whose settings, `discards` what --force does and the other way
    out), unless `force`, which calls `discard` to remove the old output. Nothing
    recorded (`stored` None) is nothing to compare: the caller decides. Returns
    the differing keys (empty when resumed)."""
    if stored is None:
        return []
    changed = changed_settings(stored, settings)
    if not changed:
        return []
    if not force:
        shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
        raise PromptDistillError(f"{what} with different settings ({shown}); --force discards {discards}", path=path)
    discard()
    return changed
