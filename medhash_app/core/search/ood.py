"""Is a query like anything in the library? And what does a hit's distance mean?

Why: a hash model maps *every* input to some code, and some library code is always nearest, so a
chest DICOM searched in a fundus library came back as "pathological myopia" at 69 % similarity and
a screenshot of the app as "cataract" at 59 %. Nothing in `1 - distance / bits` says the query is
unlike every case.

How (no retraining, any method, per library and model): the reference is the library's own stored
codes of the query's modality (image queries: image codes, report queries: report codes). A query's
score is its mean Hamming distance to its K nearest library codes. The score is calibrated on
held-out in-domain queries: up to CALIBRATION library codes, each scored leave-one-out against the
rest; a query scoring above the PERCENTILE-th percentile of those in-domain scores (plus a one-bit
margin) is called out of domain. With PERCENTILE = 99 about 1 % of in-domain queries are flagged by
construction; benchmarks/results/ood_detection.md measures both rates on real data.

A hit's distance is shown as a calibrated percentile ("closer than 80 % of in-domain matches"): the
share of in-domain top-k match distances (held-out library items searched against the same target
codes, the item's own case left out) that are larger than the hit's distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.evaluate import hamming_distances

K = 5  # nearest library codes a query's score averages over
PERCENTILE = 99.0  # in-domain scores above this percentile are called out of domain
MARGIN_BITS = 1.0  # a query must be this much beyond the percentile (codes are integers: ties are common)
CALIBRATION = 400  # held-out in-domain queries (library codes) per reference
TOP_MATCHES = 10  # each held-out query's top matches form the distribution hits are compared with
MIN_REFERENCE = 20  # fewer library codes than this: too few to judge, no verdict


@dataclass
class OodReference:
    """In-domain scores of one (model, modality, bits) code set and the threshold derived from them."""

    k: int
    scores: np.ndarray  # sorted in-domain k-NN scores of the held-out library codes
    threshold: float
    cases: int

    def is_out(self, score: float) -> bool:
        return score > self.threshold

    def reason(self, score: float, kind: str, bits: int) -> str:
        what = "image" if kind == "image" else "report"
        return (f"Code check: its nearest {self.k} library {what}s differ in {score:.1f} of {bits} bits on average, "
                f"more than {PERCENTILE:g} % of the library's own {what}s do ({self.threshold:.1f} bits or fewer, "
                f"over {self.cases} cases).")


def knn_scores(q: np.ndarray, codes: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Mean Hamming distance of each packed query code to its k nearest rows of `codes`;
    `exclude[i]` is a row of `codes` that query i must not count (itself, leave-one-out)."""
    dist = hamming_distances(q, codes).astype(np.float32)
    if exclude is not None:
        dist[np.arange(len(q)), exclude] = np.inf
    kk = max(1, min(k, dist.shape[1] - (1 if exclude is not None else 0)))
    nearest = np.partition(dist, kk - 1, axis=1)[:, :kk]
    return nearest.mean(axis=1)


def held_out_rows(n: int, seed: int = 0) -> np.ndarray:
    """The library rows used as held-out in-domain queries (a fixed sample, so verdicts are repeatable)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, CALIBRATION), replace=False))


def build_reference(codes: np.ndarray, k: int = K) -> OodReference | None:
    """Leave-one-out k-NN scores of held-out library codes; None when the library is too small."""
    if len(codes) < MIN_REFERENCE:
        return None
    rows = held_out_rows(len(codes))
    scores = np.sort(knn_scores(codes[rows], codes, k, exclude=rows))
    threshold = float(np.percentile(scores, PERCENTILE)) + MARGIN_BITS
    return OodReference(k=k, scores=scores, threshold=threshold, cases=len(codes))


@dataclass
class MatchReference:
    """Distances of in-domain queries to their top matches among one target code set."""

    distances: np.ndarray  # sorted

    def closer_than(self, distance: float) -> float:
        """Share (0..1) of in-domain top matches that are farther than `distance`."""
        if len(self.distances) == 0:
            return 0.0
        farther = len(self.distances) - np.searchsorted(self.distances, distance, side="right")
        return float(farther) / len(self.distances)


def build_match_reference(q_ids: np.ndarray, q_codes: np.ndarray, t_ids: np.ndarray,
                          t_codes: np.ndarray) -> MatchReference | None:
    """Held-out library items of the query's modality searched against the target codes (their own
    case left out); the TOP_MATCHES smallest distances of each form the reference distribution."""
    if len(q_codes) < MIN_REFERENCE or len(t_codes) < 2:
        return None
    rows = held_out_rows(len(q_codes), seed=1)
    dist = hamming_distances(q_codes[rows], t_codes).astype(np.float32)
    position = {str(c): i for i, c in enumerate(t_ids)}
    for r, case_id in enumerate(q_ids[rows]):
        j = position.get(str(case_id))
        if j is not None:
            dist[r, j] = np.inf
    top = min(TOP_MATCHES, dist.shape[1] - 1)
    nearest = np.partition(dist, top - 1, axis=1)[:, :top].ravel()
    return MatchReference(np.sort(nearest[np.isfinite(nearest)]))
