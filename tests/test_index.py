"""medhash_app.core.index: real FAISS indexes checked against the evaluator's ranking rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from medhash_app.core.errors import IndexCacheError
from medhash_app.core.index import BinaryIndex, BinaryIndexCache, content_checksum, gpu_available
from medhash_app.core.index.binary_index import _exact_topk
from trainer.evaluate import hamming_distances, hamming_rank


def tied_codes(seed: int, n: int, nbytes: int = 8, patterns: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Database and queries drawn from a few code patterns: most distances are tied."""
    rng = np.random.default_rng(seed)
    pats = rng.integers(0, 256, (patterns, nbytes), dtype=np.uint8)
    db = pats[rng.integers(0, patterns, n)]
    queries = np.vstack([pats[rng.integers(0, patterns, 4)],
                         rng.integers(0, 256, (3, nbytes), dtype=np.uint8)])
    return db, queries


def case_ids(n: int) -> np.ndarray:
    return np.array([f"{i:032x}" for i in range(n)])


# ------------------------------------------------------------------------------- ranking rule
@pytest.mark.parametrize("nbytes", [8, 16])
@pytest.mark.parametrize("kind,shards", [("flat", None), ("sharded", 1), ("sharded", 3), ("sharded", 7)])
def test_exact_kinds_follow_the_evaluator_rule(kind, shards, nbytes):
    db, queries = tied_codes(nbytes, 20_000, nbytes)
    index = BinaryIndex.build(db, kind=kind, shards=shards)
    for k in (1, 10, 333, 5_000):
        want_dist, want_rows = hamming_rank(queries, db, k=k)
        hits = index.search(queries, k)
        assert np.array_equal(hits.rows, want_rows), (kind, shards, k)
        assert np.array_equal(hits.distances, want_dist)
        assert hits.distances.dtype == np.int32


def test_flat_rule_holds_across_faiss_blocks():
    """More rows than FAISS's 65,536-code scan block and more queries than its 32-query batch."""
    db, _ = tied_codes(3, 140_000, 8, patterns=6)
    queries = np.vstack([db[:40], db[-3:]])
    hits = BinaryIndex.build(db).search(queries, 1_000)
    want_dist, want_rows = hamming_rank(queries, db, k=1_000)
    assert np.array_equal(hits.rows, want_rows) and np.array_equal(hits.distances, want_dist)


def test_ids_follow_rows_and_k_is_capped():
    db, queries = tied_codes(5, 50)
    ids = case_ids(50)
    index = BinaryIndex.build(db, ids)
    hits = index.search(queries[0], 80)                # 1-D query, k > ntotal
    assert hits.rows.shape == (1, 50)
    assert sorted(hits.rows[0].tolist()) == list(range(50))
    assert hits.ids.tolist() == [[ids[r] for r in hits.rows[0]]]
    int_ids = np.arange(1000, 1050)
    assert (BinaryIndex.build(db, int_ids, "sharded", shards=4).search(queries, 5).ids
            == int_ids[hamming_rank(queries, db, k=5)[1]]).all()


def test_search_rejects_bad_input():
    db, _ = tied_codes(6, 100)
    index = BinaryIndex.build(db)
    with pytest.raises(ValueError):
        index.search(np.zeros((2, 16), np.uint8), 3)          # other code length
    with pytest.raises(ValueError):
        index.search(np.zeros((2, 8), np.float32), 3)
    with pytest.raises(ValueError):
        index.search(db[:2], 0)
    with pytest.raises(ValueError):
        BinaryIndex.build(db, np.arange(99))
    with pytest.raises(ValueError):
        BinaryIndex.build(db, kind="lsh")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_sorted_by_rule_and_never_better_than_exact(kind):
    db, queries = tied_codes(7, 5_000, patterns=300)
    index = BinaryIndex.build(db, kind=kind, ef_search=64, nprobe=4)
    hits = index.search(queries, 20)
    exact_dist, _ = hamming_rank(queries, db, k=20)
    ok = hits.rows >= 0
    true_dist = np.take_along_axis(hamming_distances(queries, db), np.where(ok, hits.rows, 0), axis=1)
    assert np.array_equal(np.where(ok, true_dist, -1), hits.distances)
    assert (np.where(ok, hits.distances, np.iinfo(np.int32).max) >= exact_dist).all()
    for d, r in zip(hits.distances, hits.rows, strict=True):
        pairs = [(a, b) for a, b in zip(d, r, strict=True) if b >= 0]
        assert pairs == sorted(pairs)
    if kind == "ivf":
        index.set_search_params(nprobe=10_000)                 # all lists: exhaustive distances
        assert np.array_equal(index.search(queries, 20).distances, exact_dist)


def test_exact_topk_repairs_any_tie_order():
    """The GPU path: a search whose ties come back in random order (and random boundary picks)."""
    db, queries = tied_codes(8, 3_000, patterns=5)
    dist = hamming_distances(queries, db).astype(np.int64)
    rng = np.random.default_rng(0)

    def shuffled_search(q, k):
        noise = rng.random(dist.shape)
        order = np.lexsort((noise, dist), axis=-1)[:, :k]
        return np.take_along_axis(dist, order, axis=1).astype(np.int32), order

    def reference(q, k):
        return hamming_rank(q, db, k=k)

    for k in (1, 7, 600, 3_000):
        got_dist, got_rows = _exact_topk(shuffled_search, queries, k, len(db))
        want_dist, want_rows = hamming_rank(queries, db, k=k)
        assert np.array_equal(got_rows, want_rows) and np.array_equal(got_dist, want_dist)
        # a capped fetch (the GPU's k limit) hands big tie blocks to the exact fallback
        capped_dist, capped_rows = _exact_topk(shuffled_search, queries, k, len(db), max_fetch=k + 5,
                                               fallback=reference)
        assert np.array_equal(capped_rows, want_rows) and np.array_equal(capped_dist, want_dist)


def test_gpu_kind_needs_a_gpu():
    db, queries = tied_codes(9, 500)
    if gpu_available():
        hits = BinaryIndex.build(db, kind="gpu").search(queries, 50)
        assert np.array_equal(hits.rows, hamming_rank(queries, db, k=50)[1])
    else:
        with pytest.raises(RuntimeError):
            BinaryIndex.build(db, kind="gpu")


def test_sharded_search_is_thread_safe():
    db, queries = tied_codes(10, 30_000)
    index = BinaryIndex.build(db, kind="sharded", shards=5)
    want = hamming_rank(queries, db, k=25)[1]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: index.search(queries, 25).rows, range(12)))
    assert all(np.array_equal(r, want) for r in results)
    index.close()
    assert np.array_equal(index.search(queries, 25).rows, want)


@pytest.mark.parametrize("preset,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_the_index_sets_a_passive_openmp_wait_policy(preset, expected):
    """Set before FAISS's OpenMP runtime loads; a value the user chose is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, medhash_app.core.index; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected

# -------------------------------------------------------------------------------------- cache
@pytest.fixture()
def library(tmp_path: Path) -> Path:
    return tmp_path / "library"


def _check(index: BinaryIndex, db: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> None:
    want = hamming_rank(queries, db, k=30)[1]
    hits = index.search(queries, 30)
    assert np.array_equal(hits.rows, want)
    assert np.array_equal(hits.ids, ids[want])


def test_cache_builds_then_loads(library):
    db, queries = tied_codes(11, 4_000)
    ids = case_ids(len(db))
    cache = BinaryIndexCache(library)
    _check(cache.get("m1-image-64", ids, db), db, ids, queries)
    assert cache.last_status["m1-image-64"] == "built (missing)"
    index_path, sidecar_path = cache.paths("m1-image-64")
    assert index_path == library / "indexes" / "m1-image-64.faissbin"
    meta = json.loads(sidecar_path.read_text())
    assert meta["count"] == 4_000 and meta["bits"] == 64 and meta["kind"] == "flat"
    assert meta["checksum"] == content_checksum(ids, db) and meta["faiss_version"] == faiss.__version__
    _check(BinaryIndexCache(library).get("m1-image-64", ids, db), db, ids, queries)
    assert not list((library / "indexes").glob("*.tmp"))
    fresh = BinaryIndexCache(library)
    fresh.get("m1-image-64", ids, db)
    assert fresh.last_status["m1-image-64"] == "loaded"


@pytest.mark.parametrize("kind", ["sharded", "hnsw", "ivf"])
def test_cache_round_trips_every_cpu_kind(library, kind):
    db, queries = tied_codes(12, 3_000, patterns=400)
    ids = np.arange(len(db)) * 7
    built = BinaryIndexCache(library).get("k", ids, db, kind)
    cache = BinaryIndexCache(library)
    loaded = cache.get("k", ids, db, kind)
    assert cache.last_status["k"] == "loaded" and loaded.kind == kind
    a, b = built.search(queries, 15), loaded.search(queries, 15)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.ids, b.ids)
    if kind == "sharded":
        _check(loaded, db, ids, queries)


def test_deleted_index_file_is_rebuilt(library):
    db, queries = tied_codes(13, 2_000)
    ids = case_ids(len(db))
    cache = BinaryIndexCache(library)
    cache.get("key", ids, db)
    cache.paths("key")[0].unlink()
    _check(cache.get("key", ids, db), db, ids, queries)
    assert cache.last_status["key"] == "built (missing)"
    assert cache.paths("key")[0].is_file()


@pytest.mark.parametrize("damage", ["flip_code_byte", "truncate", "garbage_with_matching_sidecar",
                                    "sidecar_not_json"])
def test_damaged_cache_is_rebuilt(library, damage):
    db, queries = tied_codes(14, 2_000)
    ids = case_ids(len(db))
    cache = BinaryIndexCache(library)
    cache.get("key", ids, db)
    index_path, sidecar_path = cache.paths("key")
    data = bytearray(index_path.read_bytes())
    if damage == "flip_code_byte":                 # FAISS would still read this file
        data[-100] ^= 0xFF
        index_path.write_bytes(bytes(data))
        stale = faiss.read_index_binary(str(index_path))
        assert stale.ntotal == len(db)
    elif damage == "truncate":
        index_path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "garbage_with_matching_sidecar":  # passes the checksum, fails in FAISS
        index_path.write_bytes(b"not a faiss index" * 10)
        meta = json.loads(sidecar_path.read_text())
        meta["file_sha256"] = __import__("hashlib").sha256(index_path.read_bytes()).hexdigest()
        sidecar_path.write_text(json.dumps(meta))
    else:
        sidecar_path.write_text("{not json")
    _check(cache.get("key", ids, db), db, ids, queries)
    assert cache.last_status["key"].startswith("rebuilt (damaged")
    fresh = BinaryIndexCache(library)
    _check(fresh.get("key", ids, db), db, ids, queries)
    assert fresh.last_status["key"] == "loaded"


@pytest.mark.parametrize("change", ["code", "ids", "count", "kind", "build_option"])
def test_stale_cache_is_rebuilt(library, change):
    db, queries = tied_codes(15, 2_000)
    ids = case_ids(len(db))
    cache = BinaryIndexCache(library)
    cache.get("key", ids, db, "ivf" if change == "build_option" else "flat", ivf_nlist=None)
    kind, options = "flat", {}
    if change == "code":
        db = db.copy()
        db[5] ^= 0xFF
    elif change == "ids":
        ids = ids[::-1].copy()
    elif change == "count":
        db, ids = db[:-1], ids[:-1]
    elif change == "kind":
        kind = "sharded"
    else:
        kind, options = "ivf", {"ivf_nlist": 8}
    index = cache.get("key", ids, db, kind, **options)
    assert cache.last_status["key"].startswith("rebuilt (stale")
    if kind != "ivf":
        _check(index, db, ids, queries)
    assert BinaryIndexCache(library).get("key", ids, db, kind, **options).ntotal == len(db)


def test_failed_save_keeps_the_previous_files(library, monkeypatch):
    db, queries = tied_codes(16, 1_000)
    ids = case_ids(len(db))
    cache = BinaryIndexCache(library)
    cache.get("key", ids, db)
    before = [p.read_bytes() for p in cache.paths("key")]

    def disk_full(index, path):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("No space left on device")

    monkeypatch.setattr(faiss, "write_index_binary", disk_full)
    changed = db.copy()
    changed[0] ^= 1
    index = cache.get("key", ids, changed)            # still searchable, from memory
    _check(index, changed, ids, queries)
    assert "not saved" in cache.last_status["key"]
    assert [p.read_bytes() for p in cache.paths("key")] == before
    assert not list((library / "indexes").glob("*.tmp"))


def test_unwritable_cache_folder_still_serves(tmp_path):
    db, queries = tied_codes(17, 500)
    ids = case_ids(len(db))
    (tmp_path / "indexes").write_text("a file where the folder should be")
    cache = BinaryIndexCache(tmp_path)
    _check(cache.get("key", ids, db), db, ids, queries)
    assert "not saved" in cache.last_status["key"]


def test_cache_rejects_bad_requests(library):
    db, _ = tied_codes(18, 100)
    cache = BinaryIndexCache(library)
    for key in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(IndexCacheError):
            cache.get(key, np.arange(100), db)
    with pytest.raises(IndexCacheError):
        cache.get("key", np.arange(99), db)
    with pytest.raises(IndexCacheError):
        cache.get("key", np.arange(100), db, kind="lsh")
    with pytest.raises(IndexCacheError):
        cache.get("key", np.arange(100), db, colour="blue")
    if not gpu_available():
        with pytest.raises(IndexCacheError):
            cache.get("key", np.arange(100), db, kind="gpu")


def test_checksum_depends_on_ids_and_codes():
    db, _ = tied_codes(19, 50)
    ids = case_ids(50)
    base = content_checksum(ids, db)
    assert base == content_checksum(list(ids), db.copy())
    assert base != content_checksum(ids[::-1], db)
    flipped = db.copy()
    flipped[3, 2] ^= 4
    assert base != content_checksum(ids, flipped)
    assert content_checksum(np.arange(50), db) != content_checksum(np.arange(50) + 1, db)


def test_checksum_of_an_empty_code_set():
    """A model registered before it encoded anything has 0 codes: no memoryview TypeError."""
    empty = content_checksum(np.array([], dtype=str), np.zeros((0, 2), np.uint8))
    assert empty == content_checksum(np.array([], dtype=str), np.zeros((0, 2), np.uint8))
    assert empty != content_checksum(np.zeros(0, np.int64), np.zeros((0, 2), np.uint8))
    assert empty != content_checksum(np.array([], dtype=str), np.zeros((0, 4), np.uint8))
