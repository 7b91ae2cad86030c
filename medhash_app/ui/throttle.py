"""Rate limit for progress updates, so worker threads never flood the GUI event loop.

Long jobs report progress per file or per step (thousands a second); the UI needs at most ten
repaints a second. `Throttle` decides whether an update may pass; `LatestThrottle` also keeps the
last value that was held back so a final `flush()` never loses the end state (e.g. 100 %).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

MAX_UPDATES_PER_SECOND = 10.0


class Throttle:
    """Lets a call through at most `max_per_second` times a second (the first one always passes)."""

    def __init__(self, max_per_second: float = MAX_UPDATES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_per_second <= 0:
            raise ValueError("max_per_second must be positive")
        self.interval = 1.0 / max_per_second
        self._clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        """True (and the time is recorded) when enough time has passed since the last pass."""
        now = self._clock()
        if self._last is None or now - self._last >= self.interval:
            self._last = now
            return True
        return False

    def reset(self) -> None:
        self._last = None


class LatestThrottle(Generic[T]):
    """Forwards values to `sink` through a `Throttle`; `flush()` delivers the last held-back value."""

    def __init__(self, sink: Callable[[T], None], max_per_second: float = MAX_UPDATES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._throttle = Throttle(max_per_second, clock)
        self._pending: tuple[T] | None = None

    def __call__(self, value: T) -> None:
        if self._throttle.ready():
            self._pending = None
            self._sink(value)
        else:
            self._pending = (value,)

    def flush(self) -> None:
        if self._pending is not None:
            value = self._pending[0]
            self._pending = None
            self._sink(value)
