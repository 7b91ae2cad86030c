"""Does a query image look like the library's images to the backbone's pretrained layers?

Why: the hash codes of a model trained on fundus photographs put a CT slice near fundus codes,
and the model-free image statistics (core/image_stats.py) still let 17 % of MedPix CT/MR slices
and 9 % of the misc DICOMs through (benchmarks/results/ood_detection.md). The frozen, pretrained
part of the image tower (the "stem": every block below the trained top) was trained on millions of
varied pictures and tells a brain MR from a retina at once.

How: the stem's output, average-pooled to one vector per image, is captured during the forward
the encoder runs anyway (core/encoder/stem_features.py). A query's score is its mean cosine
distance to the K nearest of up to REFERENCE_MAX library images; the threshold is MARGIN times
the PERCENTILE-th percentile of held-out library images' leave-one-out scores (the same
calibration as the other checks; the margin keeps this third image check's false alarms rare,
since search flags a query when any check fires).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

K = 5
PERCENTILE = 99.0
MARGIN = 1.25  # held-out ODIR images: 99th pct 0.10, max 0.14; MedPix CT/MR minimum 0.16 (embedded stem)
CALIBRATION = 400
MIN_REFERENCE = 20
REFERENCE_MAX = 1000  # library images the reference keeps (a fixed sample of bigger libraries)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class FeatureReference:
    """L2-normalised stem features of library images and the distance above which a query is unlike all."""

    points: np.ndarray
    scores: np.ndarray  # sorted leave-one-out scores of held-out library images
    threshold: float

    def score(self, feature: np.ndarray) -> float:
        d = 1.0 - self.points @ _unit(feature)
        kk = min(K, len(d))
        return float(np.partition(d, kk - 1)[:kk].mean())

    def is_out(self, score: float) -> bool:
        return score > self.threshold

    def reason(self, score: float) -> str:
        return (f"Image feature check: to the model's pretrained image layers it looks unlike this library's "
                f"images (cosine distance {score:.2f} to its {K} nearest library images; {PERCENTILE:g} % of the "
                f"library's own images are within {self.threshold / MARGIN:.2f}).")


def sample_rows(n: int, limit: int = REFERENCE_MAX, seed: int = 0) -> np.ndarray:
    """Which of n library images the reference keeps (all, or a fixed random sample)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def build_feature_reference(features: np.ndarray) -> FeatureReference | None:
    """Leave-one-out k-NN cosine distances of up to CALIBRATION library images; None when too few."""
    if len(features) < MIN_REFERENCE:
        return None
    points = _unit(features)
    rows = np.sort(np.random.default_rng(0).choice(len(points), size=min(len(points), CALIBRATION), replace=False))
    d = 1.0 - points[rows] @ points.T
    d[np.arange(len(rows)), rows] = np.inf
    kk = min(K, len(points) - 1)
    scores = np.sort(np.partition(d, kk - 1, axis=1)[:, :kk].mean(axis=1))
    return FeatureReference(points, scores, float(np.percentile(scores, PERCENTILE)) * MARGIN)
