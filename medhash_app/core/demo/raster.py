"""Small vectorised drawing helpers shared by the chest and fundus painters.

Whole-array numpy (no per-pixel Python loops) plus Pillow for resampling, anti-aliased lines and
masked colour fills, so that hundreds of demo images take seconds. Coordinates on the unit grid are
broadcastable: x has shape (1, N), y has shape (N, 1); anything that depends on one of them only
stays one-dimensional and cheap.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

F32 = np.float32


def unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x in [-1, 1] left to right as a (1, size) row, y in [0, 1] top to bottom as a (size, 1) column."""
    x = np.linspace(-1.0, 1.0, size, dtype=F32)[None, :]
    y = np.linspace(0.0, 1.0, size, dtype=F32)[:, None]
    return x, y


def soft_step(signed: np.ndarray, edge: float) -> np.ndarray:
    """A linear 0 -> 1 ramp of width 2 * `edge` centred at signed == 0: cheap anti-aliased masks."""
    return np.clip(signed * F32(0.5 / edge) + F32(0.5), 0.0, 1.0).astype(F32, copy=False)


def gaussian(d2: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-d^2 / 2 sigma^2) of a squared distance."""
    return np.exp(d2 * F32(-0.5 / (sigma * sigma))).astype(F32, copy=False)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: a `cells` x `cells` random grid upsampled bicubically.

    Cheaper than blurring white noise and gives the low-frequency texture that tissue shows.
    """
    coarse = rng.standard_normal((cells, cells)).astype(F32)
    return np.asarray(Image.fromarray(coarse, "F").resize((size, size), Image.Resampling.BICUBIC))


def upsample(arr: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float32 2-D array to size x size (smooth content: bilinear is enough)."""
    return np.asarray(Image.fromarray(arr.astype(F32), "F").resize((size, size), Image.Resampling.BILINEAR))


def random_walks(rng: np.random.Generator, starts: np.ndarray, headings: np.ndarray, steps: int, step: float,
                 turn: np.ndarray, jitter: float, wiggle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """n smooth random paths at once: points (n, steps+1, 2) and headings (n, steps).

    Per path, `turn` bends it steadily and `wiggle` adds a regular meander; `jitter` random bending.
    """
    n = len(starts)
    bend = turn[:, None] + wiggle[:, None] * np.sin(1.3 * np.arange(steps))[None]
    heads = headings[:, None] + np.cumsum(bend + rng.normal(0.0, jitter, (n, steps)), axis=1)
    moves = step * np.stack([np.cos(heads), np.sin(heads)], axis=-1)
    points = np.concatenate([starts[:, None], starts[:, None] + np.cumsum(moves, axis=1)], axis=1)
    return points, heads


Piece = tuple[np.ndarray, float, int]  # polyline (k, 2), stroke width, index of the root it grew from


def branching_trees(rng: np.random.Generator, starts: np.ndarray, headings: np.ndarray,
                    widths: np.ndarray | float, steps: int, *, step: float, turn: np.ndarray | float,
                    jitter: float, wiggle: np.ndarray | float = 0.0, p_branch: float = 0.09,
                    max_depth: int = 2) -> list[Piece]:
    """Vessel trees, one per start, as pieces: random walks that sprout thinner side branches.

    One vectorised random-walk call per branching level (not per vessel) keeps this fast; width,
    turn and wiggle may differ per root and are inherited by its branches.
    """
    n = len(starts)
    turn, wiggle, widths = (np.broadcast_to(np.asarray(v, dtype=float), (n,)) for v in (turn, wiggle, widths))
    roots = np.arange(n)
    pieces: list[Piece] = []
    for _ in range(max_depth + 1):
        if len(starts) == 0 or steps < 3:
            break
        points, heads = random_walks(rng, starts, headings, steps, step, turn, jitter, wiggle)
        pieces += [(points[k], float(widths[k]), int(roots[k])) for k in range(len(starts))]
        tree, at = np.nonzero(rng.random((len(starts), steps)) < p_branch)
        keep = at >= 3
        tree, at = tree[keep], at[keep]
        side = np.where(rng.random(len(at)) < 0.5, -1.0, 1.0)
        starts, headings = points[tree, at + 1], heads[tree, at] + side * rng.uniform(0.5, 1.0, len(at))
        turn, wiggle, widths, roots = -0.5 * turn[tree], wiggle[tree], widths[tree] * 0.65, roots[tree]
        steps = int(steps * 0.45)
    return pieces


def draw_tapered(draw: ImageDraw.ImageDraw, pieces: list[Piece], fill: int = 255, fade: bool = False) -> None:
    """Draw polylines in three thirds of decreasing width (and, with `fade`, decreasing value)."""
    for points, width, _ in pieces:
        thirds = max(1, len(points) // 3)
        for j, taper in enumerate((1.0, 0.75, 0.5)):
            chunk = points[j * thirds: (j + 1) * thirds + 1] if j < 2 else points[2 * thirds:]
            if len(chunk) > 1:
                value = round(fill * taper) if fade else fill
                draw.line(chunk.ravel().tolist(), fill=value, width=max(1, round(width * taper)))
