"""Small file helpers: atomic writes and durable JSONL appends.

A file the tool writes either appears whole or not at all: we write to a
temporary file in the same folder and `os.replace` it into place. Labeled
records are appended one line at a time and flushed, so an interrupted run
loses at most the record being written (a torn last line is ignored on read).

Results get the permissions any other program's files get: `mkstemp` and
`mkdtemp` create 0600 files and 0700 folders (private scratch space), and
safetensors writes its files 0600, so before a temporary file or folder is
renamed into place it (and all it holds) is given the mode the umask allows
(0666 / 0777 minus the umask), or, for a file that replaces another, the
mode the old file had. Otherwise an exported model
would be unreadable to the other accounts that serve it.

Which paths a command may write or replace at all is decided before any of
these run, by `outputs.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


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


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    if path.is_dir():
        from .errors import PromptDistillError

        raise PromptDistillError("is a folder, expected a file; choose another path", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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
    is theirs to replace (`outputs.claim_folder` for folders a user names).
    A file at `path` is never removed."""
    from .errors import PromptDistillError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PromptDistillError("exists and is a file, not a folder; choose another path", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    old = None
    try:
        yield tmp
        # mkdtemp made the folder 0700, and some writers (safetensors) make their files 0600.
        give_default_modes(tmp)
        if path.exists():
            # Move the old folder aside first, and back if the new one cannot take its place.
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            path.rename(old / "x")
            try:
                tmp.rename(path)
            except BaseException:
                (old / "x").rename(path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
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
    concern at the scale of one user's runs). `ensure_ascii=False` is how task
    fingerprints were always written; keeping it keeps existing label files valid."""
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_last_line(self.path)
        self._f = open(self.path, "a", encoding="utf-8")

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
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)


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

        from .errors import PromptDistillError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise PromptDistillError(f"another promptdistill process (pid {holder}) is writing {self.what}; wait for it or stop it",
                                     path=self.path.parent) from None
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
