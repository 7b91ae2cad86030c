"""A workstation's local FAISS mirror of an archive's codes, so a search need not scan on the server.

Codes are small (10 M x 128 bits is 160 MB), so a reading room keeps them in a file per (archive,
model, modality, bits): the archive's case ids in id order, the packed codes, and the code_versions
counter they were read at, all read in one REPEATABLE READ snapshot. A search asks the server for
the current counter (one tiny query): equal -> the mirror answers with FAISS IndexBinaryFlat (same
ranking as the server: ids ascending = row order, so ties break alike); different or no mirror ->
the server answers. Filtered searches always go to the server (filters live with the cases there).
`refresh` brings a mirror up to date. Files are written to a temporary name and moved into place.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
from psycopg import sql

from medhash_app.core.index import BinaryIndex
from medhash_app.core.library.files import atomic_savez

FORMAT = 1


@dataclass
class MirrorState:
    version: int | None  # the counter the mirror was read at (None: no mirror)
    server_version: int | None  # the archive's counter now (None: no codes published)

    @property
    def current(self) -> bool:
        return self.version is not None and self.version == self.server_version


def archive_id(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT value FROM medhash.archive_meta WHERE key = 'archive_id'").fetchone()
    return str(row[0]) if row else "unnamed"


def server_version(conn: psycopg.Connection, model_id: int, modality: str, bits: int) -> int | None:
    row = conn.execute("SELECT version FROM medhash.code_versions WHERE model_id = %s AND modality = %s "
                       "AND bits = %s", [model_id, modality, bits]).fetchone()
    return None if row is None else int(row[0])


class ArchiveMirror:
    """Mirror files under `folder` for the archive behind `conn`, with their FAISS indexes in memory."""

    def __init__(self, folder: Path, conn: psycopg.Connection) -> None:
        self.folder, self.conn = Path(folder), conn
        self.archive = archive_id(conn)
        self._loaded: dict[tuple[int, str, int], tuple[int, np.ndarray, BinaryIndex]] = {}

    def path(self, model_id: int, modality: str, bits: int) -> Path:
        return self.folder / f"{self.archive}-m{int(model_id)}-{modality}-{int(bits)}.mirror.npz"

    def state(self, model_id: int, modality: str, bits: int) -> MirrorState:
        loaded = self._load(model_id, modality, bits)
        return MirrorState(None if loaded is None else loaded[0], server_version(self.conn, model_id, modality, bits))

    def refresh(self, model_id: int, modality: str, bits: int) -> int:
        """Download the codes when the mirror is stale or absent; returns how many codes it holds."""
        state = self.state(model_id, modality, bits)
        if state.current:
            return len(self._loaded[(model_id, modality, bits)][1])
        with self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            version = server_version(self.conn, model_id, modality, bits)
            ids, codes = _download(self.conn, model_id, modality, bits)
        _write(self.path(model_id, modality, bits), version, ids, codes)
        self._loaded.pop((model_id, modality, bits), None)
        return len(ids)

    def search(self, model_id: int, modality: str, bits: int, query: np.ndarray, k: int
               ) -> list[tuple[int, int]] | None:
        """[(case id, distance)] from the mirror when it is current, else None (ask the server)."""
        if not self.state(model_id, modality, bits).current:
            return None
        _, ids, index = self._loaded[(model_id, modality, bits)]
        if len(ids) == 0:
            return []
        found = index.search(np.ascontiguousarray(query, dtype=np.uint8).reshape(1, -1), k)
        return [(int(ids[r]), int(d)) for r, d in zip(found.rows[0], found.distances[0], strict=True) if r >= 0]

    def _load(self, model_id: int, modality: str, bits: int) -> tuple[int, np.ndarray, BinaryIndex] | None:
        key = (model_id, modality, bits)
        if key not in self._loaded:
            read = _read(self.path(model_id, modality, bits), bits)
            if read is None:
                return None
            version, ids, codes = read
            self._loaded[key] = (version, ids, BinaryIndex.build(codes, ids, "flat"))
        return self._loaded[key]


def _download(conn: psycopg.Connection, model_id: int, modality: str, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids ascending, packed codes), streamed with COPY in binary-free text (bit strings)."""
    ids: list[int] = []
    chunks: list[bytes] = []
    query = sql.SQL("COPY (SELECT case_id, code FROM medhash.codes WHERE model_id = {} AND modality = {} "
                    "AND bits = {} ORDER BY case_id) TO STDOUT").format(
                        sql.Literal(int(model_id)), sql.Literal(modality), sql.Literal(int(bits)))
    with conn.cursor() as cur, cur.copy(query) as copy:
        for case_id, code in copy.rows():
            ids.append(int(case_id))
            chunks.append(np.packbits(np.frombuffer(code.encode(), dtype=np.uint8) == ord("1")).tobytes())
    codes = np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(len(ids), bits // 8)
    return np.array(ids, dtype=np.int64), codes.copy()


def _write(path: Path, version: int | None, ids: np.ndarray, codes: np.ndarray) -> None:
    atomic_savez(path, ids=ids, codes=codes, meta=np.array(json.dumps({"format": FORMAT, "version": version})))


def _read(path: Path, bits: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(version, ids, codes), or None when the file is missing, unreadable or not of this shape."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            ids, codes = data["ids"], data["codes"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if meta.get("format") != FORMAT or meta.get("version") is None or codes.shape != (len(ids), bits // 8):
        return None
    return int(meta["version"]), ids, codes
