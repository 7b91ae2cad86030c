"""`medhash archive publish`: a library's cases, de-identified, and its active model's codes into the archive.

- Idempotent: a case is keyed by `content_key` (SHA-256 of the archive's salt and the library's
  content hash); a case or code already there is skipped (unique keys + ON CONFLICT DO NOTHING).
- Resumable: each batch is one transaction (COPY into session temp tables, then INSERT ... SELECT),
  so a killed publisher leaves whole batches only, and running it again adds the rest.
- Concurrent: several workstations may publish at once; the unique keys make a race end in one row,
  and a batch that deadlocks with another publisher's (same cases in another order) is retried.
- Ties: cases enter in library order (seq), so the archive's ids keep one publisher's order and an
  archive search breaks ties the way that library's FAISS search does.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import errors
from psycopg.types.json import Jsonb

from medhash_app.core.archive.connection import ArchiveError, connect, describe_target
from medhash_app.core.archive.models import register_model
from medhash_app.core.archive.schema import require_archive
from medhash_app.core.export import MAX_DATE_SHIFT_DAYS, clean_thumbnail, deidentified_case
from medhash_app.core.library import Library

BATCH = 1000
RETRIES = 5
_BYTE_BITS = [format(i, "08b") for i in range(256)]
CASE_FIELDS = ("content_key", "case_key", "patient_key", "study_uid", "instance_uid", "report", "labels",
               "label_source", "domain", "modality", "view", "laterality", "body_part", "sex", "age",
               "study_date", "split", "extra", "thumbnail")
_CASE_TYPES = ("integer", *(["text"] * 6), "text[]", *(["text"] * 7), "integer", "date", "text", "jsonb", "bytea")
_STAGE = f"""
CREATE TEMP TABLE IF NOT EXISTS stage_cases (ord integer, {', '.join(
    f'{name} {kind}' for name, kind in zip(CASE_FIELDS, _CASE_TYPES[1:], strict=True))}) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_codes (content_key text, modality text, bits integer, code bit varying)
    ON COMMIT DELETE ROWS;
"""
Progress = Callable[[int, int], None]


@dataclass
class PublishReport:
    archive: str
    model_id: int | None = None  # the archive's id of the published model
    cases_seen: int = 0
    cases_added: int = 0
    codes_added: int = 0
    batches: int = 0
    retried: int = 0
    cancelled: bool = False
    seconds: float = 0.0
    code_sets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bit_string(packed: np.ndarray) -> str:
    """Packed uint8 code -> '0101…' (most significant bit first, as np.unpackbits and FAISS read it)."""
    return "".join(map(_BYTE_BITS.__getitem__, packed.tobytes()))


def content_key(salt: str, content_hash: str) -> str:
    return hashlib.sha256(f"{salt}\0{content_hash}".encode()).hexdigest()


def date_shift_days(library: Library, salt: str) -> int:
    """One offset per (workstation key, archive), in ±MAX_DATE_SHIFT_DAYS: the same on every run, so a
    resumed publish shifts like the first one and intervals between a patient's studies are kept."""
    value = int(library.pseudonyms.export_id("archive-date-shift", "days", salt.encode(), 16), 16)
    return value % (2 * MAX_DATE_SHIFT_DAYS + 1) - MAX_DATE_SHIFT_DAYS


class _Codes:
    """The model's codes per (modality, bits), looked up by library case id."""

    def __init__(self, library: Library, model: dict[str, Any] | None) -> None:
        self.sets: dict[tuple[str, int], tuple[dict[str, int], np.ndarray]] = {}
        if model is None:
            return
        for modality in ("image", "text"):
            for bits in sorted(int(b) for b in model["bits"]):
                stored = library.load_codes(int(model["id"]), modality, bits)
                if len(stored.ids):
                    self.sets[(modality, bits)] = ({str(c): i for i, c in enumerate(stored.ids)}, stored.codes)

    def rows(self, case_id: str, key: str, have: set[tuple[str, int]]) -> Iterator[tuple[str, str, int, str]]:
        for (modality, bits), (where, codes) in self.sets.items():
            row = where.get(case_id)
            if row is not None and (modality, bits) not in have:
                yield key, modality, bits, bit_string(codes[row])


def publish_library(library: Library, target: str, *, model_id: int | None = None, batch: int = BATCH,
                    with_weights: bool = False, progress: Progress | None = None,
                    cancel: threading.Event | None = None) -> PublishReport:
    """Publish every case of `library` (and the codes of its active or chosen model) to the archive."""
    t0 = time.perf_counter()
    report = PublishReport(describe_target(target))
    model = library.get_model(model_id) if model_id is not None else library.active_model()
    if model_id is not None and model is None:
        raise ArchiveError(f"model {model_id}", "no such model in this library")
    with connect(target, autocommit=True) as conn:
        require_archive(conn, report.archive)
        salt = _salt(conn, report.archive)
        report.model_id = register_model(conn, model, with_weights=with_weights) if model else None
        codes = _Codes(library, model)
        report.code_sets = [f"{m}-{b}" for m, b in codes.sets]
        conn.execute(_STAGE)
        days, total = date_shift_days(library, salt), library.count_cases()
        pending: list[dict[str, Any]] = []
        for case in library.iter_cases():
            pending.append(case)
            if len(pending) >= batch:
                _publish_batch(conn, library, pending, salt, days, codes, report)
                pending = []
                if progress:
                    progress(report.cases_seen, total)
                if cancel is not None and cancel.is_set():
                    report.cancelled = True
                    break
        if pending and not report.cancelled:
            _publish_batch(conn, library, pending, salt, days, codes, report)
            if progress:
                progress(report.cases_seen, total)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _salt(conn: psycopg.Connection, where: str) -> str:
    try:
        row = conn.execute("SELECT value FROM medhash.archive_secret WHERE key = 'salt'").fetchone()
    except errors.InsufficientPrivilege:
        raise ArchiveError(where, "this account may not publish (it lacks the medhash_writer role)") from None
    if row is None:
        raise ArchiveError(where, "the archive has no salt; run `medhash archive init` again")
    return str(row[0])


def _publish_batch(conn: psycopg.Connection, library: Library, cases: Sequence[dict[str, Any]], salt: str,
                   days: int, codes: _Codes, report: PublishReport) -> None:
    keys = [content_key(salt, c["id"]) for c in cases]
    known = dict(conn.execute("SELECT content_key, id FROM medhash.cases WHERE content_key = ANY(%s)",
                              [keys]).fetchall())
    have: dict[int, set[tuple[str, int]]] = {}
    if known and report.model_id is not None:
        for case_id, modality, bits in conn.execute(
                "SELECT case_id, modality, bits FROM medhash.codes WHERE model_id = %s AND case_id = ANY(%s)",
                [report.model_id, list(known.values())]):
            have.setdefault(case_id, set()).add((modality, bits))
    # the look-ups above only save work (thumbnails not read again); the unique keys below decide
    new_cases = [(i, c, k) for i, (c, k) in enumerate(zip(cases, keys, strict=True)) if k not in known]
    case_rows = [_case_row(library, i, c, k, salt, days) for i, c, k in new_cases]
    code_rows = [row for c, k in zip(cases, keys, strict=True)
                 for row in codes.rows(c["id"], k, have.get(known.get(k, -1), set()))]
    for attempt in range(RETRIES):
        try:
            added, coded = _write(conn, case_rows, code_rows, report.model_id)
            break
        except (errors.DeadlockDetected, errors.SerializationFailure):
            report.retried += 1
            time.sleep(0.05 * (attempt + 1))
    else:
        raise ArchiveError(report.archive, f"a batch kept colliding with other publishers ({RETRIES} tries); "
                           "run publish again to add the rest")
    report.cases_seen += len(cases)
    report.cases_added += added
    report.codes_added += coded
    report.batches += 1


def _case_row(library: Library, order: int, case: dict[str, Any], key: str, salt: str, days: int) -> tuple:
    line = deidentified_case(library.pseudonyms, case, salt.encode(), days)
    thumb = clean_thumbnail(library.path_of(case["thumb_path"])) if case.get("thumb_path") else None
    values = {**line, "content_key": key, "case_key": line["case"], "patient_key": line["patient"],
              "extra": Jsonb(line["extra"]), "thumbnail": thumb}
    return (order, *(values.get(name) for name in CASE_FIELDS))


def _write(conn: psycopg.Connection, case_rows: list[tuple], code_rows: list[tuple], model_id: int | None
           ) -> tuple[int, int]:
    """One transaction: stage by COPY, insert what is not there yet, bump the code versions."""
    added = coded = 0
    with conn.transaction(), conn.cursor() as cur:
        if case_rows:
            with cur.copy(f"COPY stage_cases (ord, {', '.join(CASE_FIELDS)}) FROM STDIN") as copy:
                copy.set_types(list(_CASE_TYPES))
                for row in case_rows:
                    copy.write_row(row)
            cur.execute(f"INSERT INTO medhash.cases ({', '.join(CASE_FIELDS)}) SELECT {', '.join(CASE_FIELDS)} "
                        "FROM stage_cases ORDER BY ord ON CONFLICT DO NOTHING")
            added = max(cur.rowcount, 0)
        if code_rows and model_id is not None:
            with cur.copy("COPY stage_codes (content_key, modality, bits, code) FROM STDIN") as copy:
                for row in code_rows:
                    copy.write_row(row)
            cur.execute("INSERT INTO medhash.codes (model_id, modality, bits, case_id, code) "
                        "SELECT %s, s.modality, s.bits, c.id, s.code FROM stage_codes s "
                        "JOIN medhash.cases c ON c.content_key = s.content_key ORDER BY c.id "
                        "ON CONFLICT DO NOTHING RETURNING modality, bits", [model_id])
            inserted = cur.fetchall()
            coded = len(inserted)
            changed = set(inserted)
            for modality, bits in sorted(changed):
                cur.execute("INSERT INTO medhash.code_versions AS v (model_id, modality, bits, version) "
                            "VALUES (%s, %s, %s, 1) ON CONFLICT (model_id, modality, bits) "
                            "DO UPDATE SET version = v.version + 1", [model_id, modality, bits])
    return added, coded
