"""Hamming top-k over packed binary codes with FAISS, in the evaluator's ranking order.

Ranking rule (shared with ``trainer.evaluate``): ascending Hamming distance, ties broken by database
row ascending. For CPU ``IndexBinaryFlat`` FAISS already returns exactly this order (its heap keeps
the first-scanned item on ties and reorders by (distance, id)); ``tests/test_index.py`` checks it
against ``trainer.evaluate.hamming_rank`` on data full of ties. Shards are merged by
(distance, row). For a GPU index, whose k-selection order is not documented, ``_exact_topk`` fetches
more than k until the tie block at the k-th distance is complete and then sorts. Approximate kinds
(HNSW, IVF) are sorted by (distance, row) but may miss items, as approximate search does.
The GPU path is untested here (faiss-cpu, no GPU): it is written to FAISS's documented API.

Kinds
    flat     IndexBinaryFlat, exact, the default. One query runs on one core.
    sharded  exact; contiguous row ranges in one IndexBinaryFlat per core, searched in a thread pool
             (FAISS releases the GIL) and merged, so one interactive query uses every core. One shard
             per core: each extra shard costs a pool hand-off under the GIL (one run: 16 shards
             4.5 ms, 64 shards 8.7 ms for 10M x 64 bits on 16 cores).
    hnsw     IndexBinaryHNSW, approximate, for large libraries.
    ivf      IndexBinaryIVF, approximate, for large libraries.
    gpu      GpuIndexBinaryFlat, exact; needs faiss-gpu and a GPU (see ``gpu_available``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

KINDS = ("flat", "sharded", "hnsw", "ivf", "gpu")
EXACT_KINDS = frozenset({"flat", "sharded", "gpu"})
_MIN_SHARD = 1 << 18          # rows; below this the per-call overhead beats the parallel scan
_GPU_MAX_K = 2048             # FAISS GPU k-selection limit; larger tie blocks go to the CPU copy


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@dataclass(frozen=True)
class SearchHits:
    """Top-k per query. ``rows`` index the codes the index was built from (-1: no hit, only possible
    with approximate kinds); ``ids`` are the caller's ids for those rows (-1 / "" / None where
    ``rows`` is -1); ``distances`` are Hamming distances (-1 where no hit)."""

    distances: np.ndarray
    rows: np.ndarray
    ids: np.ndarray


def _check_codes(codes: Any, what: str, code_size: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(codes)
    if arr.ndim == 1 and what == "queries":
        arr = arr[None, :]
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"{what} must be packed codes, a 2-D uint8 array; got {arr.dtype} {arr.shape}")
    if code_size is not None and arr.shape[1] != code_size:
        raise ValueError(f"{what} have {arr.shape[1] * 8} bits, the index has {code_size * 8}")
    return arr


def _sort_hits(distances: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Order candidates by (distance, row), misses (-1) last, and keep k per query."""
    big = np.iinfo(np.int64).max // 4
    dist = np.where(rows >= 0, distances.astype(np.int64), big)
    order = np.lexsort((np.where(rows >= 0, rows, big), dist), axis=-1)[:, :k]
    rows_k = np.take_along_axis(rows, order, axis=1)
    dist_k = np.take_along_axis(distances, order, axis=1).astype(np.int32)
    return np.where(rows_k >= 0, dist_k, -1), rows_k


def _exact_topk(search: Any, queries: np.ndarray, k: int, ntotal: int, max_fetch: int | None = None,
                fallback: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k under the rule from any exact search whose tie order is unknown.

    If the k-th distance is smaller than the last fetched one, every item at distance <= the k-th
    distance is among the fetched, so sorting them by (distance, row) is exact; otherwise fetch more.
    When the tie block needs more than ``max_fetch`` (the GPU's k limit), ``fallback`` answers.
    """
    limit = ntotal if max_fetch is None else min(ntotal, max_fetch)
    fetch = min(limit, 2 * k)
    while fetch >= k:
        dist, rows = search(queries, fetch)
        complete = dist[:, k - 1] < dist[:, fetch - 1]
        if fetch == ntotal or complete.all():
            return _sort_hits(dist, rows, k)
        if fetch == limit:
            break
        fetch = min(limit, 2 * fetch)
    return fallback(queries, k)


@contextmanager
def _one_omp_thread(active: bool) -> Iterator[None]:
    """Run FAISS single-threaded in this thread (the OpenMP setting is per thread).

    FAISS's flat search parallelises over queries, once per 65,536-code block; for a single query
    the other threads of the team only wake up and sleep again (measured 26 ms instead of 18 ms for
    10M x 64 bits on 16 cores with OMP_WAIT_POLICY=PASSIVE).
    """
    if not active:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class BinaryIndex:
    """One searchable set of packed codes; rows keep the order of the codes it was built from."""

    def __init__(self, parts: list[Any], ids: np.ndarray, kind: str, code_size: int,
                 offsets: np.ndarray | None = None, keep: list[Any] | None = None) -> None:
        self._parts, self.kind, self.code_size = parts, kind, code_size
        self._offsets = offsets if offsets is not None else np.zeros(1, np.int64)
        self._keep = keep or []               # objects FAISS indexes point into (quantizer, GPU res)
        self._pool: ThreadPoolExecutor | None = None
        ntotal = sum(int(p.ntotal) for p in parts)
        self.ids = np.arange(ntotal) if ids is None else np.asarray(ids)
        if len(self.ids) != ntotal:
            raise ValueError(f"{len(self.ids)} ids for {ntotal} codes")

    # ---------------------------------------------------------------------------- construction
    @classmethod
    def build(cls, codes: np.ndarray, ids: np.ndarray | None = None, kind: str = "flat", *,
              shards: int | None = None, hnsw_m: int = 32, ef_search: int = 128,
              ivf_nlist: int | None = None, nprobe: int = 16) -> BinaryIndex:
        """Build an index of ``kind`` over (N, bits/8) uint8 ``codes``; ``ids[i]`` names row i."""
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; use one of {KINDS}")
        codes = _check_codes(codes, "codes")
        bits = codes.shape[1] * 8
        if kind == "sharded":
            return cls._sharded(codes, ids, shards)
        if kind == "hnsw":
            index = faiss.IndexBinaryHNSW(bits, hnsw_m)
            index.hnsw.efSearch = ef_search
            index.add(codes)
            return cls([index], ids, kind, codes.shape[1])
        if kind == "ivf":
            return cls._ivf(codes, ids, ivf_nlist, nprobe)
        flat = faiss.IndexBinaryFlat(bits)
        flat.add(codes)
        return cls.from_faiss(flat, ids, kind)

    @classmethod
    def _sharded(cls, codes: np.ndarray, ids: np.ndarray | None, shards: int | None) -> BinaryIndex:
        cores = os.cpu_count() or 1
        count = shards or max(1, min(cores, len(codes) // _MIN_SHARD))
        bounds = np.linspace(0, len(codes), count + 1).astype(np.int64)
        parts = []
        for start, stop in itertools.pairwise(bounds):
            part = faiss.IndexBinaryFlat(codes.shape[1] * 8)
            part.add(codes[start:stop])
            parts.append(part)
        return cls(parts, ids, "sharded", codes.shape[1], offsets=bounds[:-1])

    @classmethod
    def _ivf(cls, codes: np.ndarray, ids: np.ndarray | None, nlist: int | None, nprobe: int) -> BinaryIndex:
        bits = codes.shape[1] * 8
        nlist = nlist or int(np.clip(4 * np.sqrt(len(codes)), 1, max(1, len(codes) // 39)))
        quantizer = faiss.IndexBinaryFlat(bits)
        index = faiss.IndexBinaryIVF(quantizer, bits, nlist)
        sample = codes
        if len(codes) > 256 * nlist:           # training on a seeded sample keeps builds reproducible
            pick = np.random.default_rng(0).choice(len(codes), 256 * nlist, replace=False)
            sample = codes[np.sort(pick)]
        index.train(sample)
        index.add(codes)
        index.nprobe = min(nprobe, nlist)
        return cls([index], ids, "ivf", codes.shape[1], keep=[quantizer])

    @classmethod
    def from_faiss(cls, index: Any, ids: np.ndarray | None, kind: str, *,
                   shards: int | None = None) -> BinaryIndex:
        """Wrap a CPU FAISS index read from disk (or just built) as ``kind``."""
        code_size = int(index.code_size)
        if kind == "sharded":
            codes = faiss.vector_to_array(index.xb).reshape(-1, code_size)
            return cls._sharded(codes, ids, shards)
        if kind == "gpu":
            if not gpu_available():
                raise RuntimeError("this FAISS build has no GPU support or no GPU is visible")
            resources = faiss.StandardGpuResources()
            gpu_index = faiss.GpuIndexBinaryFlat(resources, index)
            return cls([gpu_index], ids, kind, code_size, keep=[resources, index])
        return cls([index], ids, kind, code_size)

    def to_faiss(self) -> Any:
        """A CPU FAISS index holding every row, for ``faiss.write_index_binary``."""
        if self.kind == "gpu":
            return self._keep[1]
        if self.kind != "sharded":
            return self._parts[0]
        flat = faiss.IndexBinaryFlat(self.bits)
        for part in self._parts:
            flat.add(faiss.vector_to_array(part.xb).reshape(-1, self.code_size))
        return flat

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None) -> None:
        """Search-time accuracy/speed knobs of the approximate kinds (ignored by the exact ones)."""
        index = self._parts[0]
        if self.kind == "hnsw" and ef_search:
            index.hnsw.efSearch = int(ef_search)
        if self.kind == "ivf" and nprobe:
            index.nprobe = min(int(nprobe), int(index.nlist))

    # ---------------------------------------------------------------------------------- search
    @property
    def ntotal(self) -> int:
        return len(self.ids)

    @property
    def bits(self) -> int:
        return self.code_size * 8

    def search(self, queries: np.ndarray, k: int) -> SearchHits:
        """Top-k rows per query, ascending Hamming distance then row; k is capped at ``ntotal``."""
        queries = _check_codes(queries, "queries", self.code_size)
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(int(k), self.ntotal)
        if k == 0:
            empty = np.zeros((len(queries), 0), np.int64)
            return SearchHits(empty.astype(np.int32), empty, self.ids[:0][None, :].repeat(len(queries), 0))
        if self.kind == "sharded":
            dist, rows = self._search_shards(queries, k)
        elif self.kind == "gpu":
            cpu = self._keep[1]
            dist, rows = _exact_topk(self._parts[0].search, queries, k, self.ntotal, _GPU_MAX_K,
                                     lambda q, kk: _sort_hits(*cpu.search(q, kk), kk))
        else:
            with _one_omp_thread(len(queries) == 1):
                found = self._parts[0].search(queries, k)
            dist, rows = _sort_hits(*found, k)
        return SearchHits(dist, rows, self._ids_for(rows))

    def _search_shards(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        def one(i: int) -> tuple[np.ndarray, np.ndarray]:
            part = self._parts[i]
            with _one_omp_thread(len(queries) == 1):     # pool workers are single-threaded anyway
                dist, rows = part.search(queries, min(k, int(part.ntotal)))
            return dist, np.where(rows >= 0, rows + self._offsets[i], -1)

        if len(self._parts) == 1:
            results = [one(0)]
        else:           # batches too: measured faster than FAISS's own OpenMP over the queries
            results = list(self._thread_pool().map(one, range(len(self._parts))))
        dist = np.concatenate([r[0] for r in results], axis=1)
        rows = np.concatenate([r[1] for r in results], axis=1)
        return _sort_hits(dist, rows, k)

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # one OpenMP thread per worker: the parallelism is the pool's, not FAISS's
            self._pool = ThreadPoolExecutor(max_workers=min(len(self._parts), os.cpu_count() or 1),
                                            thread_name_prefix="medhash-shard",
                                            initializer=faiss.omp_set_num_threads, initargs=(1,))
        return self._pool

    def _ids_for(self, rows: np.ndarray) -> np.ndarray:
        found = self.ids[np.where(rows >= 0, rows, 0)]
        missing = rows < 0
        if missing.any():
            kind = self.ids.dtype.kind
            if kind not in "iU":
                found = found.astype(object)
            found[missing] = -1 if kind == "i" else ("" if kind == "U" else None)
        return found

    def close(self) -> None:
        """Stop the shard threads (the index stays usable; a later search starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
