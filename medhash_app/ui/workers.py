"""Run long jobs off the GUI thread and hand their progress and results back to it.

A job is a plain function `fn(progress, cancel) -> result`: `progress(value)` may be called from
the worker thread as often as the job likes (it is throttled to <= 10 updates a second before it
crosses threads) and `cancel` is a `threading.Event` the job polls. Results, errors and progress
arrive on the GUI thread as signals of the `JobHandle`, so slots may touch widgets directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal, Slot

from medhash_app.ui.throttle import LatestThrottle

log = logging.getLogger(__name__)

ProgressFn = Callable[[Any], None]
JobFn = Callable[[ProgressFn, threading.Event], Any]


class _Emitter(QObject):
    """Signals emitted from the worker thread; queued into the GUI thread by `JobHandle`."""

    progress = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)


class JobHandle(QObject):
    """The GUI-thread face of one job: connect to its signals, call `cancel()` to stop it.

    `finished` is emitted once after `succeeded`, `failed` or `cancelled`. By default a cancelled
    job's late result is dropped, so a newer search never gets overwritten by an older one; jobs
    whose partial result matters (an import stopped half-way) pass `keep_partial=True`.
    """

    progress = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, name: str, parent: QObject | None = None, keep_partial: bool = False) -> None:
        super().__init__(parent)
        self.name = name
        self.keep_partial = keep_partial
        self.cancel_event = threading.Event()
        self.done = False
        self.emitter = _Emitter()
        self.emitter.progress.connect(self._on_progress, Qt.ConnectionType.QueuedConnection)
        self.emitter.succeeded.connect(self._on_succeeded, Qt.ConnectionType.QueuedConnection)
        self.emitter.failed.connect(self._on_failed, Qt.ConnectionType.QueuedConnection)

    def cancel(self) -> None:
        """Ask the job to stop; its result (if it still comes) is ignored."""
        self.cancel_event.set()

    @property
    def is_cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @Slot(object)
    def _on_progress(self, value: object) -> None:
        if not self.done and not self.is_cancelled:
            self.progress.emit(value)

    @Slot(object)
    def _on_succeeded(self, value: object) -> None:
        if self.is_cancelled and not self.keep_partial:
            self._finish(self.cancelled.emit)
        else:
            self._finish(lambda: self.succeeded.emit(value))

    @Slot(object)
    def _on_failed(self, error: object) -> None:
        if self.is_cancelled:
            self._finish(self.cancelled.emit)
        else:
            self._finish(lambda: self.failed.emit(error))

    def _finish(self, emit: Callable[[], None]) -> None:
        if self.done:
            return
        self.done = True
        emit()
        self.finished.emit()


class _Runnable(QRunnable):
    def __init__(self, fn: JobFn, handle: JobHandle) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._fn = fn
        self._emitter = handle.emitter
        self._cancel = handle.cancel_event
        self._name = handle.name

    def run(self) -> None:
        throttled = LatestThrottle(self._emit_progress)
        try:
            result = self._fn(throttled, self._cancel)
        except BaseException as exc:  # every failure must reach the GUI, never kill the pool
            log.info("job %s failed: %s", self._name, exc, exc_info=not _is_user_error(exc))
            throttled.flush()
            self._deliver(self._emitter.failed, exc)
            return
        throttled.flush()
        self._deliver(self._emitter.succeeded, result)

    def _emit_progress(self, value: object) -> None:
        self._deliver(self._emitter.progress, value)

    def _deliver(self, signal: Any, value: object) -> None:
        try:
            signal.emit(value)
        except RuntimeError:  # the window closed while the job ran: nobody is listening any more
            log.debug("job %s finished after its receiver was deleted", self._name)


def _is_user_error(exc: BaseException) -> bool:
    from medhash_app.core.errors import MedHashError

    return isinstance(exc, MedHashError)


class JobRunner(QObject):
    """Starts jobs on a thread pool and keeps their handles alive until they finish."""

    def __init__(self, parent: QObject | None = None, max_threads: int | None = None) -> None:
        super().__init__(parent)
        self.pool = QThreadPool(self)
        if max_threads:
            self.pool.setMaxThreadCount(max_threads)
        self._live: set[JobHandle] = set()

    def start(self, name: str, fn: JobFn, keep_partial: bool = False) -> JobHandle:
        handle = JobHandle(name, self, keep_partial)
        self._live.add(handle)
        handle.finished.connect(lambda h=handle: self._live.discard(h))
        self.pool.start(_Runnable(fn, handle))
        return handle

    def active(self) -> list[JobHandle]:
        return [h for h in self._live if not h.done]

    def cancel_all(self) -> None:
        for handle in list(self._live):
            handle.cancel()

    def wait(self, msecs: int = -1) -> bool:
        """Block until every job has returned (used on close and in tests)."""
        return self.pool.waitForDone(msecs)
