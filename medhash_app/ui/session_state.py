"""The open library session, shared by the tabs; opened and refreshed off the GUI thread."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from medhash_app.ui.workers import JobHandle, JobRunner

log = logging.getLogger(__name__)


@dataclass
class SessionInfo:
    """What the status bar and the tabs show about the open library."""

    library_dir: Path | None = None
    device: str = ""
    case_count: int = 0
    model: dict[str, Any] | None = None

    @property
    def model_name(self) -> str:
        if not self.model:
            return "no model"
        return str(self.model.get("name") or self.model.get("id"))

    @property
    def model_bits(self) -> list[int]:
        bits = (self.model or {}).get("bits") or []
        if isinstance(bits, str):
            bits = [int(b) for b in bits.replace("[", "").replace("]", "").split(",") if b.strip()]
        return sorted(int(b) for b in bits)


def _open_session(path: Path, create: bool, device: str) -> Any:
    from medhash_app.core.session import MedHashSession

    return MedHashSession(path, create=create, device=device)


def _read_info(session: Any) -> SessionInfo:
    return SessionInfo(library_dir=Path(session.library.folder), device=str(session.device),
                       case_count=session.library.count_cases(), model=session.active_model())


def _close_quietly(session: Any) -> None:
    """Close a session; a failure is logged, never raised (closing must not block quitting)."""
    try:
        session.close()
    except Exception as exc:  # noqa: BLE001
        log.warning("closing a library failed: %s", exc)


class SessionState(QObject):
    """Owns the `MedHashSession`; `changed` fires when a library opens, closes or its info changes."""

    changed = Signal()
    opening = Signal(str)
    failed = Signal(object)
    preparing = Signal(str)  # a line for the status bar while the search's model and codes load, then done

    def __init__(self, runner: JobRunner, device: str = "auto", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.device = device
        self.session: Any = None
        self.info = SessionInfo()
        self._open_job: JobHandle | None = None

    @property
    def is_open(self) -> bool:
        return self.session is not None

    def open(self, path: Path, create: bool = False) -> JobHandle:
        """Open (or create) a library in the background; a newer open request wins."""
        if self._open_job is not None:
            self._open_job.cancel()
        path = Path(path)
        device = self.device
        self.opening.emit(str(path))

        def work(_progress, _cancel):
            session = _open_session(path, create, device)
            return session, _read_info(session)

        job = self.runner.start("open library", work, keep_partial=True)
        job.succeeded.connect(lambda value, j=job: self._on_open_done(j, value))
        job.failed.connect(self.failed.emit)
        self._open_job = job
        return job

    def _on_open_done(self, job: JobHandle, value: tuple[Any, SessionInfo]) -> None:
        if job is not self._open_job:  # a newer open request won; do not leak this connection
            _close_quietly(value[0])
            return
        self._on_opened(value)

    def set_session(self, session: Any) -> None:
        """Adopt an already-open session (the CLI's, or a test's)."""
        self._on_opened((session, _read_info(session)))

    def refresh(self) -> JobHandle | None:
        """Re-read case count and active model (after an import, a training or a model switch)."""
        session = self.session
        if session is None:
            return None
        job = self.runner.start("refresh info", lambda _p, _c: _read_info(session))
        job.succeeded.connect(self._on_info)
        return job

    def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            _close_quietly(session)
        self.info = SessionInfo()
        self.changed.emit()

    def _on_opened(self, value: tuple[Any, SessionInfo]) -> None:
        session, info = value
        old, self.session = self.session, session
        if old is not None and old is not session:
            _close_quietly(old)
        self.info = info
        self.changed.emit()
        self._prepare_search(session)

    def _prepare_search(self, session: Any) -> JobHandle | None:
        """Load the encoder and the codes in the background (session.warm_up), so the first drop after
        opening a library does not wait seconds for them; the status bar says so."""
        if info_model := self.info.model:
            self.preparing.emit(f"Preparing search: loading model “{info_model.get('name') or info_model.get('id')}” "
                                "and the library's codes…")
        else:
            return None
        started = time.perf_counter()
        job = self.runner.start("prepare search", lambda _p, _c: session.warm_up())
        job.succeeded.connect(lambda count, s=session: self._on_prepared(s, count, time.perf_counter() - started))
        job.failed.connect(lambda exc, s=session: self._on_prepared(s, None, 0.0, exc))
        return job

    def _on_prepared(self, session: Any, count: int | None, seconds: float, exc: BaseException | None = None) -> None:
        if session is not self.session:
            return  # another library opened meanwhile
        if exc is not None:
            log.warning("preparing search failed: %s", exc)
            self.preparing.emit("Search will load the model when it runs (preparing it failed).")
        else:
            self.preparing.emit(f"Search ready: model and {count:,} codes loaded in {seconds:.1f} s.")

    def _on_info(self, info: SessionInfo) -> None:
        if self.session is not None and info.library_dir == self.info.library_dir:
            self.info = info
            self.changed.emit()
