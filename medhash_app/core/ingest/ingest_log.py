"""Decoder warnings and failure details of an import: into `<library>/logs/ingest.log`, not the terminal.

pydicom warns (and logs) once per odd value it meets, and a real archive has many: one import printed
hundreds of lines on stderr, drowning the summary. Warnings are captured around each file's decode
(in the worker process that decodes it) and written here, one line each, naming the file by its case
id (content hash), never by path, with quoted values and long tokens removed (`phi.redact`): pydicom
quotes the offending value, which may be a name or a UID. Failure details (the exception behind a
plain-words reason) go here the same way, for whoever debugs a decoder.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medhash_app.core.phi import redact

LOG_REL_PATH = "logs/ingest.log"
MAX_LOG_BYTES = 10 * 1024**2  # then the log moves to ingest.log.1 (one old generation kept)
MAX_LINES_PER_FILE = 20
_LOGGERS = ("pydicom",)


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(redact(record.getMessage()))


@contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Collect the warnings and decoder log records raised inside (redacted, de-duplicated, at most
    MAX_LINES_PER_FILE plus a count) instead of letting them reach stderr. The list is complete when
    the block ends. Not for concurrent use from several threads (warnings filters are global)."""
    lines: list[str] = []
    raw: list[str] = []
    handler = _Collect(raw)
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    propagate = [logger.propagate for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False  # an app that logs to a file and stderr (the UI) must not get them either
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield lines
    finally:
        for logger, before in zip(loggers, propagate, strict=True):
            logger.removeHandler(handler)
            logger.propagate = before
    warned = [redact(w.message) for w in caught]
    seen = set(warned)  # pydicom's warn_and_log sends each message both ways: keep one
    lines.extend(_dedupe([*warned, *(line for line in raw if line not in seen)]))


def _dedupe(raw: Iterable[str]) -> list[str]:
    counts: dict[str, int] = {}
    for line in raw:
        counts[line] = counts.get(line, 0) + 1
    out = [line if n == 1 else f"{line} (x{n})" for line, n in counts.items()]
    if len(out) > MAX_LINES_PER_FILE:
        out = [*out[:MAX_LINES_PER_FILE], f"... and {len(out) - MAX_LINES_PER_FILE} more kinds of warning"]
    return out


def failure_detail(exc: BaseException) -> str:
    """The exception behind a failure (its __cause__ when it is a MedHashError), redacted, one line."""
    cause = exc.__cause__ if hasattr(exc, "reason") and exc.__cause__ is not None else exc
    return f"{type(cause).__name__}: {redact(cause)}"


class IngestLog:
    """Appends lines to `<library>/logs/ingest.log`; counts the warnings written."""

    def __init__(self, library_folder: Path, batch_id: str) -> None:
        self.path = Path(library_folder) / LOG_REL_PATH
        self.batch = batch_id[:12]
        self.warnings = 0
        self._opened = False

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.path.stat().st_size > MAX_LOG_BYTES:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass
        self._opened = True

    def write(self, case_id: str | None, kind: str, lines: Iterable[str]) -> None:
        """`kind` "warning" (counted) or "failed"; `case_id` None for work not tied to one file."""
        lines = list(lines)
        if not lines:
            return
        try:
            if not self._opened:
                self._open()
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            who = f"case={case_id[:32]}" if case_id else "case=-"
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.writelines(f"{stamp} batch={self.batch} {who} {kind}: {line}\n" for line in lines)
        except OSError:
            return  # the log is a convenience: a read-only logs/ folder must not fail the import
        if kind == "warning":
            self.warnings += len(lines)
