"""Progress throttling: at most 10 updates a second reach the GUI, and the last one always does."""

from __future__ import annotations

import time

import pytest

from medhash_app.ui.throttle import LatestThrottle, Throttle
from medhash_app.ui.workers import JobRunner


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throttle_passes_at_most_ten_per_second() -> None:
    clock = FakeClock()
    throttle = Throttle(10, clock)
    passed = 0
    for _ in range(3000):  # 3000 calls spread over 3 simulated seconds
        passed += throttle.ready()
        clock.now += 0.001
    assert passed == 30


def test_throttle_first_call_passes_and_interval_is_respected() -> None:
    clock = FakeClock()
    throttle = Throttle(10, clock)
    assert throttle.ready()
    clock.now = 0.099
    assert not throttle.ready()
    clock.now = 0.1
    assert throttle.ready()


def test_latest_throttle_flush_delivers_the_held_back_value() -> None:
    clock = FakeClock()
    seen: list[int] = []
    latest = LatestThrottle(seen.append, 10, clock)
    for i in range(50):
        latest(i)
        clock.now += 0.001
    assert seen == [0]
    latest.flush()
    assert seen == [0, 49]
    latest.flush()
    assert seen == [0, 49]


def test_throttle_rejects_nonsense_rate() -> None:
    with pytest.raises(ValueError):
        Throttle(0)


def test_worker_progress_reaches_gui_at_most_ten_times_a_second(qtbot) -> None:
    """A job spamming 200k progress calls for ~0.6 s yields <= 10/s updates on the GUI thread,
    ending with its final value."""
    runner = JobRunner()
    received: list[int] = []

    def spam(progress, cancel):
        start, i = time.monotonic(), 0
        while time.monotonic() - start < 0.6:
            i += 1
            progress(i)
        return i

    job = runner.start("spam", spam)
    job.progress.connect(received.append)
    with qtbot.waitSignal(job.finished, timeout=10_000):
        pass
    qtbot.wait(50)
    assert runner.wait(5000)
    assert 2 <= len(received) <= 0.6 * 10 + 2
    assert received[-1] > 1000  # the last (flushed) value is the job's final count
    assert received == sorted(received)


def test_cancelled_job_result_is_dropped(qtbot) -> None:
    runner = JobRunner()
    results: list[object] = []

    def slow(progress, cancel):
        cancel.wait(2)
        return "late"

    job = runner.start("slow", slow)
    job.succeeded.connect(results.append)
    with qtbot.waitSignal(job.cancelled, timeout=5000):
        job.cancel()
    assert results == []
    assert runner.wait(5000)


def test_failed_job_reports_the_exception(qtbot) -> None:
    from medhash_app.core.errors import CorruptFileError

    runner = JobRunner()

    def bad(progress, cancel):
        raise CorruptFileError("x.dcm", "the pixel data is truncated")

    job = runner.start("bad", bad)
    with qtbot.waitSignal(job.failed, timeout=5000) as blocker:
        pass
    assert isinstance(blocker.args[0], CorruptFileError)
    assert runner.wait(5000)
