"""Retrieval metrics for binary hash codes: the papers' protocol, exact and fast.

Codes
    A K-bit code is stored packed: ``np.packbits(x >= 0, axis=1)``, shape (N, K/8) uint8, big-endian
    bit order inside each byte, so bit 0 of the code is the most significant bit of byte 0. The
    FAISS index stores the same bytes.

Ranking rule (THE rule; ``medhash_app.core.index`` returns exactly this order)
    Database items are ranked by ascending Hamming distance to the query; ties are broken by database
    position, ascending (a stable sort). ``hamming_rank`` implements it.

Relevance
    An item is relevant to a query when they share at least one label (multi-hot rows, an entry
    > 0 counts as a label).

Ties in the metrics
    With K bits there are only K+1 distances, so a ranked list is K+1 blocks of tied items. The
    metrics here (``map_at_all``, ``map_at_k``, ``precision_at_k``, ``recall_at_k``) report the
    *expected* value when the order inside each tie block is uniformly random (McSherry & Najork,
    ECIR 2008, "Computing information retrieval performance measures efficiently in the presence of
    tied scores"). It depends only on the per-query histograms n_d (items at distance d) and r_d
    (relevant items at distance d), which gives AP in closed form, ties included, in O(K) per query
    after one pass over the pairs. This is the number we report for the papers' protocol: the
    public code of DCMH, MCPH, PromptHash and TriPAH ranks with ``argsort``/``torch.sort``, whose tie
    order is an accident of the sort algorithm, so their value inside tie blocks is arbitrary; the
    expectation is the tie-neutral value of the same definition. ``map_at_all_stable`` gives the
    exact AP of the stable position rule (what the app shows); it sorts, so it is slower.

    Expected AP of one query, with N_<d / R_<d the items / relevant items before block d and R the
    relevant total: E[AP] = (1/R) * sum_d (r_d/n_d) * sum_{j=1..n_d} (R_<d + 1 + (j-1)a_d)/(N_<d + j),
    a_d = (r_d-1)/(n_d-1) (the hypergeometric mean of relevant items ahead in the block). The inner
    sum is m*a + (R_<d + 1 - a(N_<d + 1)) * (H[N_<d + m] - H[N_<d]) with harmonic numbers H and
    m = n_d (m = the part of the block inside the top k for mAP@k).

Conventions (chosen, documented, the same for every metric)
    * Every metric is a mean over ALL queries; a query contributes 0 wherever its value would be
      0/0. A query with no relevant item has AP = 0 and still counts (the papers' ``calc_map`` skips
      it in the sum but divides by the number of queries, which is the same thing). ``evaluate_codes``
      reports how many such queries there were.
    * mAP@k divides by min(R, k) (so a perfect ranking scores 1 and mAP@N = mAP@all). Some hashing
      code (HashNet/DeepHash) divides by the number of relevant items found in the top k instead.
    * P@k with k > N uses N. The PR curve gives, at each Hamming radius t = 0..K, the mean precision
      (relevant within radius / items within radius, 0 when none) and mean recall.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from trainer.errors import DataError

__all__ = [
    "distance_histograms", "evaluate_codes", "hamming_distances", "hamming_rank", "label_relevance",
    "map_at_all", "map_at_all_stable", "map_at_k", "metrics_from_histograms", "pack_signs", "per_query_ap", "pr_curve",
    "precision_at_k", "recall_at_k", "unpack_codes",
]

_QUERY_BLOCK = 16       # queries per kernel block: 16 x 8192 pairs per numpy call keeps the Python
_DB_BLOCK = 8192        # glue (which holds the GIL) small and the block buffers in L2/L3
_TASK_QUERIES = 64      # queries per thread-pool task
_PARALLEL_MIN_PAIRS = 1 << 22
_MAX_THREADS = 4        # np.add.at and the glue hold the GIL: measured no gain beyond 4 threads


_BYTE_POPCOUNT = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)


def _popcount(words: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Bits set per uint64 word: np.bitwise_count (numpy >= 2), else a byte lookup table."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words, out=out)
    per_byte = _BYTE_POPCOUNT[words.view(np.uint8)].reshape(*words.shape, 8)
    return np.sum(per_byte, axis=-1, dtype=np.uint8 if out is None else out.dtype, out=out)


# ----------------------------------------------------------------------------------------- codes
def _to_numpy(x: Any) -> np.ndarray:
    """Accept numpy arrays and torch tensors (without importing torch)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def pack_signs(x: Any) -> np.ndarray:
    """(N, K) continuous codes -> (N, K/8) uint8; a value >= 0 is bit 1. K must be a multiple of 8."""
    arr = _to_numpy(x)
    if arr.ndim != 2 or arr.shape[1] % 8:
        raise ValueError(f"codes must be (N, K) with K a multiple of 8, got shape {arr.shape}")
    return np.packbits(arr >= 0, axis=1)


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """(N, bits/8) uint8 -> (N, bits) float32 in {-1, +1}; inverse of ``pack_signs``."""
    packed = _check_packed(packed)
    if packed.shape[1] * 8 != bits:
        raise ValueError(f"{packed.shape[1]} bytes per code do not hold {bits} bits")
    return np.unpackbits(packed, axis=1).astype(np.float32) * 2.0 - 1.0


def _check_packed(codes: Any) -> np.ndarray:
    arr = _to_numpy(codes)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ValueError(f"packed codes must be a 2-D uint8 array, got {arr.dtype} {arr.shape}")
    return arr


def _as_packed(codes: Any) -> np.ndarray:
    """Packed uint8 codes pass through; float/signed codes are packed by sign."""
    arr = _to_numpy(codes)
    return arr if arr.dtype == np.uint8 else pack_signs(arr)


def _code_words(packed: np.ndarray) -> list[np.ndarray]:
    """Split packed codes into contiguous uint64 columns (zero padded: padding adds no distance)."""
    n, nbytes = packed.shape
    width = -(-nbytes // 8) * 8
    padded = np.zeros((n, width), np.uint8)
    padded[:, :nbytes] = packed
    words = padded.view(np.uint64)
    return [np.ascontiguousarray(words[:, w]) for w in range(words.shape[1])]


def _check_pair(q_codes: Any, db_codes: Any) -> tuple[np.ndarray, np.ndarray]:
    q, db = _check_packed(q_codes), _check_packed(db_codes)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query codes have {q.shape[1] * 8} bits, database codes {db.shape[1] * 8}")
    if len(q) == 0:
        raise DataError("evaluation", "the query set is empty")
    if len(db) == 0:
        raise DataError("evaluation", "the retrieval set is empty")
    return q, db


def hamming_distances(q_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """(Q, N) uint16 Hamming distances between packed codes (popcount of XORed uint64 words)."""
    q, db = _check_pair(q_codes, db_codes)
    qw, dw = _code_words(q), _code_words(db)
    out = np.zeros((len(q), len(db)), np.uint16)
    for qcol, dcol in zip(qw, dw, strict=True):
        out += _popcount(np.bitwise_xor(qcol[:, None], dcol[None, :]))
    return out


def _chunks(total: int, per_row: int, budget: int = 1 << 24) -> list[tuple[int, int]]:
    step = max(1, budget // max(1, per_row))
    return [(s, min(total, s + step)) for s in range(0, total, step)]


def hamming_rank(q_codes: np.ndarray, db_codes: np.ndarray, k: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The ranking rule: (distances, db indices), each (Q, k), ascending distance then position."""
    q, db = _check_pair(q_codes, db_codes)
    k = len(db) if k is None else max(0, min(int(k), len(db)))
    dists, order = np.empty((len(q), k), np.int32), np.empty((len(q), k), np.int64)
    for s, e in _chunks(len(q), len(db)):
        d = hamming_distances(q[s:e], db)
        idx = np.argsort(d, axis=1, kind="stable")[:, :k]
        order[s:e], dists[s:e] = idx, np.take_along_axis(d, idx, axis=1)
    return dists, order


# ---------------------------------------------------------------------------------------- labels
def _check_labels(labels: Any, rows: int, name: str) -> np.ndarray:
    arr = _to_numpy(labels)
    if arr.ndim != 2 or len(arr) != rows:
        raise ValueError(f"{name} must be ({rows}, C) multi-hot, got shape {arr.shape}")
    return arr > 0


def _label_words(positive: np.ndarray) -> list[np.ndarray]:
    """Pack multi-hot rows into the narrowest unsigned words (one word when C <= 64)."""
    packed = np.packbits(positive, axis=1)
    nbytes = packed.shape[1]
    width = next((w for w in (1, 2, 4) if nbytes <= w), 8)
    cols = max(1, -(-nbytes // width)) * width      # at least one word, even with no classes
    padded = np.zeros((len(packed), cols), np.uint8)
    padded[:, :nbytes] = packed
    words = padded.view(np.dtype(f"u{width}"))
    return [np.ascontiguousarray(words[:, w]) for w in range(words.shape[1])]


def label_relevance(q_labels: Any, db_labels: Any) -> np.ndarray:
    """(Q, N) bool: the query and the item share at least one positive label."""
    q, db = _to_numpy(q_labels) > 0, _to_numpy(db_labels) > 0
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(f"label arrays must be (Q, C) and (N, C), got {q.shape} and {db.shape}")
    return (q.astype(np.float32) @ db.T.astype(np.float32)) > 0


# ------------------------------------------------------------------------------------ histograms
class _Kernel:
    """Per-pair pass: distance d and relevance -> bincount into n/r histograms for a query range."""

    def __init__(self, q: np.ndarray, db: np.ndarray, ql: np.ndarray, dl: np.ndarray) -> None:
        self.qw, self.dw = _code_words(q), _code_words(db)
        self.ql, self.dl = _label_words(ql), _label_words(dl)
        self.bins = q.shape[1] * 8 + 1
        self.key_dtype = np.uint8 if 2 * self.bins <= 256 else np.uint16
        self.n_db = len(db)

    def run(self, start: int, stop: int) -> np.ndarray:
        """(stop-start, 2*bins) counts: [:, :bins] non-relevant, [:, bins:] relevant, per distance."""
        hist = np.zeros((stop - start) * 2 * self.bins, np.intp)
        for a in range(start, stop, _QUERY_BLOCK):
            b = min(stop, a + _QUERY_BLOCK)
            self._block(a, b, hist[(a - start) * 2 * self.bins:(b - start) * 2 * self.bins])
        return hist.reshape(stop - start, 2 * self.bins)

    def _block(self, a: int, b: int, hist: np.ndarray) -> None:
        nq, width = b - a, min(_DB_BLOCK, self.n_db)
        xor = np.empty((nq, width), np.uint64)
        cnt = np.empty((nq, width), np.uint8)
        key = np.empty((nq, width), self.key_dtype)
        bump = np.empty((nq, width), self.key_dtype)
        lab = np.empty((nq, width), self.ql[0].dtype)
        rel = np.empty((nq, width), bool)
        flat = np.empty((nq, width), np.intp)
        offset = (np.arange(nq, dtype=np.intp) * 2 * self.bins)[:, None]
        for c in range(0, self.n_db, width):
            m = min(width, self.n_db - c)
            kk, rl, fl, bp = key[:, :m], rel[:, :m], flat[:, :m], bump[:, :m]
            for w, (qcol, dcol) in enumerate(zip(self.qw, self.dw, strict=True)):
                x = np.bitwise_xor(qcol[a:b, None], dcol[None, c:c + m], out=xor[:, :m])
                if w == 0:
                    _popcount(x, out=kk)
                else:
                    np.add(kk, _popcount(x, out=cnt[:, :m]), out=kk)
            for w, (qcol, dcol) in enumerate(zip(self.ql, self.dl, strict=True)):
                lb = np.bitwise_and(qcol[a:b, None], dcol[None, c:c + m], out=lab[:, :m])
                if w == 0:
                    np.not_equal(lb, 0, out=rl)
                else:
                    rl |= lb != 0
            np.add(kk, np.multiply(rl, self.key_dtype(self.bins), out=bp), out=kk)
            np.add(kk, offset, out=fl)
            np.add.at(hist, fl.ravel(), 1)


def distance_histograms(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: Any, db_labels: Any,
                        *, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per query and distance d = 0..K: (n, r) = (all items, relevant items), each (Q, K+1) int64.

    One cache-blocked pass over all query/item pairs; query ranges run in a thread pool (numpy
    releases the GIL in the element-wise passes). Every metric here is a function of (n, r).
    """
    q, db = _check_pair(q_codes, db_codes)
    ql = _check_labels(q_labels, len(q), "query labels")
    dl = _check_labels(db_labels, len(db), "database labels")
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(f"query labels have {ql.shape[1]} classes, database labels {dl.shape[1]}")
    kernel = _Kernel(q, db, ql, dl)
    ranges = [(s, min(len(q), s + _TASK_QUERIES)) for s in range(0, len(q), _TASK_QUERIES)]
    workers = threads or min(_MAX_THREADS, os.cpu_count() or 1)
    if workers > 1 and len(ranges) > 1 and len(q) * len(db) >= _PARALLEL_MIN_PAIRS:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(lambda r: kernel.run(*r), ranges))
    else:
        parts = [kernel.run(*r) for r in ranges]
    hist = np.concatenate(parts).astype(np.int64)
    relevant = hist[:, kernel.bins:]
    return hist[:, :kernel.bins] + relevant, relevant


# -------------------------------------------------------------------- closed forms from (n, r)
def _harmonic(upto: int) -> np.ndarray:
    """H[i] = 1 + 1/2 + ... + 1/i, H[0] = 0 (float64; error << 1e-9 on the AP for N < 1e8)."""
    h = np.zeros(upto + 1)
    np.cumsum(1.0 / np.arange(1, upto + 1), out=h[1:])
    return h


def _inside(n: np.ndarray, before: np.ndarray, k: int | None) -> np.ndarray:
    """How many items of each tie block fall inside the top k."""
    return n if k is None else np.clip(k - before, 0, n)


def _expected_ap(n: np.ndarray, r: np.ndarray, k: int | None = None) -> np.ndarray:
    """Per-query expected AP (at k, normalised by min(R, k)) under random order within ties."""
    n_before = np.cumsum(n, axis=1) - n
    r_before = np.cumsum(r, axis=1) - r
    m = _inside(n, n_before, k)
    h = _harmonic(int(n.sum(axis=1).max()))
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(n > 1, (r - 1) / np.maximum(n - 1, 1), 0.0)
        b = r_before + 1 - a * (n_before + 1)
        inner = m * a + b * (h[n_before + m] - h[n_before])
        block = np.where(r > 0, r / np.maximum(n, 1) * inner, 0.0)
    total = r.sum(axis=1)
    denom = total if k is None else np.minimum(total, k)
    return np.divide(block.sum(axis=1), denom, out=np.zeros(len(n)), where=denom > 0)


def _expected_hits(n: np.ndarray, r: np.ndarray, k: int) -> np.ndarray:
    """Expected number of relevant items in the top k (ties broken at random)."""
    m = _inside(n, np.cumsum(n, axis=1) - n, k)
    return (r * m / np.maximum(n, 1)).sum(axis=1)


def _check_k(k: int) -> int:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def _precision_at(n: np.ndarray, r: np.ndarray, k: int) -> np.ndarray:
    k_eff = min(_check_k(k), int(n[0].sum()))
    return _expected_hits(n, r, k_eff) / k_eff


def _recall_at(n: np.ndarray, r: np.ndarray, k: int) -> np.ndarray:
    total = r.sum(axis=1)
    return np.divide(_expected_hits(n, r, _check_k(k)), total, out=np.zeros(len(n)), where=total > 0)


def _pr(n: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n_in, r_in = np.cumsum(n, axis=1), np.cumsum(r, axis=1)
    precision = np.divide(r_in, n_in, out=np.zeros(n.shape), where=n_in > 0)
    total = r_in[:, -1:]
    recall = np.divide(r_in, total, out=np.zeros(n.shape), where=total > 0)
    return precision.mean(axis=0), recall.mean(axis=0)


# ------------------------------------------------------------------------------- public metrics
def map_at_all(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: Any, db_labels: Any) -> float:
    """mAP over the whole retrieval set, expected under random tie order (closed form)."""
    n, r = distance_histograms(q_codes, db_codes, q_labels, db_labels)
    return float(_expected_ap(n, r).mean())


def map_at_k(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: Any, db_labels: Any, k: int) -> float:
    """mAP of the top k (normalised by min(R, k)), expected under random tie order."""
    n, r = distance_histograms(q_codes, db_codes, q_labels, db_labels)
    return float(_expected_ap(n, r, _check_k(k)).mean())


def precision_at_k(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: Any, db_labels: Any,
                   k: int) -> float:
    """Mean fraction of relevant items in the top k, expected under random tie order."""
    n, r = distance_histograms(q_codes, db_codes, q_labels, db_labels)
    return float(_precision_at(n, r, k).mean())


def recall_at_k(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: Any, db_labels: Any,
                k: int) -> float:
    """Mean fraction of a query's relevant items found in the top k, expected under random ties."""
    n, r = distance_histograms(q_codes, db_codes, q_labels, db_labels)
    return float(_recall_at(n, r, k).mean())


def pr_curve(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: Any, db_labels: Any
             ) -> tuple[np.ndarray, np.ndarray]:
    """(precision[K+1], recall[K+1]) within Hamming radius t = 0..K, mean over queries."""
    n, r = distance_histograms(q_codes, db_codes, q_labels, db_labels)
    return _pr(n, r)


def map_at_all_stable(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: Any, db_labels: Any) -> float:
    """Exact mAP@all of the stable position tie rule (the ranking the app shows); sorts per query."""
    q, db = _check_pair(q_codes, db_codes)
    ql = _check_labels(q_labels, len(q), "query labels")
    dl = _check_labels(db_labels, len(db), "database labels")
    ap = np.zeros(len(q))
    ranks = np.arange(1, len(db) + 1)
    for s, e in _chunks(len(q), len(db), budget=1 << 22):
        order = np.argsort(hamming_distances(q[s:e], db), axis=1, kind="stable")
        rel = np.take_along_axis(label_relevance(ql[s:e], dl), order, axis=1)
        hits = np.cumsum(rel, axis=1)
        total = hits[:, -1]
        score = np.where(rel, hits / ranks, 0.0).sum(axis=1)
        ap[s:e] = np.divide(score, total, out=np.zeros(e - s), where=total > 0)
    return float(ap.mean())


def per_query_ap(n: np.ndarray, r: np.ndarray, k: int | None = None) -> np.ndarray:
    """Each query's expected AP (at k) from its histograms: what paired bootstrap intervals resample."""
    return _expected_ap(n, r, None if k is None else _check_k(k))


def metrics_from_histograms(n: np.ndarray, r: np.ndarray, k_list: Sequence[int] = ()) -> dict[str, Any]:
    """Every metric of this module from one pair of histograms (see ``distance_histograms``)."""
    precision, recall = _pr(n, r)
    out: dict[str, Any] = {"map": float(_expected_ap(n, r).mean())}
    for k in k_list:
        out[f"map@{k}"] = float(_expected_ap(n, r, _check_k(k)).mean())
        out[f"p@{k}"] = float(_precision_at(n, r, k).mean())
        out[f"r@{k}"] = float(_recall_at(n, r, k).mean())
    out["pr_precision"], out["pr_recall"] = precision.tolist(), recall.tolist()
    out["queries_without_relevant"] = int((r.sum(axis=1) == 0).sum())
    return out


_DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image"),
               "i2i": ("image", "image"), "t2t": ("text", "text")}


def evaluate_codes(image_codes: Any, text_codes: Any, labels: Any, query_idx: Any, db_idx: Any,
                   directions: Sequence[str] = ("i2t", "t2i", "i2i", "t2t"),
                   k_list: Sequence[int] = (50, 100, 1000)) -> dict[str, Any]:
    """Metrics per direction for one code length: {"i2t": {"map": ..., "map@50": ...}, ...}.

    Codes are packed uint8 or continuous (packed by sign); rows of ``image_codes``, ``text_codes``
    and ``labels`` are aligned; ``query_idx`` / ``db_idx`` select the query and retrieval sets.
    """
    codes = {"image": _as_packed(image_codes), "text": _as_packed(text_codes)}
    labels_arr = _to_numpy(labels)
    q_idx, d_idx = np.asarray(query_idx, np.int64), np.asarray(db_idx, np.int64)
    result: dict[str, Any] = {"bits": int(codes["image"].shape[1] * 8), "queries": len(q_idx),
                              "database": len(d_idx)}
    for direction in directions:
        if direction not in _DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; use {sorted(_DIRECTIONS)}")
        src, dst = _DIRECTIONS[direction]
        n, r = distance_histograms(codes[src][q_idx], codes[dst][d_idx], labels_arr[q_idx],
                                   labels_arr[d_idx])
        result[direction] = metrics_from_histograms(n, r, k_list)
    return result
