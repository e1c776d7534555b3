"""Small file helpers: atomic writes and durable JSONL appends.

A file the tool writes either appears whole or not at all: we write to a
temporary file in the same folder and `os.replace` it into place. Labeled
records are appended one line at a time and flushed, so an interrupted run
loses at most the record being written (a torn last line is ignored on read).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_directory(path):
    """Yield a temporary folder beside `path`; when the block succeeds it
    replaces `path`, otherwise it is removed. Readers see the old folder or
    the whole new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
