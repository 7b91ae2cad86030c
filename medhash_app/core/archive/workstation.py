"""The archive as the desktop searches it: one open connection, the workstation's mirror kept loaded,
and a search that takes the window's SearchQuery and returns the window's SearchResult.

The query is encoded by the open library's active model (its loaded encoder, no second copy), which
must be the checkpoint published to the archive, as `medhash archive search` requires; with no library
open, by the archive's own published checkpoint (core/archive/model_cache.py), fetched once to this
workstation's cache and kept loaded. Every server
or network failure becomes one ArchiveError line; the connection is then dropped and the next call
connects again, so a server that comes back is used without reopening anything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from medhash_app.core.archive.connection import ArchiveError, connect, describe_target, to_conninfo
from medhash_app.core.archive.connection import _first_line as first_line
from medhash_app.core.archive.mirror import ArchiveMirror
from medhash_app.core.archive.model_cache import ArchiveModel, choose_model, fetch_checkpoint
from medhash_app.core.archive.models import find_model
from medhash_app.core.archive.query import encode_query, targets_for
from medhash_app.core.archive.schema import require_archive
from medhash_app.core.archive.search import ArchiveHit, ArchiveSearch, stored_recall
from medhash_app.core.search.types import Hit, SearchQuery, SearchResult

if TYPE_CHECKING:
    from medhash_app.core.encoder.service import EncoderService
    from medhash_app.core.session import MedHashSession

T = TypeVar("T")


@dataclass(frozen=True)
class ArchiveInfo:
    """What the window shows once an archive is open."""

    label: str  # the target without user info or query string
    cases: int
    model_id: int | None  # the archive's id of the model that encodes queries (None: not published)
    encoded_by: str = "the library's model"  # or "archive model 3 (name)" on a workstation without a library
    recall: list[dict[str, Any]] = field(default_factory=list)  # measured HNSW recall of that model


@dataclass(frozen=True)
class ArchiveAnswer:
    result: SearchResult  # hits carry the archive's cases (case["id"] = archive case id)
    answered_by: str  # "mirror", "server", "server (mirror stale or absent)", ...
    mode: str  # "exact" or "hnsw"
    recall: dict[str, dict[str, Any] | None] | None  # per searched modality, approximate searches only
    archive_model_id: int


class ArchiveClient:
    """An archive opened by one workstation; safe to call from worker threads (one call at a time)."""

    def __init__(self, target: str, mirror_folder: Path | None = None, model_cache: Path | None = None) -> None:
        """`model_cache`: where the archive's checkpoint is kept when no library encodes (default: the
        user's cache folder)."""
        to_conninfo(target)  # refuses a malformed target or one with a password before anything is kept
        self.target = target
        self.label = describe_target(target)
        self.mirror_folder = mirror_folder
        self.model_cache = model_cache
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._mirror: ArchiveMirror | None = None
        self._own: tuple[ArchiveModel, EncoderService] | None = None  # the archive's model, without a library

    def open(self, session: MedHashSession | None = None) -> ArchiveInfo:
        """Connect, check it is an archive, and say how big it is and whether the library's model is there."""
        with self._lock:
            return self._guarded(lambda conn: self._info(conn, session))

    def search(self, session: MedHashSession | None, query: SearchQuery, *, approximate: bool = False,
               ef_search: int = 200) -> ArchiveAnswer:
        """Rank archive cases for a query encoded by the session's active model, or without a session by
        the archive's own published model (exact by default)."""
        with self._lock:
            return self._guarded(lambda conn: self._search(conn, session, query, approximate, ef_search))

    def refresh_mirror(self, session: MedHashSession | None) -> int:
        """Download the active model's code sets into the mirror folder (only those that changed)."""
        if self.mirror_folder is None:
            raise ArchiveError(self.label, "no mirror folder was chosen for this archive")
        with self._lock:
            def work(conn: psycopg.Connection) -> int:
                model_id = self._model_id(conn, session)
                mirror = self._mirror_for(conn)
                sets = ArchiveSearch(conn).code_sets(model_id)
                return sum(mirror.refresh(model_id, modality, bits) for modality, bits, _ in sets)
            return self._guarded(work)

    def thumbnail(self, case_id: int) -> bytes | None:
        """The published (metadata-free) thumbnail of an archive case, or None."""
        with self._lock:
            row = self._guarded(lambda conn: conn.execute("SELECT thumbnail FROM medhash.cases WHERE id = %s",
                                                          [int(case_id)]).fetchone())
        return None if row is None or row[0] is None else bytes(row[0])

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- internals --------------------------------------------------------------------------
    def _guarded(self, work: Callable[[psycopg.Connection], T]) -> T:
        """Run `work` on the open connection; a server failure becomes one line and drops the connection."""
        try:
            if self._conn is None or self._conn.closed:
                self._drop()
                self._conn = connect(self.target, autocommit=True)
                require_archive(self._conn, self.label)
            return work(self._conn)
        except ArchiveError:
            if self._conn is not None and self._conn.broken:
                self._drop()
            raise
        except psycopg.Error as exc:
            self._drop()
            raise ArchiveError(self.label, f"the server stopped answering ({first_line(exc)})") from None
        except OSError as exc:
            raise ArchiveError(str(self.mirror_folder), f"cannot use the mirror ({exc.strerror or exc})") from None

    def _drop(self) -> None:
        conn, self._conn, self._mirror = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def _mirror_for(self, conn: psycopg.Connection) -> ArchiveMirror | None:
        if self.mirror_folder is not None and self._mirror is None:
            self._mirror = ArchiveMirror(self.mirror_folder, conn)
        return self._mirror

    def _info(self, conn: psycopg.Connection, session: MedHashSession | None) -> ArchiveInfo:
        cases = int(conn.execute("SELECT count(*) FROM medhash.cases").fetchone()[0])
        encoded_by = "the library's model"
        if session is None:  # no library: the archive's model encodes, fetched now rather than at the first query
            published, _ = self._own_encoder(conn)
            model_id, encoded_by = published.id, f"archive model {published.id} ({published.name})"
        else:
            model = session.active_model()
            model_id = find_model(conn, model) if model is not None else None
        recall = [] if model_id is None else [
            {"modality": m, "bits": int(b), "ef_search": int(ef), "k": int(k), "recall": float(r), "queries": int(q),
             "codes": int(c)} for m, b, ef, k, r, q, c in conn.execute(
                "SELECT modality, bits, ef_search, k, recall, queries, codes FROM medhash.hnsw_recall "
                "WHERE model_id = %s ORDER BY 1, 2, 3", [model_id])]
        return ArchiveInfo(self.label, cases, model_id, recall=recall, encoded_by=encoded_by)

    def _own_encoder(self, conn: psycopg.Connection) -> tuple[ArchiveModel, EncoderService]:
        """The archive's newest model with published weights and codes, loaded once (from the cache)."""
        if self._own is None:
            from medhash_app.core.encoder.service import EncoderService  # torch: only when needed

            published = choose_model(conn, label=self.label)
            self._own = published, EncoderService(fetch_checkpoint(conn, published, self.model_cache))
        return self._own

    def _model_id(self, conn: psycopg.Connection, session: MedHashSession | None) -> int:
        if session is None:
            return self._own_encoder(conn)[0].id
        model = session.active_model()
        if model is None:
            raise ArchiveError(str(session.library.folder), "no active model to encode the query")
        model_id = find_model(conn, model)
        if model_id is None:
            raise ArchiveError(f"model {model['name']}", "its checkpoint was never published to this archive; "
                               "publish it with `medhash archive publish`")
        return model_id

    def _search(self, conn: psycopg.Connection, session: MedHashSession | None, query: SearchQuery,
                approximate: bool, ef_search: int) -> ArchiveAnswer:
        started = time.perf_counter()
        if session is None:
            published, encoder = self._own_encoder(conn)
            library, model_id, archive_model = None, None, published.id
        else:
            model = session.active_model()
            if model is None:
                raise ArchiveError(str(session.library.folder), "no active model to encode the query")
            library, model_id, archive_model = session.library, int(model["id"]), None
            encoder = session.encoders.get(model)
        encoded = encode_query(conn, library, model_id=model_id, image=query.image_path, text=query.text,
                               code=None, code_kind="image", bits=query.bits, encoder=encoder,
                               archive_model_id=archive_model)
        encoded_at = time.perf_counter()
        searcher = ArchiveSearch(conn, None if approximate else self._mirror_for(conn))
        targets = targets_for(encoded.kind, query.target)
        found = searcher.search(encoded.archive_model_id, targets, encoded.bits, encoded.code, query.k,
                                query.filters, query_kind=encoded.kind, approximate=approximate, ef_search=ef_search)
        recall = ({m: stored_recall(conn, encoded.archive_model_id, m, encoded.bits, ef_search) for m in targets}
                  if approximate else None)
        done = time.perf_counter()
        result = SearchResult(hits=[_hit(h, encoded.bits) for h in found], bits=encoded.bits,
                              model_id=model_id if model_id is not None else encoded.archive_model_id,
                              device=str(encoder.device),
                              encode_ms=(encoded_at - started) * 1e3, search_ms=(done - encoded_at) * 1e3,
                              total_ms=(done - started) * 1e3, query_kind=encoded.kind)  # type: ignore[arg-type]
        return ArchiveAnswer(result, searcher.last_answer, "hnsw" if approximate else "exact", recall,
                             encoded.archive_model_id)


def _hit(hit: ArchiveHit, bits: int) -> Hit:
    case = {**hit.case, "id": hit.case_id, "archive_case_id": hit.case_id}
    return Hit(rank=hit.rank, case=case, matched=hit.matched, distance=hit.distance,  # type: ignore[arg-type]
               similarity=1.0 - hit.distance / bits)
