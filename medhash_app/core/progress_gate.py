"""One throttle for progress reports from core jobs (ingest, library encoding): a GPU finishes a batch
in milliseconds, and the window's workers and the trainer tab read every report."""

from __future__ import annotations

import time


class ProgressGate:
    """`due()` is True at most every `interval_s` seconds; `due(force=True)` always (first/last reports)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last = float("-inf")

    def due(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self.last < self.interval_s:
            return False
        self.last = now
        return True
