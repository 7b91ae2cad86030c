"""FAISS binary indexes cached on disk, rebuilt from the caller's codes when missing, stale or damaged.

The codes in SQLite are the source of truth; an index file is only a cache of them. The caller (the
library/search layer) passes the ids and codes it read, so this module never touches SQLite.

On disk, under ``<folder>/indexes/``: ``<key>.faissbin`` (``faiss.write_index_binary``) and
``<key>.json``, a sidecar with {format, kind, count, bits, checksum, file_sha256, faiss_version,
options}. ``checksum`` is the SHA-256 of the ids and codes the index was built from; ``file_sha256``
covers the index file itself, so flipped bytes that FAISS would still read are caught. Both files are
written to a temporary name in the same folder and moved into place with ``os.replace``; the index
file goes first, so a crash between the two leaves a sidecar that no longer matches (-> rebuild).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from medhash_app.core.errors import IndexCacheError
from medhash_app.core.index.binary_index import KINDS, BinaryIndex

log = logging.getLogger(__name__)

FORMAT = 1
_BUILD_OPTIONS = ("hnsw_m", "ivf_nlist")       # change the stored index -> rebuild
_SEARCH_OPTIONS = ("ef_search", "nprobe")      # applied after loading
_LOAD_OPTIONS = ("shards",)                    # how a stored flat index is split in memory
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 24


def content_checksum(ids: np.ndarray, codes: np.ndarray) -> str:
    """SHA-256 of ids + packed codes in a canonical layout (int64 or fixed-width UTF-32 ids)."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    ids = np.asarray(ids)
    h = hashlib.sha256(f"medhash-index:{codes.shape[0]}x{codes.shape[1]};".encode())
    h.update(codes)  # the buffer itself: memoryview.cast fails on 0 rows
    if ids.dtype.kind in "iu":
        h.update(b"ids:int64;")
        h.update(np.ascontiguousarray(ids, dtype="<i8"))
    else:
        text = np.ascontiguousarray(ids.astype(str))
        text = text.astype(f"<U{max(1, text.dtype.itemsize // 4)}")
        h.update(f"ids:{text.dtype.str};".encode())
        h.update(text)
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


class BinaryIndexCache:
    """``get(key, ids, codes, kind)`` returns a verified index, building and saving it when needed.

    ``last_status[key]`` says what happened: "loaded", "built (missing)", "rebuilt (stale: ...)" or
    "rebuilt (damaged: ...)".
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder) / "indexes"
        self.last_status: dict[str, str] = {}

    def paths(self, key: str) -> tuple[Path, Path]:
        """(index file, sidecar) for ``key``; keys are plain names such as "m3-image-64"."""
        if not _KEY.fullmatch(key):
            raise IndexCacheError(key, "an index key may only hold letters, digits, '.', '_' and '-'")
        return self.folder / f"{key}.faissbin", self.folder / f"{key}.json"

    def get(self, key: str, ids: np.ndarray, codes: np.ndarray, kind: str = "flat",
            checksum: str | None = None, **options: Any) -> BinaryIndex:
        """A ready index over ``codes`` (row i is named ``ids[i]``), from disk when it verifies.

        ``checksum``: a digest of (ids, codes) the caller already holds (the library's codes file has
        one), used instead of hashing them again; default ``content_checksum``. Any digest that changes
        with the content will do: a cache stamped with another one is rebuilt, never trusted."""
        if kind not in KINDS:
            raise IndexCacheError(key, f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
        unknown = set(options) - set(_BUILD_OPTIONS + _SEARCH_OPTIONS + _LOAD_OPTIONS)
        if unknown:
            raise IndexCacheError(key, f"unknown index options: {', '.join(sorted(unknown))}")
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        ids = np.asarray(ids)
        if codes.ndim != 2 or len(ids) != len(codes):
            raise IndexCacheError(key, f"{len(ids)} ids do not match codes of shape {codes.shape}")
        checksum = checksum or content_checksum(ids, codes)
        build = {name: options[name] for name in _BUILD_OPTIONS if options.get(name) is not None}
        index, problem = self._load(key, ids, codes, kind, checksum, build, options)
        if index is not None:
            self.last_status[key] = "loaded"
            return index
        index = self._build(key, ids, codes, kind, options)
        try:
            self._save(key, index, kind, checksum, build)
        except IndexCacheError as exc:       # a read-only library still searches, from memory
            log.warning("index %s not cached: %s", key, exc.reason)
            problem += f" (not saved: {exc.reason})"
        self.last_status[key] = problem
        log.info("index %s: %s", key, problem)
        return index

    def remove(self, key: str) -> None:
        """Forget a cached index (both files); the next ``get`` rebuilds it."""
        for path in self.paths(key):
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------ load
    def _load(self, key: str, ids: np.ndarray, codes: np.ndarray, kind: str, checksum: str,
              build: dict[str, Any], options: dict[str, Any]) -> tuple[BinaryIndex | None, str]:
        index_path, sidecar_path = self.paths(key)
        if not index_path.is_file() or not sidecar_path.is_file():
            return None, "built (missing)"
        try:
            meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
            expected = {"format": FORMAT, "kind": kind, "count": len(codes), "bits": codes.shape[1] * 8,
                        "checksum": checksum, "faiss_version": faiss.__version__, "options": build}
            changed = [name for name, value in expected.items() if meta.get(name) != value]
        except (OSError, ValueError, AttributeError) as exc:
            return None, f"rebuilt (damaged: sidecar unreadable, {type(exc).__name__})"
        if changed:
            return None, f"rebuilt (stale: {', '.join(changed)} changed)"
        try:
            if _file_sha256(index_path) != meta.get("file_sha256"):
                return None, "rebuilt (damaged: index file checksum mismatch)"
            stored = faiss.read_index_binary(str(index_path))
        except (OSError, RuntimeError) as exc:
            return None, f"rebuilt (damaged: {type(exc).__name__})"
        if int(stored.ntotal) != len(codes) or int(stored.code_size) != codes.shape[1]:
            return None, "rebuilt (damaged: index size does not match)"
        try:
            index = BinaryIndex.from_faiss(stored, ids, kind, shards=options.get("shards"))
        except RuntimeError as exc:
            raise IndexCacheError(index_path, str(exc)) from exc
        index.set_search_params(ef_search=options.get("ef_search"), nprobe=options.get("nprobe"))
        return index, "loaded"

    # ------------------------------------------------------------------------------ build/save
    @staticmethod
    def _build(key: str, ids: np.ndarray, codes: np.ndarray, kind: str, options: dict[str, Any]
               ) -> BinaryIndex:
        given = {name: value for name, value in options.items() if value is not None}
        try:
            return BinaryIndex.build(codes, ids, kind, **given)
        except (RuntimeError, ValueError) as exc:
            raise IndexCacheError(key, f"cannot build a {kind} index: {exc}") from exc

    def _save(self, key: str, index: BinaryIndex, kind: str, checksum: str, build: dict[str, Any]) -> None:
        index_path, sidecar_path = self.paths(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp_index = self._temp(index_path)
            faiss.write_index_binary(index.to_faiss(), str(tmp_index))
            meta = {"format": FORMAT, "kind": kind, "count": index.ntotal, "bits": index.bits,
                    "checksum": checksum, "file_sha256": _file_sha256(tmp_index),
                    "faiss_version": faiss.__version__, "options": build}
            _fsync(tmp_index)
            os.replace(tmp_index, index_path)
            tmp_sidecar = self._temp(sidecar_path)
            tmp_sidecar.write_text(json.dumps(meta, indent=1), encoding="utf-8")
            _fsync(tmp_sidecar)
            os.replace(tmp_sidecar, sidecar_path)
        except (OSError, RuntimeError) as exc:
            if self.folder.is_dir():
                for path in self.folder.glob(f".{key}.*.tmp"):
                    path.unlink(missing_ok=True)
            raise IndexCacheError(index_path, f"cannot write the index cache ({exc})") from exc

    @staticmethod
    def _temp(target: Path) -> Path:
        fd, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        return Path(name)


def _fsync(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())
