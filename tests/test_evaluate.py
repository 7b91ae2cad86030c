"""trainer.evaluate against brute-force references: explicit enumeration of tie orders, naive loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trainer import evaluate as ev
from trainer.errors import DataError


# ---------------------------------------------------------------------------- brute references
def naive_distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(np.bitwise_xor(a, b)).sum())


def naive_relevant(qa: np.ndarray, da: np.ndarray) -> bool:
    return bool(np.any((qa > 0) & (da > 0)))


def ranked_relevance(q: np.ndarray, db: np.ndarray, ql: np.ndarray, dl: np.ndarray,
                     position: list[int]) -> list[bool]:
    """Relevance in ranked order: ascending distance, ties by the given position of each item."""
    dist = [naive_distance(q, x) for x in db]
    rel = [naive_relevant(ql, x) for x in dl]
    return [rel[i] for i in sorted(range(len(db)), key=lambda i: (dist[i], position[i]))]


def ap_of(rel: list[bool], k: int | None = None) -> float:
    total = sum(rel)
    cut = rel if k is None else rel[:k]
    hits, score = 0, 0.0
    for rank, is_rel in enumerate(cut, start=1):
        if is_rel:
            hits += 1
            score += hits / rank
    denom = total if k is None else min(total, k)
    return score / denom if denom else 0.0


def expected_over_orders(q, db, ql, dl, metric) -> float:
    """Average of `metric(ranked relevance)` over ALL orderings of the database (= random ties)."""
    dist = [naive_distance(q, x) for x in db]
    rel = [naive_relevant(ql, x) for x in dl]
    values = [metric([rel[i] for i in sorted(range(len(db)), key=lambda i: (dist[i], perm[i]))])
              for perm in itertools.permutations(range(len(db)))]
    return float(np.mean(values))


def tied_case(rng: np.random.Generator, nq: int, nd: int, nbytes: int = 1, patterns: int = 3,
              classes: int = 4) -> tuple[np.ndarray, ...]:
    """Codes drawn from a few patterns (many ties), sparse labels (some queries have no match)."""
    pats = rng.integers(0, 256, size=(patterns, nbytes), dtype=np.uint8)
    q = pats[rng.integers(0, patterns, nq)]
    db = pats[rng.integers(0, patterns, nd)]
    ql = (rng.random((nq, classes)) < 0.35).astype(np.int64)
    dl = (rng.random((nd, classes)) < 0.35).astype(np.int64)
    return q, db, ql, dl


# --------------------------------------------------------------------------------------- codes
def test_pack_signs_bit_order_and_round_trip():
    x = -np.ones((2, 16), np.float32)
    x[0, 0] = 0.0           # >= 0 is bit 1; bit 0 of the code is the MSB of byte 0
    x[1, 15] = 0.5          # last bit is the LSB of the last byte
    packed = ev.pack_signs(x)
    assert packed.dtype == np.uint8 and packed.shape == (2, 2)
    assert packed.tolist() == [[0b10000000, 0], [0, 0b00000001]]
    signs = np.where(np.random.default_rng(0).random((5, 64)) < 0.5, -1.0, 1.0).astype(np.float32)
    assert np.array_equal(ev.unpack_codes(ev.pack_signs(signs), 64), signs)


def test_pack_signs_accepts_torch_and_rejects_odd_bits():
    torch = pytest.importorskip("torch")
    t = torch.tensor([[0.3, -0.2, 0.1, -0.9, 0.0, -0.1, 0.2, -0.3]])
    assert ev.pack_signs(t).tolist() == [[0b10101010]]
    with pytest.raises(ValueError):
        ev.pack_signs(np.zeros((1, 12)))
    with pytest.raises(ValueError):
        ev.unpack_codes(np.zeros((1, 2), np.uint8), 8)


@pytest.mark.parametrize("nbytes", [1, 3, 8, 16, 17])
def test_hamming_distances_match_naive(nbytes):
    rng = np.random.default_rng(nbytes)
    q = rng.integers(0, 256, (4, nbytes), dtype=np.uint8)
    db = rng.integers(0, 256, (9, nbytes), dtype=np.uint8)
    got = ev.hamming_distances(q, db)
    want = [[naive_distance(a, b) for b in db] for a in q]
    assert got.tolist() == want


def test_hamming_rank_is_distance_then_position():
    rng = np.random.default_rng(1)
    q, db, _, _ = tied_case(rng, 5, 40, nbytes=2)
    dist, idx = ev.hamming_rank(q, db, k=17)
    for row in range(len(q)):
        want = sorted(range(len(db)), key=lambda i: (naive_distance(q[row], db[i]), i))[:17]
        assert idx[row].tolist() == want
        assert dist[row].tolist() == [naive_distance(q[row], db[i]) for i in want]


def test_label_relevance_shares_one_label():
    ql = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 1]])
    dl = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    assert ev.label_relevance(ql, dl).tolist() == [[True, False, False], [False, False, False],
                                                   [True, True, False]]


# ---------------------------------------------------------------------------------- histograms
@pytest.mark.parametrize("bits,classes", [(8, 3), (64, 14), (128, 20), (136, 70)])
def test_distance_histograms_match_bincount(bits, classes):
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 256, (21, bits // 8), dtype=np.uint8)
    db = rng.integers(0, 256, (300, bits // 8), dtype=np.uint8)
    ql, dl = rng.random((21, classes)) < 0.1, rng.random((300, classes)) < 0.1
    n, r = ev.distance_histograms(q, db, ql, dl)
    for row in range(len(q)):
        d = [naive_distance(q[row], b) for b in db]
        rel = [naive_relevant(ql[row], x) for x in dl]
        assert n[row].tolist() == np.bincount(d, minlength=bits + 1).tolist()
        assert r[row].tolist() == np.bincount(np.array(d)[rel], minlength=bits + 1).tolist()


def test_threaded_histograms_equal_single_thread():
    rng = np.random.default_rng(5)
    q = rng.integers(0, 256, (70, 8), dtype=np.uint8)            # 70 x 65,000 pairs > parallel cut
    db = rng.integers(0, 256, (65_000, 8), dtype=np.uint8)
    ql, dl = rng.random((70, 14)) < 0.15, rng.random((65_000, 14)) < 0.15
    single = ev.distance_histograms(q, db, ql, dl, threads=1)
    multi = ev.distance_histograms(q, db, ql, dl, threads=3)
    assert np.array_equal(single[0], multi[0]) and np.array_equal(single[1], multi[1])
    assert (single[0].sum(axis=1) == len(db)).all()


# ------------------------------------------------------------------- metrics vs enumerated ties
@pytest.mark.parametrize("seed", range(4))
def test_map_at_all_is_expected_ap_over_all_tie_orders(seed):
    rng = np.random.default_rng(seed)
    q, db, ql, dl = tied_case(rng, 3, 6)
    want = np.mean([expected_over_orders(q[i], db, ql[i], dl, ap_of) for i in range(len(q))])
    assert ev.map_at_all(q, db, ql, dl) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4, 6, 9])
def test_map_precision_recall_at_k_over_all_tie_orders(k):
    rng = np.random.default_rng(10 + k)
    q, db, ql, dl = tied_case(rng, 3, 6)

    def precision(rel):
        return sum(rel[:k]) / min(k, len(rel))

    def recall(rel):
        return sum(rel[:k]) / sum(rel) if sum(rel) else 0.0

    def mean_over_queries(metric):
        return np.mean([expected_over_orders(q[i], db, ql[i], dl, metric) for i in range(len(q))])

    assert ev.map_at_k(q, db, ql, dl, k) == pytest.approx(
        mean_over_queries(lambda rel: ap_of(rel, k)), abs=1e-12)
    assert ev.precision_at_k(q, db, ql, dl, k) == pytest.approx(mean_over_queries(precision), abs=1e-12)
    assert ev.recall_at_k(q, db, ql, dl, k) == pytest.approx(mean_over_queries(recall), abs=1e-12)


def test_map_at_k_equal_to_n_is_map_at_all():
    rng = np.random.default_rng(3)
    q, db, ql, dl = tied_case(rng, 9, 150, nbytes=2, patterns=6)
    assert ev.map_at_k(q, db, ql, dl, len(db)) == pytest.approx(ev.map_at_all(q, db, ql, dl), abs=1e-12)


def test_expected_ap_matches_random_orders_on_a_larger_case():
    """Monte-Carlo: the stable-position AP averaged over random database shuffles -> closed form."""
    rng = np.random.default_rng(7)
    q, db, ql, dl = tied_case(rng, 4, 80, nbytes=1, patterns=4, classes=3)
    closed = ev.map_at_all(q, db, ql, dl)
    draws = []
    for _ in range(400):
        perm = rng.permutation(len(db))
        draws.append(ev.map_at_all_stable(q, db[perm], ql, dl[perm]))
    sem = np.std(draws) / np.sqrt(len(draws))
    assert abs(np.mean(draws) - closed) < 4 * sem + 1e-9


def test_map_at_all_stable_matches_naive_loop():
    rng = np.random.default_rng(11)
    q, db, ql, dl = tied_case(rng, 6, 50, nbytes=2, patterns=5)
    want = np.mean([ap_of(ranked_relevance(q[i], db, ql[i], dl, list(range(len(db)))))
                    for i in range(len(q))])
    assert ev.map_at_all_stable(q, db, ql, dl) == pytest.approx(want, abs=1e-12)


def test_without_ties_both_tie_rules_agree():
    db = np.array([[0x00], [0x01], [0x03], [0x07], [0x0F], [0x1F], [0x3F], [0x7F], [0xFF]], np.uint8)
    rng = np.random.default_rng(2)
    perm = rng.permutation(len(db))                       # distances 0..8, all distinct
    q = np.zeros((1, 1), np.uint8)
    ql, dl = np.ones((1, 1)), (rng.random((len(db), 1)) < 0.5).astype(int)
    dl[perm[0]] = 1
    want = ap_of([bool(dl[i, 0]) for i in range(len(db))])   # db is in distance order already
    assert ev.map_at_all(q, db, ql, dl) == pytest.approx(want, abs=1e-15)
    assert ev.map_at_all_stable(q, db[perm], ql, dl[perm]) == pytest.approx(
        ev.map_at_all(q, db[perm], ql, dl[perm]), abs=1e-15)


def test_query_without_relevant_items_scores_zero_and_counts():
    q = np.array([[0b11110000], [0b00001111]], np.uint8)
    db = np.array([[0b11110000], [0b11110001], [0b00001111]], np.uint8)
    ql = np.array([[1, 0], [0, 0]])             # second query has no label -> nothing relevant
    dl = np.array([[1, 0], [0, 1], [1, 1]])
    # query 0: relevant items 0 (d=0) and 2 (d=8), item 1 (d=1) is not -> AP = (1 + 2/3) / 2
    assert ev.map_at_all(q, db, ql, dl) == pytest.approx((1 + 2 / 3) / 2 / 2)
    result = ev.evaluate_codes(q, q, np.vstack([ql, ql]), [0, 1], [0, 1], directions=("i2i",),
                               k_list=())
    assert result["i2i"]["queries_without_relevant"] == 1


def test_pr_curve_matches_naive_radius_loop():
    rng = np.random.default_rng(4)
    q, db, ql, dl = tied_case(rng, 5, 30, nbytes=1, patterns=5)
    precision, recall = ev.pr_curve(q, db, ql, dl)
    assert precision.shape == recall.shape == (9,)
    for radius in range(9):
        ps, rs = [], []
        for i in range(len(q)):
            d = [naive_distance(q[i], x) for x in db]
            rel = [naive_relevant(ql[i], x) for x in dl]
            inside = [j for j in range(len(db)) if d[j] <= radius]
            hits = sum(rel[j] for j in inside)
            ps.append(hits / len(inside) if inside else 0.0)
            rs.append(hits / sum(rel) if sum(rel) else 0.0)
        assert precision[radius] == pytest.approx(np.mean(ps), abs=1e-12)
        assert recall[radius] == pytest.approx(np.mean(rs), abs=1e-12)
    has_relevant = [any(naive_relevant(ql[i], x) for x in dl) for i in range(len(q))]
    assert recall[-1] == pytest.approx(np.mean(has_relevant))


# --------------------------------------------------------------------------------- evaluate_codes
def test_evaluate_codes_uses_the_right_modalities():
    rng = np.random.default_rng(8)
    image = rng.standard_normal((60, 32)).astype(np.float32)
    text = image + 0.8 * rng.standard_normal((60, 32)).astype(np.float32)
    labels = (rng.random((60, 5)) < 0.3).astype(np.float32)
    qi, di = np.arange(10), np.arange(10, 60)
    out = ev.evaluate_codes(image, text, labels, qi, di, k_list=(5, 20))
    pi, pt = ev.pack_signs(image), ev.pack_signs(text)
    assert out["bits"] == 32 and out["queries"] == 10 and out["database"] == 50
    pairs = {"i2t": (pi, pt), "t2i": (pt, pi), "i2i": (pi, pi), "t2t": (pt, pt)}
    for direction, (src, dst) in pairs.items():
        got = out[direction]
        assert got["map"] == pytest.approx(ev.map_at_all(src[qi], dst[di], labels[qi], labels[di]))
        assert got["map@5"] == pytest.approx(ev.map_at_k(src[qi], dst[di], labels[qi], labels[di], 5))
        assert got["p@20"] == pytest.approx(ev.precision_at_k(src[qi], dst[di], labels[qi], labels[di], 20))
        assert len(got["pr_precision"]) == 33
    assert out["i2t"]["map"] != out["t2i"]["map"]
    with pytest.raises(ValueError):
        ev.evaluate_codes(image, text, labels, qi, di, directions=("x2y",))


def test_empty_sets_and_bad_shapes_raise():
    codes = np.zeros((3, 8), np.uint8)
    labels = np.ones((3, 2))
    with pytest.raises(DataError):
        ev.map_at_all(codes[:0], codes, labels[:0], labels)
    with pytest.raises(DataError):
        ev.map_at_all(codes, codes[:0], labels, labels[:0])
    with pytest.raises(ValueError):
        ev.map_at_all(codes, np.zeros((3, 4), np.uint8), labels, labels)
    with pytest.raises(ValueError):
        ev.map_at_all(codes, codes, labels, np.ones((3, 5)))
    with pytest.raises(ValueError):
        ev.map_at_k(codes, codes, labels, labels, 0)


def test_popcount_fallback_without_numpy2(monkeypatch):
    rng = np.random.default_rng(9)
    q = rng.integers(0, 256, (6, 16), dtype=np.uint8)
    db = rng.integers(0, 256, (200, 16), dtype=np.uint8)
    ql, dl = rng.random((6, 3)) < 0.4, rng.random((200, 3)) < 0.4
    want = ev.distance_histograms(q, db, ql, dl)
    want_dist = ev.hamming_distances(q, db)
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    got = ev.distance_histograms(q, db, ql, dl)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert np.array_equal(ev.hamming_distances(q, db), want_dist)
