"""Progress reports that stay readable in a log.

On a terminal a tqdm bar redraws one line in place. Written to a file or a
CI log, every redraw is kept: carriage-return frames that make the log
megabytes long, or one endless line to a viewer that ignores carriage
returns. `progress_bar` returns the tqdm bar where it is drawn in place (a
terminal, a notebook) and elsewhere a `LogProgress`, which has the methods
the loops call (`update`, `set_postfix`, `close`, iteration, `with`) and
writes one plain line at most every `LOG_EVERY_S` seconds, and one when it
closes.
"""

from __future__ import annotations

import sys
import time

# Seconds between two lines of a progress report in a log.
LOG_EVERY_S = 10.0

_now = time.monotonic  # the clock LogProgress reads (tests replace it)


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, file=None):
    """A progress report of `total` steps (or of iterating `iterable`), written
    to `file` (stderr by default): a tqdm bar where the stream redraws in
    place, log lines (`LogProgress`) elsewhere; nothing with `disable`."""
    if not disable and _redraws_in_place(sys.stderr if file is None else file):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=file)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=file)


def _redraws_in_place(stream) -> bool:
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    # A Jupyter kernel's stream is no terminal, but tqdm.auto draws a widget there
    return type(stream).__module__.startswith("ipykernel")


class LogProgress:
    """Progress as plain lines: `desc: n/total (pct), rate, time left, postfix`,
    at most one per `LOG_EVERY_S` seconds of updates, and a last one on `close`."""

    def __init__(self, iterable=None, *, total=None, desc="", unit="it", initial=0, disable=False, file=None):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.disable = initial, disable
        self._initial, self._file, self._postfix, self._closed = initial, file, {}, False
        self._start = self._last = _now()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = _now()
        if now - self._last >= LOG_EVERY_S:
            self._last = now
            self._write(now, final=False)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        """Values shown at the end of each line (replacing the previous ones, as tqdm does)."""
        self._postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        """Write the last line (once, however often it is called)."""
        if not self._closed and not self.disable:
            self._write(_now(), final=True)
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def _write(self, now: float, final: bool) -> None:
        elapsed = now - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else None
        parts = [f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else str(self.n)]
        if final:
            finished = not self.total or self.n >= self.total
            parts.append(f"done in {_duration(elapsed)}" if finished else f"stopped after {_duration(elapsed)}")
        if rate is not None:
            parts.append(f"{rate:.3g} {self.unit}/s")
        if not final and rate and self.total:
            parts.append(f"{_duration(max(self.total - self.n, 0) / rate)} left")
        parts += [f"{k}={v}" for k, v in self._postfix.items()]
        line = (f"{self.desc}: " if self.desc else "") + ", ".join(parts)
        print(f"[promptdistill] {line}", file=sys.stderr if self._file is None else self._file, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
