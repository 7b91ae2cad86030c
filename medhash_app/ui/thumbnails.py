"""Background thumbnail loading for the result views.

Views ask the model for a row's picture only when the row is painted, so the model asks this
loader only for visible rows. Requests are served newest first (the rows the user is looking at
now), duplicates are merged, and a new result list drops everything still queued.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal
from PySide6.QtGui import QImage

log = logging.getLogger(__name__)

ThumbFetch = Callable[[dict[str, Any]], "bytes | QImage | None"]


def decode_thumbnail(data: bytes | QImage | None) -> QImage | None:
    if data is None:
        return None
    if isinstance(data, QImage):
        return data
    image = QImage()
    return image if image.loadFromData(bytes(data)) else None


class ThumbnailLoader(QThread):
    """Loads thumbnails with `fetch(case)` on its own thread; emits `loaded(case_id, QImage)`."""

    loaded = Signal(str, QImage)
    missing = Signal(str)

    def __init__(self, fetch: ThumbFetch | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._fetch = fetch
        self._queue: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cond = threading.Condition()
        self._stopping = False
        self.requested: list[str] = []  # every id ever requested, in order (for tests and stats)

    def set_fetch(self, fetch: ThumbFetch | None) -> None:
        with self._cond:
            self._fetch = fetch
            self._queue.clear()

    def request(self, case: dict[str, Any]) -> None:
        case_id = str(case.get("id"))
        with self._cond:
            if case_id in self._queue:
                self._queue.move_to_end(case_id)
            else:
                self._queue[case_id] = case
                self.requested.append(case_id)
            self._cond.notify()
        if not self.isRunning() and not self._stopping:
            self.start(QThread.Priority.LowPriority)

    def pending(self) -> int:
        """Requests not served yet."""
        with self._cond:
            return len(self._queue)

    def clear(self) -> None:
        with self._cond:
            self._queue.clear()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._cond.notify_all()
        self.wait(5000)

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                case_id, case = self._queue.popitem(last=True)  # newest request first
                fetch = self._fetch
            image = self._load(fetch, case)
            if image is None:
                self.missing.emit(case_id)
            else:
                self.loaded.emit(case_id, image)

    @staticmethod
    def _load(fetch: ThumbFetch | None, case: dict[str, Any]) -> QImage | None:
        if fetch is None:
            return None
        try:
            return decode_thumbnail(fetch(case))
        except Exception as exc:  # noqa: BLE001 - a missing thumbnail must never break the list
            log.debug("thumbnail for %s not loaded: %s", case.get("id"), exc)
            return None
