"""trainer.hubness on hand-made 8-bit codes: every expected number is counted by hand below."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.hubness import hubness, neighbour_classes, rare_class_hubness, rarest_classes


def _codes(*bits: str) -> np.ndarray:
    """'+-' strings -> (N, K) float codes (+1 / -1)."""
    return np.array([[1.0 if c == "+" else -1.0 for c in b] for b in bits], dtype=np.float32)


def test_hubness_counts_distances_by_hand() -> None:
    queries = _codes("++++++++", "--------")
    own = _codes("+++++++-", "++++++++")  # 1 bit and 8 bits away
    db = _codes("++++++++", "+++++---", "--------")  # hub: items 0 and 1
    h = hubness(queries, own, db, [True, True, False], k=1)
    assert h.queries == 2 and h.bits == 8 and h.hub_items == 2 and h.k == 1
    assert h.own == pytest.approx((1 + 8) / 2)
    # query 0: 0 and 3 bits to the hub items (mean 1.5); query 1: 8 and 5 (mean 6.5)
    assert h.hub == pytest.approx((1.5 + 6.5) / 2)
    # nearest item: query 0 -> item 0 (hub), query 1 -> item 2 (not hub)
    assert h.hub_top_k == pytest.approx(0.5)
    assert h.hub_base_rate == pytest.approx(2 / 3)
    # own farther than the mean hub item: query 0 (1 > 1.5? no), query 1 (8 > 6.5: yes)
    assert h.nearer_hub == pytest.approx(0.5)


def test_packed_and_continuous_codes_agree() -> None:
    from trainer.evaluate import pack_signs

    rng = np.random.default_rng(0)
    q, own, db = rng.standard_normal((4, 16)), rng.standard_normal((4, 16)), rng.standard_normal((6, 16))
    hub = np.array([1, 0, 1, 0, 0, 1], bool)
    assert hubness(q, own, db, hub) == hubness(pack_signs(q), pack_signs(own), pack_signs(db), hub)


def test_rare_class_hubness_picks_rare_queries_and_single_label_hub_items() -> None:
    names = ["G", "N", "O"]
    labels = np.array([[1, 0, 0],   # 0: query, rare (G)
                       [0, 1, 0],   # 1: query, normal: not a rare query
                       [0, 1, 0],   # 2: db, hub (normal only)
                       [0, 1, 1],   # 3: db, normal + other: not a hub item
                       [1, 0, 0]])  # 4: db, rare
    img = _codes("++++++++", "++++++++", "--------", "++++----", "++++++++")
    txt = _codes("+++++++-", "--------", "++++++++", "--------", "+-+-+-+-")
    out = rare_class_hubness(img, txt, labels, names, [0, 1], [2, 3, 4], rare=["G"], hub="N", k=1)
    i2t, t2i = out["i2t"], out["t2i"]
    assert i2t.queries == t2i.queries == 1 and i2t.hub_items == 1
    # image 0 vs its report 0: 1 bit; vs the hub report (item 2): 0 bits; nearest report: item 2 (hub)
    assert (i2t.own, i2t.hub, i2t.hub_top_k, i2t.nearer_hub) == (1.0, 0.0, 1.0, 1.0)
    # report 0 vs its image 0: 1 bit; vs the hub image (item 2): 7 bits; nearest image: item 4 (1 bit)
    assert (t2i.own, t2i.hub, t2i.hub_top_k, t2i.nearer_hub) == (1.0, 7.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="unknown class"):
        rare_class_hubness(img, txt, labels, names, [0], [2], rare=["X"], hub="N")


def test_rarest_classes_by_training_positives() -> None:
    train = np.array([[1, 1, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]])
    assert rarest_classes(train, ["a", "b", "c", "d"], 2) == ["a", "c"]  # 1 and 1 positives, ties by name


def test_neighbour_classes_counts_the_labels_of_each_querys_nearest_items() -> None:
    names = ["D", "H"]
    queries = _codes("++++++++", "--------")
    q_labels = np.array([[0, 1], [1, 0]])  # query 0: H, query 1: D
    db = _codes("+++++++-", "++++++--", "--------")
    db_labels = np.array([[1, 0], [1, 1], [0, 1]])
    out = neighbour_classes(queries, q_labels, db, db_labels, names, ["H", "D"], k=2)
    # query 0 (H): nearest items 0 (1 bit, D) and 1 (2 bits, D+H) -> D 2/2, H 1/2
    assert out["H"] == {"D": 1.0, "H": 0.5}
    # query 1 (D): nearest items 2 (0 bits, H) and 1 (6 bits, D+H) -> D 1/2, H 2/2
    assert out["D"] == {"D": 0.5, "H": 1.0}
