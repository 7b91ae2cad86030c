"""Hubness of rare-class codes: do the codes of a rare class sit near their own pair, or near a hub?

A cross-modal hashing model can post a good pooled mAP while the queries of a rare class are coded
like the majority class (a "hub"): the rare image then lies nearer to the majority's reports than
to its own report, and its class AP falls to chance. Two mean Hamming distances make that visible:

    own  = mean_{q in Q} d(a_q, b_q)                         (a query to its own pair's code)
    hub  = mean_{q in Q} mean_{j in H} d(a_q, b_j)           (a query to the hub items' codes)

Q = the queries that carry a rare label, a = their codes in the query modality, b = the other
modality's codes (b_q = the query's own pair), H = the database items that carry only the hub
label (e.g. "normal fundus" reports). Random K-bit codes give K/2 for both. A healthy model has
own << K/2 and own < hub; a collapsed one has own > hub (the rare query is nearer the hub than
its own pair). `hub_top_k` is the share of hub items among each query's k nearest database items
(stable Hamming ranking), against the hub's share of the database (`hub_base_rate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from trainer.evaluate import _as_packed, hamming_distances, hamming_rank

__all__ = ["Hubness", "hubness", "neighbour_classes", "rare_class_hubness", "rarest_classes"]


@dataclass(frozen=True)
class Hubness:
    """Mean Hamming distances of rare-class queries (see the module docstring)."""

    queries: int
    bits: int
    own: float  # mean distance from a query to its own pair's code
    hub: float  # mean distance from a query to the hub items' codes
    hub_items: int
    hub_top_k: float  # mean share of hub items among the k nearest database items
    hub_base_rate: float  # share of hub items in the database
    k: int
    nearer_hub: float  # share of queries whose own pair is farther than the mean hub item

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hubness(query_codes: Any, paired_codes: Any, db_codes: Any, db_is_hub: Any, *, k: int = 10) -> Hubness:
    """Hubness of Q queries: `query_codes` (Q, K) and their own pairs' `paired_codes` (Q, K) in the
    other modality, against `db_codes` (N, K) of which `db_is_hub` (N,) marks the hub items.

    Codes are packed uint8 (trainer.evaluate) or continuous (packed by sign, >= 0 is bit 1).
    """
    q, own = _as_packed(query_codes), _as_packed(paired_codes)
    db = _as_packed(db_codes)
    hub_mask = np.asarray(db_is_hub, dtype=bool)
    if q.shape != own.shape:
        raise ValueError(f"queries {q.shape} and their pairs {own.shape} differ in shape")
    if hub_mask.shape != (len(db),):
        raise ValueError(f"db_is_hub must have one entry per database item ({len(db)}), got {hub_mask.shape}")
    bits = q.shape[1] * 8
    if len(q) == 0:
        return Hubness(0, bits, float("nan"), float("nan"), int(hub_mask.sum()), float("nan"),
                       float(hub_mask.mean()) if len(db) else float("nan"), k, float("nan"))
    d_own = np.unpackbits(np.bitwise_xor(q, own), axis=1).sum(axis=1).astype(np.float64)
    if hub_mask.any():
        d_hub = hamming_distances(q, db[hub_mask]).astype(np.float64).mean(axis=1)
    else:
        d_hub = np.full(len(q), np.nan)
    k = min(k, len(db))
    _, top = hamming_rank(q, db, k)
    return Hubness(queries=len(q), bits=bits, own=float(d_own.mean()), hub=float(np.mean(d_hub)),
                   hub_items=int(hub_mask.sum()), hub_top_k=float(hub_mask[top].mean()),
                   hub_base_rate=float(hub_mask.mean()), k=k, nearer_hub=float(np.mean(d_own > d_hub)))


def rarest_classes(train_labels: np.ndarray, names: Sequence[str], n: int = 5) -> list[str]:
    """The `n` classes with the fewest training positives (ties by name), as the report's rare-class table."""
    counts = np.asarray(train_labels).astype(bool).sum(axis=0)
    order = sorted(range(len(names)), key=lambda c: (int(counts[c]), names[c]))
    return [names[c] for c in order[:n]]


def rare_class_hubness(image_codes: Any, text_codes: Any, labels: np.ndarray, names: Sequence[str],
                       query_idx: Sequence[int], db_idx: Sequence[int], rare: Sequence[str], hub: str, *,
                       k: int = 10) -> dict[str, Hubness]:
    """Hubness both ways for the queries that carry any `rare` label, the hub being the database
    items labelled `hub` only: "i2t" (rare query images vs their own report and the hub's reports)
    and "t2i" (rare query reports vs their own image and the hub's images).

    `image_codes[i]` and `text_codes[i]` are pair i; `labels` (N, C) multi-hot in `names` order.
    """
    labels = np.asarray(labels).astype(bool)
    q_idx, d_idx = np.asarray(query_idx, dtype=np.int64), np.asarray(db_idx, dtype=np.int64)
    unknown = [c for c in (*rare, hub) if c not in names]
    if unknown:
        raise ValueError(f"unknown class(es): {', '.join(unknown)}")
    rare_cols = [list(names).index(c) for c in rare]
    hub_col = list(names).index(hub)
    rows = q_idx[labels[q_idx][:, rare_cols].any(axis=1)]
    db_hub = labels[d_idx, hub_col] & (labels[d_idx].sum(axis=1) == 1)
    img, txt = _as_packed(image_codes), _as_packed(text_codes)
    return {"i2t": hubness(img[rows], txt[rows], txt[d_idx], db_hub, k=k),
            "t2i": hubness(txt[rows], img[rows], img[d_idx], db_hub, k=k)}


def neighbour_classes(query_codes: Any, query_labels: np.ndarray, db_codes: Any, db_labels: np.ndarray,
                      names: Sequence[str], classes: Sequence[str], *, k: int = 20) -> dict[str, dict[str, float]]:
    """Per class c of `classes`: the mean share of each label among the k nearest database items
    (stable Hamming ranking) of the queries labelled c. Where a rare class's AP drops while the
    codes do not collapse onto the hub, this says which class its queries are coded next to.
    """
    q_lab, d_lab = np.asarray(query_labels).astype(bool), np.asarray(db_labels).astype(bool)
    q, db = _as_packed(query_codes), _as_packed(db_codes)
    _, top = hamming_rank(q, db, min(k, len(db)))
    out = {}
    for c in classes:
        rows = np.flatnonzero(q_lab[:, list(names).index(c)])
        share = d_lab[top[rows]].mean(axis=(0, 1)) if len(rows) else np.full(len(names), np.nan)
        out[c] = {name: float(share[j]) for j, name in enumerate(names)}
    return out
