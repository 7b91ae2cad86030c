"""Image statistics that need no model: what kind of picture a model input is.

Two users:

* the out-of-domain check (core/search/ood.py): a hash model trained on fundus photographs maps a
  chest radiograph or a screenshot close to fundus codes (it never learnt to tell them apart), so
  the code distance alone misses most out-of-domain images (benchmarks/results/ood_detection.md).
  These statistics do not depend on the model: a query whose statistics are far from every library
  image's (k-NN distance in standardised feature space, calibrated on held-out library images like
  the code check) is out of domain whatever the method.
* domain assignment on import (core/ingest/rows.py): `guess_domain` says fundus / chest / other
  with a confidence, instead of "grey = chest, colour = fundus".

All features are computed on the model input (RGB, letterboxed onto a black square, what ingest
stores as inputs/<case>.png and what a query is turned into), downsampled to 64 x 64.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 64
K = 5
PERCENTILE = 99.0
MARGIN = 1.0  # the threshold is this times the percentile (1.25 missed half the screenshots: ood_detection.md)
CALIBRATION = 400
MIN_REFERENCE = 20
REFERENCE_MAX = 3000  # library images the reference keeps (a fixed sample of bigger libraries)

# A grey picture stored with a colour cast (scanned film, a warm JPEG) has its colour fixed by its
# brightness: per channel c = a_c * luminance + b_c. Under this share of pixels off that line (and
# not a black-cornered field of view) it is grey for the domain guess. Measured on real images:
# tinted chest radiographs with coloured arrows <= 0.032, ODIR fundus photographs with such low
# shares all have black corners (benchmarks/results/domain_assignment.md).
TINTED_GREY_SHARE = 0.035
TINT_RESIDUAL = 0.05
LIT_CORNERS = 0.15

_yy, _xx = np.mgrid[:SIDE, :SIDE]
_RADIUS = np.hypot(_yy - (SIDE - 1) / 2, _xx - (SIDE - 1) / 2) / (SIDE / 2)
_CORNERS = _RADIUS > 1.05
_DISC = _RADIUS < 0.6


def features(img: Image.Image) -> np.ndarray:
    """A 30-number description of one RGB image (colour, grey level, field of view, texture)."""
    small = np.asarray(_content(img.convert("RGB")).resize((SIDE, SIDE), Image.Resampling.BILINEAR),
                       dtype=np.float32) / 255
    r, g, b = small[..., 0], small[..., 1], small[..., 2]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    mx, mn = small.max(axis=2), small.min(axis=2)
    sat = np.where(mx > 0.05, (mx - mn) / np.maximum(mx, 1e-6), 0)
    gy, gx = np.abs(np.diff(lum, axis=0)), np.abs(np.diff(lum, axis=1))
    grad = (gy[:, :-1] + gx[:-1, :]) / 2
    hist = np.histogram(lum, bins=8, range=(0, 1))[0] / lum.size
    rings = [lum[(_RADIUS >= a) & (_RADIUS < c)].mean() for a, c in ((0, 0.3), (0.3, 0.6), (0.6, 0.9), (0.9, 1.05))]
    quant = (small * 15).round().astype(np.int32)
    colours = len(np.unique(quant[..., 0] * 256 + quant[..., 1] * 16 + quant[..., 2])) / 256
    return np.array([
        r.mean(), g.mean(), b.mean(), r.std(), g.std(), b.std(),
        np.abs(r - g).mean(), np.abs(r - b).mean(), np.abs(g - b).mean(), sat.mean(),
        (lum < 0.08).mean(), (lum > 0.92).mean(),
        lum[_CORNERS].mean(), lum[_DISC].mean(), *rings,
        grad.mean(), (grad > 0.1).mean(), (grad < 0.002).mean(), colours,
        *hist,
    ], dtype=np.float32)


def _content(img: Image.Image) -> Image.Image:
    """The picture without the black letterbox bars the model input adds around non-square images
    (whole rows / columns that are black), so a wide photo does not get a fundus photo's black corners."""
    arr = np.asarray(img)
    lit = arr.max(axis=2) > 10
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    if len(rows) < 8 or len(cols) < 8:
        return img
    return img.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))


def file_features(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return features(img)


@dataclass
class StatsReference:
    """Library images' features (standardised) and the k-NN distance above which a query is unlike all."""

    mean: np.ndarray
    scale: np.ndarray
    points: np.ndarray  # standardised features of the reference images
    scores: np.ndarray  # sorted leave-one-out k-NN distances of held-out library images
    threshold: float

    def score(self, feats: np.ndarray) -> float:
        z = (feats - self.mean) / self.scale
        d = np.sqrt(((self.points - z) ** 2).sum(axis=1))
        kk = min(K, len(d))
        return float(np.partition(d, kk - 1)[:kk].mean())


def build_stats_reference(feats: np.ndarray) -> StatsReference | None:
    """Calibrate on the library's own images: leave-one-out k-NN distances of up to CALIBRATION of them."""
    if len(feats) < MIN_REFERENCE:
        return None
    mean = feats.mean(axis=0)
    scale = feats.std(axis=0) + 0.02  # features nearly constant in the library must not blow up
    z = (feats - mean) / scale
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(z), size=min(len(z), CALIBRATION), replace=False))
    d = np.sqrt(((z[rows, None, :] - z[None, :, :]) ** 2).sum(axis=2))
    d[np.arange(len(rows)), rows] = np.inf
    kk = min(K, len(z) - 1)
    scores = np.sort(np.partition(d, kk - 1, axis=1)[:, :kk].mean(axis=1))
    return StatsReference(mean, scale, z, scores, float(np.percentile(scores, PERCENTILE)) * MARGIN)


# ---------------------------------------------------------------------------------- domain guess
@dataclass(frozen=True)
class DomainGuess:
    domain: str  # "chest", "fundus" or "other"
    confidence: float  # 0..1: how clearly the statistics point to it
    reason: str


def off_grey_share(img: Image.Image) -> float:
    """Share of pixels whose colour is not a linear function of their brightness (0 for any grey
    image, tinted or not; coloured arrows and labels add only their own few pixels)."""
    a = np.asarray(_content(img.convert("RGB")).resize((2 * SIDE, 2 * SIDE), Image.Resampling.BILINEAR),
                   dtype=np.float32).reshape(-1, 3) / 255
    lum = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    design = np.stack([lum, np.ones_like(lum)], axis=1)
    coef, *_ = np.linalg.lstsq(design, a, rcond=None)
    off = np.sqrt(np.square(a - design @ coef).sum(axis=1))
    return float((off > TINT_RESIDUAL).mean())


def guess_domain(img: Image.Image) -> DomainGuess:
    """Fundus photograph (colour, red/orange, a bright round field of view on black corners), chest
    radiograph (grey, the field filled edge to edge, no large black background) or something else
    (CT/MR: grey on a large black background; screenshots, photos: colour without a round field)."""
    f = features(img).astype(float)
    red_over_blue, colourful, sat = f[0] - f[2], f[6] + f[7] + f[8], f[9]
    corners, disc, dark = f[12], f[13], f[10]
    grey = (colourful < 0.03 and sat < 0.08) or (corners > LIT_CORNERS and off_grey_share(img) < TINTED_GREY_SHARE)
    if not grey:
        round_field = disc - corners  # bright disc, black corners
        score = (min(1.0, max(0.0, red_over_blue / 0.15)) * 0.5 + min(1.0, max(0.0, round_field / 0.2)) * 0.5)
        if score >= 0.5:
            return DomainGuess("fundus", round(min(0.99, 0.5 + score / 2), 2),
                               "colour, red-dominant, bright round field of view on dark corners")
        return DomainGuess("other", round(min(0.99, 1.0 - score), 2),
                           "colour but not a fundus photograph (no red round field of view)")
    if corners < 0.06 and dark > 0.15:  # a slice on a black background (black corners, much black)
        return DomainGuess("other", round(min(0.95, 0.5 + dark), 2),
                           f"grey on a large black background ({dark:.0%} of the image): a CT/MR-like slice")
    return DomainGuess("chest", round(min(0.9, 0.6 + (0.35 - min(dark, 0.35))), 2),
                       "grey, filled edge to edge: a radiograph")
