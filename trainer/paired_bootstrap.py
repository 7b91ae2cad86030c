"""Paired per-query bootstrap intervals for "method minus BASE", and the verdict they allow.

Both methods answer the same test queries (one split for every run), so the per-query difference
d_q = AP_method(q) - AP_base(q), averaged over the training seeds both have, is resampled over
queries: the interval says how much the mean difference could move with another draw of queries
of the same kind. "beats" / "loses" only when the whole 95 % interval is above / below zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    queries: int
    seeds: int

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "beats"
        if self.high < 0:
            return "loses"
        return "ties"

    def text(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] {self.verdict}"


def paired_interval(method_ap: Sequence[Sequence[float]], base_ap: Sequence[Sequence[float]], *,
                    resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap of the mean per-query difference.

    `method_ap` / `base_ap`: one per-query AP list per seed (same queries, same order, seeds paired
    by position). The per-query difference is averaged over the paired seeds, then queries are
    resampled with replacement `resamples` times (seeded: the same inputs give the same interval).
    """
    if len(method_ap) != len(base_ap) or not method_ap:
        raise ValueError("give the same number (>= 1) of seeds for the method and BASE")
    m, b = np.asarray(method_ap, np.float64), np.asarray(base_ap, np.float64)
    if m.shape != b.shape:
        raise ValueError(f"per-query AP shapes differ: {m.shape} vs {b.shape}")
    diff = (m - b).mean(axis=0)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[picks].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(diff.mean()), float(low), float(high), len(diff), len(m))


def paired_class_interval(classes: Sequence[tuple[Sequence[int], Sequence[Sequence[float]], Sequence[Sequence[float]]]],
                          queries: int, *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Bootstrap of a class-level difference: the mean over classes of the mean per-query difference
    among each class's queries (the rare-class AP of the fair report, method minus BASE).

    `classes`: per class, (positions of its queries among all `queries` test queries, method AP per
    seed, BASE AP per seed), APs aligned with the positions. As in `paired_interval` the test
    queries are resampled, not class members, so a query in two classes counts in both with the
    same weight; a class left without queries in a resample is left out of that resample's mean.
    """
    if not classes:
        raise ValueError("give at least one class")
    parts = []
    for index, method_ap, base_ap in classes:
        m, b = np.asarray(method_ap, np.float64), np.asarray(base_ap, np.float64)
        if m.shape != b.shape or m.ndim != 2 or m.shape[1] != len(index) or not len(index):
            raise ValueError(f"per-query AP shapes {m.shape} / {b.shape} do not match {len(index)} class queries")
        parts.append((np.asarray(index, np.int64), (m - b).mean(axis=0)))
    seeds = np.asarray(classes[0][1]).shape[0]
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(queries, np.full(queries, 1.0 / queries), size=resamples).astype(np.float64)
    per_class = np.full((resamples, len(parts)), np.nan)
    for c, (index, diff) in enumerate(parts):
        w = weights[:, index]
        total = w.sum(axis=1)
        per_class[total > 0, c] = (w @ diff)[total > 0] / total[total > 0]
    filled = ~np.isnan(per_class).all(axis=1)
    means = np.nanmean(per_class[filled], axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    point = float(np.mean([diff.mean() for _, diff in parts]))
    return Interval(point, float(low), float(high), queries, seeds)
