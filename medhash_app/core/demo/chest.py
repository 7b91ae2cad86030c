"""Procedural chest radiographs whose findings are drawn from the same labels the report states.

The picture is an attenuation map (bright = dense, as MONOCHROME2 shows it): torso soft tissue,
dark lung fields cut by diaphragm domes, a bright mediastinum and spine, the heart shadow, ribs,
clavicles and radial lung markings. Each finding changes the map where a reader would look for
it, so a model can learn the image <-> report link. Side words are the PATIENT's side: the
patient's left is on the image's right, as on a PA film.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .raster import F32, branching_trees, draw_tapered, gaussian, smooth_noise, soft_step, unit_grid, upsample

DRAW_SIZE = 256  # anatomy is painted here, then upsampled (cheap, and gives a natural blur)
OUT_SIZE = 512

NO_FINDING = "No Finding"
# CheXpert class names, in CheXpert order; these are the findings this generator can draw.
DRAWN_FINDINGS: tuple[str, ...] = (
    "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Atelectasis",
    "Pneumothorax", "Pleural Effusion", "Fracture", "Support Devices",
)
# Relative frequency among abnormal studies: common findings common, rare ones rare.
FINDING_WEIGHTS: dict[str, float] = {
    "Support Devices": 0.19, "Pleural Effusion": 0.17, "Lung Opacity": 0.15, "Cardiomegaly": 0.14,
    "Atelectasis": 0.12, "Edema": 0.08, "Consolidation": 0.05, "Pneumothorax": 0.04,
    "Lung Lesion": 0.035, "Fracture": 0.02,
}
P_NO_FINDING = 0.4
P_TWO_FINDINGS = 0.3
SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")


@dataclass
class ChestCase:
    """What one synthetic study shows: labels (CheXpert names), per-finding details, header facts."""

    labels: list[str]
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    view: str = "PA"
    modality: str = "DX"
    sex: str = "M"
    age: int = 60
    monochrome1: bool = False


def sample_chest_case(rng: np.random.Generator, forced: list[str] | None = None) -> ChestCase:
    """Draw labels with a realistic skew (or use `forced`), then where/how big each finding is."""
    labels = forced if forced is not None else _sample_labels(rng)
    findings = [lab for lab in labels if lab != NO_FINDING]
    details = {lab: _sample_detail(lab, rng) for lab in findings}
    ap = rng.random() < (0.6 if "Support Devices" in findings else 0.25)
    if set(findings) <= {"Support Devices"}:  # CheXpert: "No Finding" means no pathology; devices aside
        labels = [NO_FINDING, *findings]
    return ChestCase(
        labels=[lab for lab in (NO_FINDING, *DRAWN_FINDINGS) if lab in labels],
        details=details, view="AP" if ap else "PA",
        modality="CR" if rng.random() < 0.4 else "DX", sex="F" if rng.random() < 0.48 else "M",
        age=int(rng.integers(19, 93)), monochrome1=bool(rng.random() < 0.25),
    )


def _sample_labels(rng: np.random.Generator) -> list[str]:
    if rng.random() < P_NO_FINDING:
        return [NO_FINDING]
    names = list(FINDING_WEIGHTS)
    p = np.array([FINDING_WEIGHTS[n] for n in names])
    k = 2 if rng.random() < P_TWO_FINDINGS else 1
    picked = rng.choice(len(names), size=k, replace=False, p=p / p.sum())
    return [names[i] for i in sorted(picked)]


def _sample_detail(label: str, rng: np.random.Generator) -> dict[str, Any]:
    side = str(rng.choice(SIDES))
    if label == "Cardiomegaly":
        return {"severity": str(rng.choice(["mild", "moderate", "marked"], p=[0.4, 0.4, 0.2]))}
    if label == "Edema":
        return {"severity": str(rng.choice(["mild", "moderate"]))}
    if label in ("Pleural Effusion", "Pneumothorax"):
        return {"side": side, "size": str(rng.choice(["small", "moderate", "large"], p=[0.5, 0.35, 0.15]))}
    if label in ("Lung Opacity", "Consolidation"):
        return {"side": side, "zone": str(rng.choice(ZONES, p=[0.2, 0.3, 0.5])), "uncertain": rng.random() < 0.2}
    if label == "Lung Lesion":
        return {"side": side, "zone": str(rng.choice(ZONES)), "size_cm": round(float(rng.uniform(1.0, 2.8)), 1)}
    if label == "Atelectasis":
        return {"side": side, "uncertain": bool(rng.random() < 0.3)}
    if label == "Fracture":
        return {"side": side, "rib": int(rng.integers(4, 9))}
    if label == "Support Devices":
        kinds = [["pacemaker"], ["central line"], ["endotracheal tube"], ["endotracheal tube", "central line"]]
        return {"devices": kinds[int(rng.choice(4, p=[0.35, 0.35, 0.15, 0.15]))]}
    raise ValueError(f"cannot draw {label!r}")


# --------------------------------------------------------------------------------------------
# Painting


@dataclass
class _Geometry:
    """The patient's anatomy on the unit grid (x a row, y a column): masks the findings reuse."""

    x: np.ndarray
    y: np.ndarray
    lung: dict[str, np.ndarray]  # aerated lung per side (diaphragm, heart and mediastinum cut out)
    wall: dict[str, np.ndarray]  # distance inside the lung from the chest wall / apex
    dome: dict[str, np.ndarray]  # diaphragm height y(x) per side
    heart: np.ndarray
    solid: np.ndarray  # heart and mediastinum: soft tissue where the lungs end
    scale: float  # patient size and position: unit-grid coordinates -> pixels
    shift: tuple[float, float]
    sign: dict[str, int] = field(default_factory=lambda: {"right": -1, "left": 1})  # image x of each side

    def to_pixels(self, x: np.ndarray, y: np.ndarray) -> list[float]:
        """Anatomical unit coordinates -> flat [col, row, ...] DRAW_SIZE pixel coordinates for Pillow."""
        half = (DRAW_SIZE - 1) / 2.0
        cols = (x * self.scale + self.shift[0] + 1.0) * half
        rows = ((y - 0.5) * self.scale + 0.5 + self.shift[1]) * (DRAW_SIZE - 1)
        return np.stack([cols, rows], axis=-1).ravel().tolist()


def _lateral_border(y: np.ndarray | float) -> np.ndarray:
    """How far out (|x|) the lung reaches at height y: a rounded apex widening to the bases."""
    return 0.06 + 0.74 * np.clip((y - 0.085) / 0.42, 0, 1) ** 0.38 - 0.04 * np.clip((y - 0.6) / 0.15, 0, 1)


def draw_chest(case: ChestCase, rng: np.random.Generator) -> np.ndarray:
    """Paint the study: float32 OUT_SIZE x OUT_SIZE, ~[0, 1.2] (metal more), bright = dense (MONOCHROME2)."""
    geo = _geometry(case, rng)
    air = geo.lung["right"] + geo.lung["left"]
    density = _soft_tissue(geo, case) + _bones(geo, case, rng)
    density -= F32(0.42) * air * (1.0 - 0.25 * geo.y)
    markings = _lung_markings(geo, rng) * air
    markings *= _apply_findings(density, geo, case, rng)
    density += markings + F32(0.008) * smooth_noise(rng, DRAW_SIZE, 32)
    density += rng.random(density.shape, dtype=F32) * F32(0.03)
    density = density * F32(rng.uniform(0.9, 1.05)) + F32(rng.uniform(-0.03, 0.03))  # exposure
    mottle = rng.random((OUT_SIZE, OUT_SIZE), dtype=F32)
    mottle *= F32(0.03)
    mottle += upsample(density, OUT_SIZE)
    mottle += _devices(case, rng)
    return mottle


def _geometry(case: ChestCase, rng: np.random.Generator) -> _Geometry:
    x, y = unit_grid(DRAW_SIZE)
    scale, dx, dy = rng.uniform(0.94, 1.04), rng.uniform(-0.03, 0.03), rng.uniform(-0.025, 0.025)
    x, y = (x - F32(dx)) / F32(scale), (y - F32(0.5 + dy)) / F32(scale) + F32(0.5)
    heart = _heart_mask(x, y, case, rng)
    mediastinum = np.maximum(soft_step(0.09 - np.abs(x - 0.01), 0.015),
                             soft_step(0.07 - np.hypot((x - 0.09) / 1.2, y - 0.32), 0.015))  # + aortic knob
    solid = np.maximum(heart, mediastinum)
    atel_side = case.details.get("Atelectasis", {}).get("side")
    border = _lateral_border(y)
    lung, wall, dome = {}, {}, {}
    for side, sgn in (("right", -1), ("left", 1)):
        u = sgn * x  # distance from the midline towards this side
        base = (0.655 if side == "right" else 0.675) - (0.05 if side == atel_side else 0.0)
        dome[side] = (base + 0.11 * ((u - 0.42) / 0.38) ** 2).astype(F32)
        apex_y = 0.085 + 0.42 * np.clip((u - 0.06) / 0.74, 0, 1) ** (1 / 0.38)
        wall[side] = np.minimum(border - u, y - apex_y).astype(F32)
        inside = soft_step(border - u, 0.015) * soft_step(u - 0.075, 0.015) * soft_step(dome[side] - y, 0.01)
        lung[side] = inside * (1 - solid)
    return _Geometry(x, y, lung, wall, dome, heart, solid, scale, (dx, dy))


def _heart_mask(x: np.ndarray, y: np.ndarray, case: ChestCase, rng: np.random.Generator) -> np.ndarray:
    widen = {"mild": 1.3, "moderate": 1.42, "marked": 1.55}
    normal = 0.31 + rng.uniform(-0.02, 0.02)
    half_width = normal * widen.get(case.details.get("Cardiomegaly", {}).get("severity", ""), 1.0)
    cx = 0.08 + 0.5 * (half_width - normal)  # the left ventricle grows towards the patient's left
    r = np.sqrt(((x - cx) / half_width) ** 2 + ((y - 0.67) / 0.21) ** 2)
    return soft_step(1 - r, 0.05)


def _soft_tissue(geo: _Geometry, case: ChestCase) -> np.ndarray:
    """Body thickness (neck, shoulders, chest wall), mediastinum and heart, abdomen below the domes."""
    x, y = geo.x, geo.y
    neck = soft_step(0.21 - np.abs(x), 0.03)
    shoulders = soft_step(y - 0.05 - 0.12 * np.clip(np.abs(x) - 0.25, 0, 1) ** 1.5, 0.025)
    body = F32(0.5) * np.sqrt(np.clip(1 - (x / 1.12) ** 2, 0, 1)) * np.maximum(neck, shoulders)
    dome = np.where(x < 0, geo.dome["right"], geo.dome["left"])
    abdomen = F32(0.07) * soft_step(y - dome, 0.02)
    trachea = F32(0.10) * soft_step(0.024 - np.abs(x - 0.005), 0.008) * soft_step(0.36 - y, 0.02)
    stomach = F32(0.06) * soft_step(0.04 - np.hypot((x - 0.4) / 1.5, y - geo.dome["left"] - 0.06), 0.012)
    density = body + abdomen - trachea - stomach
    if case.sex == "F":  # breast shadows over the lower zones
        for sgn in (-1, 1):
            density = density + F32(0.07) * gaussian((x - sgn * 0.47) ** 2 + ((y - 0.7) * 1.3) ** 2, 0.13)
    return density.astype(F32)


def _bones(geo: _Geometry, case: ChestCase, rng: np.random.Generator) -> np.ndarray:
    """Spine (computed); ribs and clavicles (drawn as polylines, then softened)."""
    x, y = geo.x, geo.y
    vertebrae = 0.85 + 0.15 * np.cos(2 * np.pi * y / 0.058)
    dome = np.where(x < 0, geo.dome["right"], geo.dome["left"])
    hidden = 1 - 0.55 * np.maximum(geo.solid, soft_step(y - dome, 0.03))  # bone fades behind soft tissue
    spine = F32(0.07) * soft_step(0.045 - np.abs(x), 0.015) * vertebrae * (1 - 0.5 * geo.heart)
    canvas = Image.new("L", (DRAW_SIZE, DRAW_SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    px = (DRAW_SIZE - 1) * geo.scale / 2  # pixels per unit of x
    for points, fill in _rib_paths(geo, case, rng):
        draw.line(points, fill=fill, width=round(0.034 * px))
    for sgn in (-1, 1):  # clavicles: from the sternal notch out to the shoulders
        u = np.linspace(0.05, 0.66, 16)
        draw.line(geo.to_pixels(sgn * u, 0.175 - 0.09 * (u - 0.06) + 0.025 * np.sin(5 * u)),
                  fill=210, width=round(0.03 * px))
    drawn = np.asarray(canvas.filter(ImageFilter.GaussianBlur(1.3)), F32) * F32(0.11 / 210)
    return (drawn * hidden + spine).astype(F32)


def _rib_paths(geo: _Geometry, case: ChestCase, rng: np.random.Generator) -> list[tuple[list[float], int]]:
    """Posterior ribs (arcs from the spine, sloping down laterally) and fainter anterior ribs.

    A fractured posterior rib is drawn in two pieces with a gap and a small step-off.
    """
    frac = case.details.get("Fracture", {})
    spacing, top = rng.uniform(0.058, 0.066), rng.uniform(0.09, 0.11)
    t = np.linspace(0.0, 1.0, 20)[None]
    y0 = (top + spacing * np.arange(10))[:, None]
    post_u = 0.05 + (_lateral_border(y0 + 0.05) + 0.03) * t
    post_y = y0 - 0.045 * np.sin(np.pi * t * 0.8) + 0.24 * t ** 2
    y0 = (0.2 + 0.085 * np.arange(6))[:, None]
    u_out = _lateral_border(y0) + 0.02
    ant_u, ant_y = u_out - (u_out - 0.22) * t, y0 + 0.12 * t - 0.035 * np.sin(np.pi * t)
    paths = []
    for side, sgn in geo.sign.items():
        for k in range(10):
            if frac.get("side") == side and frac.get("rib") == k + 2:
                near, far = t[0] < 0.66, t[0] > 0.72
                paths.append((geo.to_pixels(sgn * post_u[k, near], post_y[k, near]), 160))
                paths.append((geo.to_pixels(sgn * post_u[k, far], post_y[k, far] + 0.012), 160))
            else:
                paths.append((geo.to_pixels(sgn * post_u[k], post_y[k]), 160))
        paths += [(geo.to_pixels(sgn * ant_u[k], ant_y[k]), 80) for k in range(6)]
    return paths


def _lung_markings(geo: _Geometry, rng: np.random.Generator) -> np.ndarray:
    """Vessel shadows: branching trees from each hilum, thinning towards the periphery."""
    canvas = Image.new("L", (DRAW_SIZE, DRAW_SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    hila = np.array(geo.to_pixels(np.array([-0.17, 0.17]), np.array([0.45, 0.45]))).reshape(2, 2)
    fan = np.linspace(-1.3, 1.3, 5)[None] + rng.uniform(-0.15, 0.15, (2, 5))
    headings = np.concatenate([np.pi - fan[0], fan[1]])  # fan out laterally, up and down, on each side
    pieces = branching_trees(rng, np.repeat(hila, 5, axis=0), headings, 3.0, 17, step=4.5, turn=0.0,
                             jitter=0.12, p_branch=0.12)
    draw_tapered(draw, pieces, fill=255, fade=True)
    hilar = sum(gaussian((geo.x - sgn * 0.16) ** 2 + (geo.y - 0.44) ** 2, 0.04) for sgn in (-1, 1))
    vessels = np.asarray(canvas.filter(ImageFilter.GaussianBlur(1.0)), F32) * F32(0.09 / 255)
    return vessels + F32(0.08) * hilar


# --------------------------------------------------------------------------------------------
# Findings: each edits the density map in place; the returned mask says where markings survive.

_ZONE_Y = {"upper": 0.27, "middle": 0.43, "lower": 0.58}


def _apply_findings(density: np.ndarray, geo: _Geometry, case: ChestCase, rng: np.random.Generator) -> np.ndarray:
    keep_markings = np.ones_like(density)
    for label, detail in case.details.items():
        keep_markings *= _PAINTERS[label](density, geo, detail, rng)
    return keep_markings


def _effusion(density: np.ndarray, geo: _Geometry, d: dict, rng: np.random.Generator) -> np.ndarray:
    """Fluid fills the base to a meniscus that climbs the chest wall; the dome disappears in it."""
    side = d["side"]
    height = {"small": 0.07, "moderate": 0.15, "large": 0.25}[d["size"]] + rng.uniform(-0.015, 0.015)
    lateral = np.clip((geo.sign[side] * geo.x - 0.1) / 0.7, 0, 1)
    level = float(geo.dome[side].min()) + 0.10 - height - 0.1 * lateral ** 2
    fluid = soft_step(geo.y - level, 0.035) * geo.lung[side]
    density += F32(0.36) * fluid * (0.85 + 0.15 * soft_step(geo.y - level - 0.05, 0.05))
    return 1 - fluid


def _pneumothorax(density: np.ndarray, geo: _Geometry, d: dict, rng: np.random.Generator) -> np.ndarray:
    """Apical/lateral air without lung markings, bounded by a thin visceral pleural line."""
    side = d["side"]
    depth = {"small": 0.045, "moderate": 0.08, "large": 0.13}[d["size"]] + rng.uniform(-0.008, 0.008)
    upper, lung, wall = soft_step(0.55 - geo.y, 0.05), geo.lung[side], geo.wall[side]
    rim = soft_step(depth - wall, 0.006) * lung * upper
    density -= F32(0.07) * rim
    density += F32(0.13) * gaussian((wall - depth) ** 2, 0.004) * lung * upper
    return 1 - rim


def _blotch(density: np.ndarray, geo: _Geometry, d: dict, rng: np.random.Generator, *, dense: bool) -> np.ndarray:
    """Airspace disease: patchy (opacity) or dense and confluent (consolidation) in one zone."""
    sgn = geo.sign[d["side"]]
    cx, cy = sgn * (0.45 + rng.uniform(-0.07, 0.07)), _ZONE_Y[d["zone"]] + rng.uniform(-0.03, 0.03)
    d2 = ((geo.x - cx) / 1.1) ** 2 + (geo.y - cy) ** 2
    texture = smooth_noise(rng, DRAW_SIZE, 18)
    if dense:
        shape = soft_step(gaussian(d2, rng.uniform(0.08, 0.1)) + 0.2 * texture - 0.45, 0.06)
    else:
        shape = gaussian(d2, rng.uniform(0.06, 0.085)) * np.clip(0.75 + 0.5 * texture, 0, 1.4)
    density += F32(0.32 if dense else 0.24) * shape * geo.lung[d["side"]]
    return 1 - 0.7 * np.clip(shape, 0, 1)


def _opacity(density: np.ndarray, geo: _Geometry, d: dict, rng: np.random.Generator) -> np.ndarray:
    return _blotch(density, geo, d, rng, dense=False)


def _consolidation(density: np.ndarray, geo: _Geometry, d: dict, rng: np.random.Generator) -> np.ndarray:
    return _blotch(density, geo, d, rng, dense=True)


def _nodule(density: np.ndarray, geo: _Geometry, d: dict, rng: np.random.Generator) -> np.ndarray:
    """A round, well-defined nodule; its size follows the centimetres the report gives."""
    sgn = geo.sign[d["side"]]
    cx, cy = sgn * (0.45 + rng.uniform(-0.08, 0.08)), _ZONE_Y[d["zone"]] + rng.uniform(-0.04, 0.04)
    ball = soft_step(0.015 + 0.012 * d["size_cm"] - np.hypot(geo.x - cx, geo.y - cy), 0.006)
    density += F32(0.26) * ball
    return 1 - ball


def _atelectasis(density: np.ndarray, geo: _Geometry, d: dict, rng: np.random.Generator) -> np.ndarray:
    """A plate-like band at the base (the hemidiaphragm was raised in _geometry: volume loss)."""
    sgn = geo.sign[d["side"]]
    cx, cy, slope = sgn * 0.42, 0.55 + rng.uniform(-0.03, 0.02), rng.uniform(-0.25, 0.25)
    dist = np.abs((geo.y - cy) - slope * (geo.x - cx)) / np.sqrt(1 + slope * slope)
    band = soft_step(0.014 - dist, 0.005) * soft_step(0.17 - np.abs(geo.x - cx), 0.03)
    density += F32(0.24) * band * geo.lung[d["side"]]
    return 1 - band


def _edema(density: np.ndarray, geo: _Geometry, d: dict, rng: np.random.Generator) -> np.ndarray:
    """Bilateral perihilar ('bat-wing') haze with indistinct vessels."""
    strength = 0.17 if d["severity"] == "mild" else 0.24
    haze = sum(gaussian(((geo.x - sgn * 0.22) / 1.3) ** 2 + (geo.y - 0.46) ** 2, 0.12) for sgn in (-1, 1))
    density += F32(strength) * haze * (geo.lung["right"] + geo.lung["left"])
    return 1 - 0.5 * haze


def _no_op(density: np.ndarray, geo: _Geometry, d: dict, rng: np.random.Generator) -> float:
    """Drawn elsewhere: the heart (Cardiomegaly), the ribs (Fracture), the devices layer."""
    return 1.0


_PAINTERS = {
    "Pleural Effusion": _effusion, "Pneumothorax": _pneumothorax, "Lung Opacity": _opacity,
    "Consolidation": _consolidation, "Lung Lesion": _nodule, "Atelectasis": _atelectasis,
    "Edema": _edema, "Cardiomegaly": _no_op, "Fracture": _no_op, "Support Devices": _no_op,
}


def _devices(case: ChestCase, rng: np.random.Generator) -> np.ndarray | np.float32:
    """Metal and radio-opaque tubes, drawn at full resolution so they stay sharp."""
    devices = case.details.get("Support Devices", {}).get("devices", [])
    if not devices:
        return np.float32(0.0)
    canvas = Image.new("F", (OUT_SIZE, OUT_SIZE), 0.0)
    draw, s = ImageDraw.Draw(canvas), OUT_SIZE
    jx, jy = rng.uniform(-0.02, 0.02) * s, rng.uniform(-0.02, 0.02) * s
    if "pacemaker" in devices:  # generator pocket under the patient's left clavicle, lead to the RV
        x0, y0 = 0.74 * s + jx, 0.14 * s + jy
        draw.rounded_rectangle([x0, y0, x0 + 0.09 * s, y0 + 0.06 * s], radius=6, fill=0.75)
        lead = [(x0 + 5, y0 + 0.03 * s), (0.62 * s, 0.2 * s), (0.52 * s, 0.33 * s), (0.49 * s, 0.5 * s),
                (0.55 * s + jx, 0.68 * s)]
        draw.line(lead, fill=0.55, width=3)
    if "central line" in devices:  # right subclavian catheter into the superior vena cava
        path = [(0.18 * s, 0.16 * s + jy), (0.3 * s, 0.2 * s), (0.42 * s, 0.26 * s), (0.46 * s + jx, 0.4 * s)]
        draw.line(path, fill=0.45, width=3)
    if "endotracheal tube" in devices:
        tip = 0.3 * s + jy
        for dx in (-5, 5):
            draw.line([(s / 2 + dx + jx, 0), (s / 2 + dx + jx, tip)], fill=0.3, width=2)
    return np.asarray(canvas)
