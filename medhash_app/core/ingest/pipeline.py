"""`ingest`: sources -> content hash -> skip known -> decode + store files -> rows, one
transaction per batch (cases and their ingest-log lines together).

Order of writes keeps the library consistent whatever happens: a case's PNG and thumbnail are
written (atomically) before the transaction that adds its row, so a killed ingest leaves at worst
unreferenced files, and a row whose files went missing is repaired by the next ingest.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from medhash_app.core.errors import DatasetLayoutError, LibraryError, MedHashError
from medhash_app.core.ingest.decode import DecodeJob, Decoder, DecodeResult
from medhash_app.core.ingest.ingest_log import IngestLog, captured_warnings
from medhash_app.core.ingest.items import IngestItem, IngestProgress, IngestReport
from medhash_app.core.ingest.rows import DOMAINS, build_row, clean_report
from medhash_app.core.ingest.sources import iter_items
from medhash_app.core.input_files import open_input
from medhash_app.core.library import Library
from medhash_app.core.library.files import sweep_temp_files
from medhash_app.core.progress_gate import ProgressGate
from medhash_app.core.pseudonym import Pseudonymizer

ProgressCallback = Callable[[IngestProgress], None]
_MIN_EVENT_INTERVAL_S = 0.1  # at most 10 progress events per second
_HASH_THREADS = 4


def content_id(path: Path, frame: int | None = None) -> str:
    """Case id: the first 32 hex digits of the file's SHA-256, plus ":f<frame>" for a chosen frame.

    Only regular files up to MAX_INPUT_BYTES are read (input_files.open_input): a FIFO or a link
    to /dev/zero would otherwise be read forever."""
    with open_input(path) as handle:
        return _digest(handle, frame)


def _digest(handle: BinaryIO, frame: int | None) -> str:
    digest = hashlib.file_digest(handle, "sha256").hexdigest()[:32]
    return digest if frame is None else f"{digest}:f{frame}"


def _hash_item(item: IngestItem) -> tuple[str | None, str | None]:
    """(case id, None) or (None, reason)."""
    if item.problem:
        return None, item.problem
    try:
        with open_input(item.path) as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return None, "the file is empty (0 bytes)"
            return _digest(handle, item.metadata.get("frame")), None
    except MedHashError as exc:  # not a regular file, or over the size limit
        return None, exc.reason
    except FileNotFoundError:
        return None, "the file does not exist"
    except OSError as exc:
        return None, f"the file cannot be read ({exc.strerror or exc})"


def collect_items(paths: Iterable[str | Path], allowed_roots: Iterable[str | Path] = ()) -> list[IngestItem]:
    """Items of every path (each read by the source that recognises it), duplicates dropped.

    Only files inside the imported folder (or the folder of the imported manifest or DICOMDIR), or
    inside one of `allowed_roots`, are read, judged after resolving symbolic links and ".."; a file
    named directly is always read. Any other entry (a manifest row naming ../../x or /etc/shadow)
    becomes that entry's error, unopened."""
    allowed = [_allowed_root(Path(root)) for root in allowed_roots]
    seen: set[tuple[str, object]] = set()
    out: list[IngestItem] = []
    for path in paths:
        path = Path(path)
        root = path.resolve()
        root = root if root.is_dir() else root.parent
        for item in iter_items(path):
            problem = None if item.problem else outside_problem(item, path, [root, *allowed])
            if problem:
                item = IngestItem(item.path, problem=problem)
            key = (os.path.abspath(item.path), item.metadata.get("frame"))
            if key not in seen or item.problem:
                seen.add(key)
                out.append(item)
    return out


def _allowed_root(root: Path) -> Path:
    if not root.is_dir():
        raise DatasetLayoutError(root, "a folder allowed for files outside the import (--allow-outside) must be "
                                       "an existing folder")
    return root.resolve()


def outside_problem(item: IngestItem, named: Path, roots: Sequence[Path]) -> str | None:
    """Why `item` is not read (outside every root once links are resolved), or None."""
    if os.path.abspath(item.path) == os.path.abspath(named):
        return None  # the user named this very file
    try:
        real = Path(item.path).resolve()
    except (OSError, RuntimeError):
        return "its symbolic links cannot be resolved (a loop?), so whether it lies inside the import is unknown"
    if any(real.is_relative_to(root) for root in roots):
        return None
    row = item.metadata.get("row")
    who = f"row {row} of {named.name if named.is_file() else 'the manifest'} names" if row else "this entry is"
    return (f"{who} a file outside the folder being imported ({roots[0]}): it is {real} once links and '..' are "
            "resolved. Files outside are not read unless their folder is allowed (medhash ingest "
            "--allow-outside FOLDER)")


@dataclass
class _Throttle:
    callback: ProgressCallback | None
    started: float = field(default_factory=time.monotonic)
    gate: ProgressGate = field(default_factory=lambda: ProgressGate(_MIN_EVENT_INTERVAL_S))

    def emit(self, report: IngestReport, force: bool = False) -> None:
        if self.callback is None or not self.gate.due(force):
            return
        now = time.monotonic()
        done = report.added + report.skipped + len(report.failed) + report.repaired
        rate = done / max(now - self.started, 1e-6)
        self.callback(IngestProgress(done, report.total, report.added, report.skipped, len(report.failed), rate))


@dataclass
class _Run:
    """State of one ingest call across its batches."""

    library: Library
    domain: str | None
    report: IngestReport
    outcome: dict[str, str | None] = field(default_factory=dict)  # case id -> None ok | failure reason
    logs: list[dict[str, object]] = field(default_factory=list)
    pseudonyms: Pseudonymizer | None = None
    log_file: IngestLog | None = None

    def __post_init__(self) -> None:
        self.log_file = IngestLog(self.library.folder, self.report.batch_id)
        self.pseudonyms = self.library.pseudonyms
        notice = self.library.claim_key()
        if notice:
            self.report.notices.append(notice)

    def log(self, item: IngestItem, case_id: str | None, status: str, reason: str | None = None) -> None:
        self.logs.append({"path": str(item.path), "content_hash": case_id, "status": status, "reason": reason,
                          "batch_id": self.report.batch_id})
        if status == "error":
            self.report.failed.append((str(item.path), reason or "unknown error"))
        elif status == "skipped":
            self.report.skipped += 1

    def batch(self, items: Sequence[IngestItem], decoder: Decoder, hasher: ThreadPoolExecutor) -> None:
        """Hash, skip what is known, decode the rest, then commit rows and log lines together."""
        hashed = list(hasher.map(_hash_item, items))
        known = self.library.known_hashes(cid for cid, _ in hashed if cid)
        broken = self.library.cases_missing_files(known) if known else set()
        todo, duplicates = self._classify(items, hashed, known - broken)
        results = decoder.run([job for _, job in todo])
        rows = [row for (item, _), res in zip(todo, results, strict=True)
                if (row := self._row(item, res, res.case_id in broken)) is not None]
        for item, cid in duplicates:  # after decoding: a copy of a failed file fails the same way
            failure = self.outcome[cid]
            self.log(item, cid, "error" if failure else "skipped",
                     failure or "same content as another file in this ingest")
        added = self.library.write_batch(rows, self.logs)
        self.report.added += added
        self.report.repaired += len(rows) - added
        self.logs = []

    def _classify(self, items: Sequence[IngestItem], hashed: list[tuple[str | None, str | None]],
                  complete: set[str]) -> tuple[list[tuple[IngestItem, DecodeJob]], list[tuple[IngestItem, str]]]:
        """(items to decode, copies of items seen earlier in this run); logs failures and skips."""
        todo: list[tuple[IngestItem, DecodeJob]] = []
        duplicates: list[tuple[IngestItem, str]] = []
        for item, (cid, reason) in zip(items, hashed, strict=True):
            if cid is None:
                self.log(item, None, "error", reason)
            elif cid in self.outcome:
                duplicates.append((item, cid))
            elif cid in complete:
                self.log(item, cid, "skipped", "already in the library")
            else:
                self.outcome[cid] = None
                todo.append((item, DecodeJob(str(item.path), cid, item.metadata.get("frame"), self.pseudonyms.salt,
                                             str(self.library.folder), self.pseudonyms.key)))
        return todo, duplicates

    def _row(self, item: IngestItem, result: DecodeResult, repair: bool) -> dict[str, object] | None:
        if result.library_problem:
            raise LibraryError(self.library.folder, result.library_problem)
        self.log_file.write(result.case_id, "warning", result.warnings)
        if result.detail:
            self.log_file.write(result.case_id, "failed", [f"{result.reason} [{result.detail}]"])
        if result.reason:
            self.outcome[result.case_id] = result.reason
            self.log(item, result.case_id, "error", result.reason)
            return None
        notes = ["repaired: the stored image files were missing"] if repair else []
        if item.report is not None and clean_report(item.report) is None:
            notes.append("the report is empty; stored without one")
        self.log(item, result.case_id, "ok", "; ".join(notes) or None)
        return build_row(item, result, domain=self.domain, pseudonyms=self.pseudonyms)


def ingest(paths: Sequence[str | Path], library: Library, *, domain: str | None = None,
           progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
           batch_size: int = 64, workers: int | None = None,
           allowed_roots: Sequence[str | Path] = ()) -> IngestReport:
    """Add the images under `paths` to `library`; re-running skips what is already there.

    `domain` ("chest", "fundus" or "other") overrides detection. A bad file is logged with its
    reason and the rest goes on; `cancel` stops cleanly between batches. Files are read only from
    inside the imported folders (links resolved) or `allowed_roots` (see collect_items). Raises
    DatasetLayoutError for an unreadable layout (before anything is written) and LibraryError when
    the library cannot be written (the current batch is rolled back).
    """
    _check_writable(library, domain)
    with captured_warnings() as finding:  # sniffing files for DICOM content warns too
        items = collect_items(paths, allowed_roots)
    return ingest_items(items, library, domain=domain, progress=progress, cancel=cancel, batch_size=batch_size,
                        workers=workers, finding=finding)


def _check_writable(library: Library, domain: str | None) -> None:
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, not {domain!r}")
    if library.read_only:
        raise LibraryError(library.folder, "the library is open read-only; open it for writing to ingest")


def ingest_items(items: Sequence[IngestItem], library: Library, *, domain: str | None = None,
                 progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                 batch_size: int = 64, workers: int | None = None, decoder: Decoder | None = None,
                 finding: Sequence[str] = ()) -> IngestReport:
    """`ingest` of items a caller already has (the PACS receiver's files, with their origin in
    `metadata["extra"]`): the same hashing, de-duplication, decode and one transaction per batch.
    `decoder` lets a long-running caller keep one pool of decode workers across calls."""
    _check_writable(library, domain)
    report = IngestReport(batch_id=uuid.uuid4().hex, total=len(items))
    withheld = sorted({str(c) for item in items for c in item.metadata.get("withheld") or ()})
    if withheld:
        report.notices.append(f"not stored because they identify patients: the column(s) {', '.join(withheld)} "
                              "(a patient id or MRN only becomes the keyed patient key)")
    run, throttle = _Run(library, domain, report), _Throttle(progress)
    throttle.emit(report, force=True)  # "0 of N": the total is known before the first batch is done
    throttle.gate.last = float("-inf")  # ... and the first batch still reports at once
    run.log_file.write(None, "warning", list(finding))
    sweep_temp_files(library.folder)
    with (nullcontext(decoder) if decoder else Decoder(workers)) as pool, ThreadPoolExecutor(_HASH_THREADS) as hasher:
        for start in range(0, len(items), max(1, batch_size)):
            if cancel is not None and cancel.is_set():
                report.cancelled = True
                break
            run.batch(items[start:start + batch_size], pool, hasher)
            throttle.emit(report)
    report.decoder_warnings = run.log_file.warnings
    report.log_file = str(run.log_file.path) if run.log_file.path.exists() else None
    throttle.emit(report, force=True)
    return report
