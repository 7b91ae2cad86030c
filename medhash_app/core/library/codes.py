"""Stored hash codes (packed bits) and optional float16 embeddings, per (model, modality, bits).

SQLite is the source of truth; FAISS indexes are caches rebuilt from `get_codes`, whose order
(case `seq`, i.e. insertion order) is the database position used to break Hamming ties.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medhash_app.core.library import code_files
from medhash_app.core.library.base import CHUNK, LibraryBase, library_error
from medhash_app.core.library.code_files import StoredCodes

MODALITIES = ("image", "text")
_ORDERED = ("FROM codes k JOIN cases c ON c.id = k.case_id "
            "WHERE k.model_id = ? AND k.modality = ? AND k.bits = ? ORDER BY c.seq")


def _check_codes(modality: str, bits: int, case_ids: Sequence[str], packed: np.ndarray,
                 embeddings: np.ndarray | None) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")
    if bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, not {bits}")
    if packed.dtype != np.uint8 or packed.shape != (len(case_ids), bits // 8):
        raise ValueError(f"packed codes must be uint8 of shape ({len(case_ids)}, {bits // 8}), "
                         f"not {packed.dtype} {packed.shape}")
    if embeddings is not None and (embeddings.ndim != 2 or len(embeddings) != len(case_ids)):
        raise ValueError(f"embeddings must have shape ({len(case_ids)}, D), not {embeddings.shape}")


class CodeStore(LibraryBase):
    """Codes of a case vanish with it (ON DELETE CASCADE) and with their model."""

    @property
    def indexes_dir(self) -> Path:
        return self.folder / "indexes"

    def put_codes(self, model_id: int, modality: str, bits: int, case_ids: Sequence[str],
                  packed: np.ndarray, embeddings: np.ndarray | None = None) -> None:
        """Store (or replace) the codes of `case_ids` in one transaction."""
        _check_codes(modality, bits, case_ids, packed, embeddings)
        packed = np.ascontiguousarray(packed)
        emb = None if embeddings is None else np.ascontiguousarray(embeddings, dtype=np.float16)
        rows = [(model_id, modality, bits, case_id, packed[i].tobytes(),
                 None if emb is None else emb[i].tobytes()) for i, case_id in enumerate(case_ids)]
        with self.transaction() as db:
            db.conn.executemany(
                "INSERT OR REPLACE INTO codes (model_id, modality, bits, case_id, code, embedding) "
                "VALUES (?, ?, ?, ?, ?, ?)", rows)

    def get_codes(self, model_id: int, modality: str, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """(case ids, packed codes uint8 (N, bits/8)) in database order."""
        ids, _, codes = self._read_codes(model_id, modality, bits)
        return ids, codes

    def _read_codes(self, model_id: int, modality: str, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, seqs, codes) from SQLite through a plain cursor (tuples, not dict rows: 2-3x faster)."""
        try:
            rows = self.db.execute(f"SELECT k.case_id, c.seq, k.code {_ORDERED}", [model_id, modality, bits]).fetchall()
        except sqlite3.Error as exc:
            raise library_error(self.folder, exc) from exc
        ids = np.array([r[0] for r in rows], dtype=str)
        seqs = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
        packed = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8)
        return ids, seqs, packed.reshape(len(rows), bits // 8).copy()

    def code_token(self, model_id: int, modality: str, bits: int) -> str | None:
        """The current `code_versions` token of these codes (None before any were written)."""
        return self._scalar("SELECT token FROM code_versions WHERE model_id = ? AND modality = ? AND bits = ?",
                            [model_id, modality, bits])

    def load_codes(self, model_id: int, modality: str, bits: int) -> StoredCodes:
        """The codes in database order, from the codes file when it is current and whole (code_files.py),
        else from SQLite, writing the file again for the next session."""
        path = code_files.file_path(self.indexes_dir, f"m{model_id}-{modality}-{bits}")
        with self.transaction():  # one snapshot: the token and the rows belong together
            token = self.code_token(model_id, modality, bits)
            if token is not None:
                stored, why = code_files.read(path, token, bits)
                if stored is not None:
                    return stored
            else:
                why = "no codes written yet"
            ids, seqs, codes = self._read_codes(model_id, modality, bits)
        stored = StoredCodes(ids, seqs, codes, code_files.arrays_digest(ids, seqs, codes), f"sqlite ({why})", token)
        if token is not None and not self.read_only:
            code_files.write(path, token, stored)
        return stored

    def get_embeddings(self, model_id: int, modality: str, bits: int,
                       case_ids: Sequence[str]) -> np.ndarray:
        """Float32 embeddings in the order of `case_ids`; rows without one are NaN."""
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(case_ids), CHUNK):
            chunk = list(case_ids[start:start + CHUNK])
            rows = self._rows(
                "SELECT case_id, embedding FROM codes WHERE model_id = ? AND modality = ? AND bits = ? "
                f"AND embedding IS NOT NULL AND case_id IN ({', '.join('?' * len(chunk))})",
                [model_id, modality, bits, *chunk])
            found |= {r["case_id"]: np.frombuffer(r["embedding"], dtype=np.float16) for r in rows}
        dim = len(next(iter(found.values()))) if found else 0
        out = np.full((len(case_ids), dim), np.nan, dtype=np.float32)
        for i, case_id in enumerate(case_ids):
            if case_id in found:
                out[i] = found[case_id]
        return out

    def forget_code_file(self, model_id: int, modality: str, bits: int) -> None:
        """Remove the codes file of one key; the next `load_codes` reads SQLite and writes it again."""
        code_files.file_path(self.indexes_dir, f"m{model_id}-{modality}-{bits}").unlink(missing_ok=True)

    def count_codes(self, model_id: int, modality: str, bits: int) -> int:
        return int(self._scalar("SELECT count(*) FROM codes WHERE model_id = ? AND modality = ? AND bits = ?",
                                [model_id, modality, bits]))

    def codes_checksum(self, model_id: int, modality: str, bits: int) -> str:
        """SHA-256 over (case id, code) in database order: an index cache built from other codes,
        or in another order, does not match."""
        digest = hashlib.sha256()
        cursor = self.db.execute(f"SELECT k.case_id, k.code {_ORDERED}", [model_id, modality, bits])
        for case_id, code in cursor:
            digest.update(case_id.encode() + b"\0" + bytes(code))
        return digest.hexdigest()

    def delete_codes(self, model_id: int, modality: str | None = None, bits: int | None = None) -> int:
        """Remove a model's codes (optionally only one modality / code length); returns rows removed."""
        sql, params = "DELETE FROM codes WHERE model_id = ?", [model_id]
        if modality is not None:
            sql, params = sql + " AND modality = ?", [*params, modality]
        if bits is not None:
            sql, params = sql + " AND bits = ?", [*params, bits]
        with self.transaction() as db:
            return db.conn.execute(sql, params).rowcount

    def delete_case_codes(self, model_id: int, modality: str, case_ids: Sequence[str]) -> int:
        """Remove one model's codes (all lengths, with their embeddings) of `modality` for `case_ids`, in one
        transaction (a savepoint inside a caller's); returns rows removed."""
        removed = 0
        with self.transaction() as db:
            for start in range(0, len(case_ids), CHUNK):
                chunk = list(case_ids[start:start + CHUNK])
                removed += db.conn.execute(
                    f"DELETE FROM codes WHERE model_id = ? AND modality = ? AND case_id IN ({', '.join('?' * len(chunk))})",
                    [model_id, modality, *chunk]).rowcount
        return removed
