"""Instances that arrive over the network become cases here, and only here.

Each instance is written atomically (temp name, then rename) to `<library>/received/<aa>/<hash>.dcm`,
named by its content hash (no UID or name in the file name), then ingested through the same
pipeline as a file on disk (core/ingest: same decode, same errors, same de-duplication). Only after
the ingest transaction committed is the instance reported as stored; a refused instance leaves no
row, no stored image and no received file. The received file stays: it is the case's original
(`source_path`) that the viewer opens, and the one place that still holds the real Study, Series
and SOP Instance UIDs (the library keeps only keyed pseudonyms of them, docs/pacs.md).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medhash_app.core.ingest.decode import Decoder
from medhash_app.core.ingest.items import IngestItem
from medhash_app.core.ingest.pipeline import ingest_items
from medhash_app.core.library import Library, atomic_write

RECEIVED_DIR = "received"
_HASH_HEX = 32  # the pipeline's case id: the first 32 hex digits of the file's SHA-256
SWEEP_AFTER_S = 600.0  # as the library's own temp-file sweep


@dataclass(frozen=True)
class Received:
    """What became of one instance: `status` "added", "duplicate" (already a case: stored, nothing
    new) or "failed" (refused; `reason` says why in the ingest's words)."""

    status: str
    case_id: str | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


class ReceivedStore:
    """Stores instances into one open library, one at a time (a lock: the listener serves several
    associations on their own threads). `decoder` is kept across instances so a listener starts its
    decode workers once; None decodes inline."""

    def __init__(self, library: Library, decoder: Decoder | None = None) -> None:
        self.library = library
        self.decoder = decoder or Decoder(1)
        self._lock = threading.Lock()
        self.sweep()

    @property
    def folder(self) -> Path:
        return self.library.folder / RECEIVED_DIR

    def path_for(self, data: bytes) -> tuple[str, Path]:
        digest = hashlib.sha256(data).hexdigest()[:_HASH_HEX]
        return digest, self.folder / digest[:2] / f"{digest}.dcm"

    def store(self, data: bytes, origin: dict[str, Any]) -> Received:
        """Write, ingest, and say what happened. `origin` (how it came: "via", the calling AE or the
        server URL; nothing identifying) goes into the case's `extra["pacs"]`. Raises LibraryError
        when the library cannot be written (the received file is removed again)."""
        case_id, path = self.path_for(data)
        with self._lock:
            self.folder.mkdir(mode=0o700, exist_ok=True)
            atomic_write(path, data)
            try:
                report = ingest_items([IngestItem(path, metadata={"extra": {"pacs": dict(origin)}})],
                                      self.library, decoder=self.decoder, batch_size=1)
            except BaseException:
                self._discard(path, case_id)
                raise
            if report.failed:
                self._discard(path, case_id)
                return Received("failed", None, report.failed[0][1])
            if report.added or report.repaired:
                return Received("added", case_id)
            self._discard(path, case_id)  # the same content came before (from disk or the network)
            return Received("duplicate", case_id)

    def sweep(self, older_than_s: float = SWEEP_AFTER_S) -> int:
        """Remove what a killed receiver left: temp files, and received files no case points at
        (written, then the process died before the ingest committed). Only files older than
        `older_than_s`, so another process's instance in flight is left alone."""
        if not self.folder.is_dir():
            return 0
        cutoff, removed = time.time() - older_than_s, 0
        old = [p for p in self.folder.glob("*/*") if p.is_file() and p.stat().st_mtime < cutoff]
        stems = {p.stem: p for p in old if p.suffix == ".dcm"}
        kept = {os.path.abspath(c["source_path"]) for c in self.library.get_cases(list(stems))}
        for path in old:
            if path.name.startswith(".") or os.path.abspath(path) not in kept:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _discard(self, path: Path, case_id: str) -> None:
        """Remove a received file unless a case already points at it."""
        case = self.library.get_case(case_id)
        if case is None or os.path.abspath(case["source_path"]) != os.path.abspath(path):
            path.unlink(missing_ok=True)
