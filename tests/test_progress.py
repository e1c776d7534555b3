"""Progress reports: a tqdm bar on a terminal, a few plain lines in a log."""

from __future__ import annotations

import io

import pytest

from promptdistill import progress
from promptdistill.progress import LogProgress, progress_bar


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture()
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress, "_now", fake)
    return fake


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_log_gets_a_bounded_number_of_plain_lines_and_a_final_one_with_the_total(clock):
    """10,000 updates over 100 simulated seconds: about one line per LOG_EVERY_S, no carriage returns."""
    out = io.StringIO()
    bar = progress_bar(total=10_000, desc="label (generate)", unit="input", file=out)
    assert isinstance(bar, LogProgress)
    for i in range(10_000):
        clock.t += 0.01
        bar.update(1)
        if i % 100 == 0:
            bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
    bar.close()
    bar.close()  # a second close (as the training loop may do) writes nothing more
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    got = lines(out)
    assert 100 / progress.LOG_EVERY_S <= len(got) <= 100 / progress.LOG_EVERY_S + 2, got
    assert all(line.startswith("[promptdistill] label (generate): ") for line in got)
    assert "input/s" in got[0] and "left" in got[0] and "loss=" in got[0]
    assert "10000/10000 (100%)" in got[-1] and "done in 1m40s" in got[-1] and "100 input/s" in got[-1], got[-1]


def test_many_fast_updates_on_the_real_clock_give_just_the_final_line():
    out = io.StringIO()
    with progress_bar(total=100_000, desc="train (kl)", unit="step", file=out) as bar:
        for _ in range(100_000):
            bar.update()
    assert len(lines(out)) == 1 and "100000/100000" in lines(out)[0]


def test_iterating_counts_the_items_and_ends_with_the_total(clock):
    out = io.StringIO()
    items = list(range(7))
    seen = []
    for item in progress_bar(items, desc="eval student", unit="input", file=out):
        clock.t += 30
        seen.append(item)
    assert seen == items
    got = lines(out)
    assert len(got) == 8 and "7/7 (100%)" in got[-1]  # one line per 30 s item, and the last and "done in 3m30s" in got[-1]


def test_a_resumed_run_counts_its_rate_from_where_it_started_and_a_stopped_one_says_so(clock):
    out = io.StringIO()
    bar = progress_bar(total=100, initial=40, unit="step", desc="train", file=out)
    clock.t += 10
    bar.update(20)
    bar.close()
    first, last = lines(out)
    assert "60/100 (60%)" in first and "2 step/s" in first and "20s left" in first
    assert "stopped after 10s" in last


def test_disabled_writes_nothing(clock):
    out = io.StringIO()
    bar = progress_bar(total=10, disable=True, file=out)
    for _ in range(10):
        clock.t += 60
        bar.update(1)
    bar.close()
    assert list(progress_bar([1, 2], disable=True, file=out)) == [1, 2]
    assert out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    from tqdm.auto import tqdm

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = progress_bar(total=3, desc="label", unit="input", file=out)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "3/3" in out.getvalue()
