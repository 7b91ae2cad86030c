"""Procedural colour fundus photographs with ODIR-style findings (codes N D G C A H M O).

An orange-red retina inside a black, vignetted circular field; an optic disc with a cup, vessel
trees growing from it, a darker macula. Each finding is painted where an ophthalmologist sees it:
D dots and exudates, G a large cup, C haze and blur, A drusen at the macula, H thin tortuous
arteries and flame haemorrhages, M a pale tessellated fundus with peripapillary atrophy, O laser
scars. For a right eye the disc lies on the image's right (nasal side), for a left eye on the left.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .raster import F32, branching_trees, draw_tapered, gaussian, smooth_noise, soft_step

SIZE = 256
FIELD_RADIUS = 0.47 * SIZE
ODIR_CODES: tuple[str, ...] = ("N", "D", "G", "C", "A", "H", "M", "O")
# Patient-level disease frequency (per patient with disease); N is what is left.
CODE_WEIGHTS: dict[str, float] = {"D": 0.42, "O": 0.1, "C": 0.1, "A": 0.1, "H": 0.1, "G": 0.09, "M": 0.09}
P_HEALTHY = 0.45
P_TWO_CODES = 0.2
P_EYE_KEEPS = 0.8  # a patient's disease shows in a given eye with this probability
EYES = ("right", "left")

_VEIN, _ARTERY = (128, 18, 15), (184, 41, 26)
_DISC, _CUP = (244, 178, 112), (255, 236, 200)
_BLOOD, _EXUDATE = (107, 10, 8), (250, 224, 107)
_SHADE_MAX = 1.5  # brightest background shading that the 8-bit grey keeps


@dataclass
class FundusCase:
    """One eye: ODIR codes, per-code details, and the eye it is."""

    labels: list[str]
    eye: str = "right"
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


def sample_patient_codes(rng: np.random.Generator) -> list[str]:
    """Diseases of one patient (both eyes draw from these); [] for a healthy patient."""
    if rng.random() < P_HEALTHY:
        return []
    names = list(CODE_WEIGHTS)
    p = np.array([CODE_WEIGHTS[n] for n in names])
    k = 2 if rng.random() < P_TWO_CODES else 1
    return [names[i] for i in sorted(rng.choice(len(names), size=k, replace=False, p=p / p.sum()))]


def sample_fundus_case(rng: np.random.Generator, patient_codes: list[str], eye: str,
                       forced: list[str] | None = None) -> FundusCase:
    """The eye shows each of the patient's codes with probability P_EYE_KEEPS (or exactly `forced`)."""
    codes = forced if forced is not None else [c for c in patient_codes if rng.random() < P_EYE_KEEPS]
    codes = [c for c in ODIR_CODES if c in codes and c != "N"]
    details = {c: _sample_detail(c, rng) for c in codes}
    return FundusCase(labels=codes or ["N"], eye=eye, details=details)


def _sample_detail(code: str, rng: np.random.Generator) -> dict[str, Any]:
    if code == "D":
        return {"severity": str(rng.choice(["mild", "moderate", "severe"], p=[0.35, 0.5, 0.15]))}
    if code == "G":
        return {"cup_ratio": round(float(rng.uniform(0.62, 0.85)), 2)}
    if code == "A":
        return {"wet": bool(rng.random() < 0.15)}
    if code == "C":
        return {"grade": round(float(rng.uniform(0.5, 1.0)), 2)}
    return {}


@functools.lru_cache(maxsize=1)
def _field_image() -> Image.Image:
    """The vignetted circular field as an 8-bit mask: the same for every image, so made once."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(F32)
    r = np.hypot(xx - SIZE / 2, yy - SIZE / 2) / F32(FIELD_RADIUS)
    mask = soft_step(1 - r, 0.012) * (1 - F32(0.55) * r ** 3)
    return Image.fromarray((mask * 255 + 0.5).astype(np.uint8), "L")


def draw_fundus(case: FundusCase, rng: np.random.Generator) -> np.ndarray:
    """Paint the eye: uint8 SIZE x SIZE x 3 RGB."""
    e = 1 if case.eye == "right" else -1
    disc = np.array([SIZE / 2 + e * rng.uniform(58, 66), SIZE / 2 + rng.uniform(-6, 6)])
    macula = np.array([SIZE / 2 - e * rng.uniform(8, 14), disc[1] + rng.uniform(2, 8)])
    img = _background(rng, macula, "M" in case.details)
    if "M" in case.details:  # peripapillary atrophy: a pale crescent on the temporal side of the disc
        _paint_dots(img, [(disc[0] - e * rng.uniform(6, 9), disc[1], 22.0)], (242, 209, 168), 1.5, 0.85)
    cup_ratio = case.details.get("G", {}).get("cup_ratio", rng.uniform(0.25, 0.45))
    _paint_dots(img, [(disc[0], disc[1], 15.0)], _DISC, 1.0, 1.0)
    _paint_dots(img, [(disc[0], disc[1], 15.0 * cup_ratio)], _CUP, 1.2, 0.9)
    _vessels(img, rng, disc, e, hypertensive="H" in case.details)
    for code in ("D", "A", "H", "O"):
        if code in case.details:
            _LESIONS[code](img, rng, disc, macula, case.details[code])
    if "C" in case.details:
        img = _cataract(img, case.details["C"]["grade"])
    return _finish(img, rng)


def _background(rng: np.random.Generator, macula: np.ndarray, myopic: bool) -> Image.Image:
    """Orange-red retina with choroidal texture and a darker macula (tessellated when myopic).

    The grey shading is computed once and coloured by a per-channel lookup table (C speed).
    """
    tint = np.array([rng.uniform(0.82, 0.95), rng.uniform(0.30, 0.42), rng.uniform(0.10, 0.17)])
    tint *= rng.uniform(0.75, 1.0)
    shade = 1 + F32(0.06) * smooth_noise(rng, SIZE, 10)
    if myopic:  # tessellated: broad choroidal vessels show through a thin retina
        shade *= 0.72 + 0.4 * _choroid(rng)
    axis = np.arange(SIZE, dtype=F32)
    dx2, dy2 = ((axis - F32(macula[0])) ** 2)[None, :], ((axis - F32(macula[1])) ** 2)[:, None]
    shade *= 1 - F32(0.38) * gaussian(dy2, 14.0) * gaussian(dx2, 14.0)  # separable: 1-D gaussians
    shade += F32(0.25) * gaussian(dy2, 1.2) * gaussian(dx2, 1.2)  # foveal reflex
    grey = np.clip(shade * F32(255 / _SHADE_MAX), 0, 255).astype(np.uint8)
    level = np.arange(256) * (_SHADE_MAX / 255)
    lut = level[None, :] * tint[:, None]  # (3 channels, 256 levels)
    if myopic:  # paler overall
        lut = lut * 0.8 + np.array([0.2, 0.13, 0.08])[:, None]
    lut = np.clip(lut * 255 + 0.5, 0, 255).astype(np.uint8).ravel().tolist()
    return Image.fromarray(grey, "L").convert("RGB").point(lut)


def _choroid(rng: np.random.Generator) -> np.ndarray:
    """A network of broad, blurred choroidal vessels (0..1), radiating from the posterior pole."""
    canvas = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False) + rng.uniform(-0.2, 0.2, 12)
    pieces = branching_trees(rng, np.full((12, 2), SIZE / 2), angles, 7.0, 34, step=4.0, turn=0.0, jitter=0.15,
                             p_branch=0.12, max_depth=1)
    draw_tapered(draw, pieces)
    return np.asarray(canvas.filter(ImageFilter.GaussianBlur(2.0)), F32) / F32(255.0)


_SOFTEN = ImageFilter.Kernel((3, 3), [1, 2, 1, 2, 4, 2, 1, 2, 1])  # cheap anti-aliasing for thin strokes


def _paint(img: Image.Image, mask: Image.Image, colour: tuple[int, int, int], blur_radius: float) -> None:
    """Fill `colour` into `img` through a softened mask (C speed; only the mask's bounding box).

    How opaque the colour is comes from the mask's values (drawn with fill < 255 for less).
    """
    box = mask.getbbox()
    if box is None:
        return
    pad = int(3 * blur_radius) + 2
    box = (max(0, box[0] - pad), max(0, box[1] - pad), min(SIZE, box[2] + pad), min(SIZE, box[3] + pad))
    soft = mask.crop(box).filter(_SOFTEN if blur_radius < 1 else ImageFilter.GaussianBlur(blur_radius))
    img.paste(colour, box, soft)


def _vessels(img: Image.Image, rng: np.random.Generator, disc: np.ndarray, e: int, hypertensive: bool) -> None:
    """Veins and arteries grow from the disc: four arcades (temporal ones curve round the macula).

    Roots 0-1 are veins (down, up), 2-3 arteries; hypertensive arteries are thin and tortuous.
    """
    temporal = np.pi if e > 0 else 0.0  # heading pointing from the disc towards the macula
    vertical = np.array([-1.0, 1.0, -1.0, 1.0])
    offset = np.array([0.0, 0.0, 0.12, 0.12])  # arteries leave the disc a little apart from the veins
    artery_width = 3.0 * (0.55 if hypertensive else 1.0)
    widths, wiggle = np.array([4.2, 4.2, artery_width, artery_width]), np.array([0, 0, 1, 1]) * 0.45 * hypertensive
    starts = np.repeat(disc[None], 4, axis=0)
    pieces = branching_trees(rng, starts, temporal + vertical * e * (1.05 + offset), widths, 46, step=4.0,
                             turn=-0.027 * vertical * e, jitter=0.06, wiggle=wiggle, p_branch=0.065)
    pieces += branching_trees(rng, starts, temporal + np.pi - vertical * e * (1.0 + offset), widths, 30,
                              step=4.0, turn=0.0, jitter=0.06, wiggle=wiggle, p_branch=0.065)
    for arteries, colour in ((False, _VEIN), (True, _ARTERY)):
        mask = Image.new("L", (SIZE, SIZE), 0)
        draw_tapered(ImageDraw.Draw(mask), [p for p in pieces if (p[2] >= 2) == arteries], fill=217)
        _paint(img, mask, colour, 0.6)


def _dots(rng: np.random.Generator, centre: np.ndarray, spread: float, count: int, radius: tuple[float, float],
          avoid: float = 0.0) -> list[tuple[float, float, float]]:
    """Random (x, y, r) spots around `centre` inside the field, at least `avoid` away from it."""
    angle = rng.uniform(0, 2 * np.pi, count)
    dist = avoid + np.abs(rng.normal(0, spread, count))
    xs, ys = centre[0] + dist * np.cos(angle), centre[1] + dist * np.sin(angle)
    inside = np.hypot(xs - SIZE / 2, ys - SIZE / 2) < FIELD_RADIUS * 0.92
    radii = rng.uniform(*radius, count)
    return [(float(x), float(y), float(r)) for x, y, r, ok in zip(xs, ys, radii, inside, strict=True) if ok]


def _paint_dots(img: Image.Image, spots: list[tuple[float, float, float]], colour: tuple[int, int, int],
                blur_radius: float = 0.7, strength: float = 0.9) -> None:
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask)
    for x, y, r in spots:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=round(255 * strength))
    _paint(img, mask, colour, blur_radius)


def _diabetic(img: Image.Image, rng: np.random.Generator, disc: np.ndarray, macula: np.ndarray,
              detail: dict) -> None:
    """Microaneurysms, dot/blot haemorrhages and a cluster of hard exudates round the macula."""
    n_ma, n_hem, n_ex = {"mild": (10, 2, 0), "moderate": (22, 8, 18), "severe": (35, 22, 35)}[detail["severity"]]
    _paint_dots(img, _dots(rng, macula, 45, n_ma, (0.8, 1.3), avoid=8), _BLOOD)
    _paint_dots(img, _dots(rng, macula, 60, n_hem, (1.8, 3.2), avoid=12), _BLOOD)
    if n_ex:
        cluster = macula + rng.normal(0, 18, 2)
        _paint_dots(img, _dots(rng, cluster, 12, n_ex, (0.8, 1.8), avoid=3), _EXUDATE, 0.5)


def _amd(img: Image.Image, rng: np.random.Generator, disc: np.ndarray, macula: np.ndarray, detail: dict) -> None:
    """Drusen (yellow spots) round the fovea; wet AMD adds a dark subretinal bleed."""
    _paint_dots(img, _dots(rng, macula, 11, int(rng.integers(18, 40)), (1.0, 2.6), avoid=2), (247, 219, 128),
                1.0, 0.8)
    if detail.get("wet"):
        _paint_dots(img, [(macula[0], macula[1], rng.uniform(7, 11))], (90, 30, 20), 3.0, 0.8)


def _hypertensive(img: Image.Image, rng: np.random.Generator, disc: np.ndarray, macula: np.ndarray,
                  detail: dict) -> None:
    """Flame haemorrhages: short streaks radiating from the disc along the nerve fibre layer."""
    mask = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(5, 11))):
        angle, dist, length = rng.uniform(0, 2 * np.pi), rng.uniform(22, 60), rng.uniform(7, 13)
        u = np.array([np.cos(angle), np.sin(angle)])
        a, b = disc + u * dist, disc + u * (dist + length)
        draw.line([tuple(a), tuple(b)], fill=230, width=int(rng.integers(3, 5)))
    _paint(img, mask, (140, 14, 10), 1.2)


def _laser(img: Image.Image, rng: np.random.Generator, disc: np.ndarray, macula: np.ndarray, detail: dict) -> None:
    """Panretinal photocoagulation scars: pale rings with pigmented centres in the mid-periphery."""
    n = int(rng.integers(35, 70))
    angle, dist = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.55, 0.88, n) * FIELD_RADIUS
    spots = [(SIZE / 2 + d * np.cos(a), SIZE / 2 + d * np.sin(a), 3.4) for a, d in zip(angle, dist, strict=True)]
    _paint_dots(img, spots, (237, 204, 148), 0.6, 0.85)
    _paint_dots(img, [(x, y, 1.8) for x, y, _ in spots], (56, 26, 13), 0.6, 0.9)


_LESIONS = {"D": _diabetic, "A": _amd, "H": _hypertensive, "O": _laser}


def _cataract(img: Image.Image, grade: float) -> Image.Image:
    """A cloudy lens: everything blurred, washed out towards a warm haze, lower in contrast."""
    blurred = img.filter(ImageFilter.GaussianBlur(1.5 + 3.0 * grade))
    haze = Image.new("RGB", (SIZE, SIZE), (235, 204, 158))
    return Image.blend(blurred, haze, 0.12 + 0.25 * grade)


def _finish(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """Vignetting and the black surround of the circular field (with exposure), sensor noise."""
    exposure = rng.uniform(0.85, 1.0)
    field = _field_image().point([round(v * exposure) for v in range(256)]).convert("RGB")
    grain = Image.fromarray(rng.integers(0, 5, (SIZE, SIZE), dtype=np.uint8), "L").convert("RGB")
    return np.asarray(ImageChops.add(ImageChops.multiply(img, field), grain))
