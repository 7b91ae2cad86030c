"""A codes file per (model, modality, bits) beside the FAISS caches: the codes without SQLite row reads.

Reading 100k codes from SQLite costs 0.1-0.5 s at every session start; this file loads in
milliseconds. SQLite stays the source of truth: the file is used only while the token stored with it
equals the library's current `code_versions` token for its key (a trigger replaces the token on every
change to those codes, schema.py), and only when the SHA-256 of its arrays matches the one it was
written with. Anything else (missing, stale, damaged, unreadable) means "read SQLite again and write a
new file". Written to a temporary name and moved into place, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medhash_app.core.library.files import atomic_savez

log = logging.getLogger(__name__)

FORMAT = 1
SUFFIX = ".codes.npz"


@dataclass(frozen=True)
class StoredCodes:
    """One code set in database order: case ids, their `seq`, packed codes, and where it came from.

    `digest` (arrays_digest) names this content; the FAISS cache takes it as its checksum, so opening
    a cached index does not hash the codes a second time."""

    ids: np.ndarray
    seqs: np.ndarray
    codes: np.ndarray
    digest: str
    source: str  # "file" or "sqlite (<why the file was not used>)"
    token: str | None = None  # the library's code_versions token these codes belong to


def file_path(folder: Path, key: str) -> Path:
    return folder / f"{key}{SUFFIX}"


def arrays_digest(ids: np.ndarray, seqs: np.ndarray, codes: np.ndarray) -> str:
    """SHA-256 over the three arrays' bytes and shapes (catches flipped bytes np.load would accept)."""
    h = hashlib.sha256(f"{ids.dtype.str}{ids.shape};{seqs.dtype.str};{codes.shape}".encode())
    for array in (ids, seqs, codes):
        h.update(np.ascontiguousarray(array))
    return h.hexdigest()


def read(path: Path, token: str, bits: int) -> tuple[StoredCodes | None, str]:
    """(codes, "") when the file is there, whole and current for `token`; else (None, the reason)."""
    if not path.is_file():
        return None, "no codes file"
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            ids, seqs, codes = data["ids"], data["seqs"], data["codes"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        return None, f"codes file unreadable ({type(exc).__name__})"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None, "codes file of another format"
    if meta.get("token") != token:
        return None, "codes changed since the file was written"
    if (ids.ndim != 1 or seqs.dtype != np.int64 or codes.dtype != np.uint8
            or codes.shape != (len(ids), bits // 8) or seqs.shape != ids.shape):
        return None, "codes file damaged (shapes)"
    digest = arrays_digest(ids, seqs, codes)
    if digest != meta.get("sha256"):
        return None, "codes file damaged (checksum)"
    return StoredCodes(ids, seqs, codes, digest, "file", token), ""


def write(path: Path, token: str, stored: StoredCodes) -> None:
    """Save atomically; a library that cannot be written to (read-only, disk full) just goes without."""
    meta = {"format": FORMAT, "token": token, "count": len(stored.ids), "sha256": stored.digest}
    try:
        atomic_savez(path, ids=stored.ids, seqs=stored.seqs, codes=stored.codes, meta=np.array(json.dumps(meta)))
    except OSError as exc:
        log.warning("codes file %s not written: %s", path.name, exc)
