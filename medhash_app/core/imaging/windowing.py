"""Window / VOI arithmetic in float32 and the viewer's window presets.

Windows follow DICOM PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID). Everything works in place on
one float32 buffer: a 2k x 2k radiograph is re-windowed on every drag of the viewer.
"""

from __future__ import annotations

import numpy as np

from medhash_app.core.imaging.loaded import LoadedImage, VoiLut, Window

HU_PRESETS: dict[str, Window] = {"lung": (-600.0, 1500.0), "bone": (300.0, 1500.0),
                                 "soft tissue": (40.0, 400.0)}
_SAMPLE_TARGET = 1_000_000  # pixels looked at for percentiles; enough for a stable histogram


def window_from_range(low: float, high: float) -> Window:
    """(center, width) whose LINEAR window maps `low` to black and `high` to white exactly."""
    low, high = float(low), float(high)
    if high <= low:
        high = low + 1.0
    return (low + high + 1.0) / 2.0, high - low + 1.0


def sample(pixels: np.ndarray) -> np.ndarray:
    """A strided subsample (no copy) so percentiles on big radiographs stay cheap."""
    step = max(1, int(np.sqrt(pixels.size / _SAMPLE_TARGET)))
    return pixels[::step, ::step]


def percentile_window(pixels: np.ndarray, low_pct: float, high_pct: float) -> Window:
    """Window spanning two percentiles of the pixel values."""
    low, high = np.percentile(sample(pixels), [low_pct, high_pct])
    return window_from_range(low, high)


def robust_window(pixels: np.ndarray) -> Window:
    """Fallback window when the file has none: 0.5-99.5 % keeps a few hot/dead pixels from
    flattening the contrast (plain min/max would)."""
    return percentile_window(pixels, 0.5, 99.5)


def window_to_uint8(pixels: np.ndarray, window: Window, function: str = "LINEAR") -> np.ndarray:
    """Apply a window to grey float pixels -> uint8 (one float32 temporary)."""
    center, width = float(window[0]), float(window[1])
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        out = np.asarray(pixels, dtype=np.float32) - np.float32(center)
        out *= np.float32(-4.0 / max(width, 1e-6))
        np.clip(out, -80.0, 80.0, out=out)  # exp() stays finite in float32; the result saturates anyway
        np.exp(out, out=out)
        out += 1.0
        np.divide(255.0, out, out=out)
    else:
        if function == "LINEAR_EXACT":
            scale, low = 255.0 / max(width, 1e-6), center - width / 2.0
        elif width <= 1.0:  # DICOM: a width of 1 is a threshold at the center
            scale, low = 255.0 * 1e6, center - 0.5
        else:
            scale, low = 255.0 / (width - 1.0), center - 0.5 - (width - 1.0) / 2.0
        out = np.asarray(pixels, dtype=np.float32) * np.float32(scale)
        out -= np.float32(low * scale)
    return to_uint8(out)


def voi_lut_to_uint8(pixels: np.ndarray, lut: VoiLut) -> np.ndarray:
    """Apply a VOI LUT (values below/above its range clamp to its first/last entry)."""
    index = np.rint(pixels).astype(np.int32) - np.int32(lut.first_mapped)
    np.clip(index, 0, lut.table.size - 1, out=index)
    return to_uint8(lut.table[index] * np.float32(255.0))


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Clip to 0..255 and round (in place on `values`, which must be a float32 temporary)."""
    np.clip(values, 0.0, 255.0, out=values)
    np.rint(values, out=values)
    return values.astype(np.uint8)


def window_presets(img: LoadedImage) -> dict[str, Window]:
    """Named windows for the viewer: the file's own, then anatomy presets.

    HU images (CT-like, rescaled) get the classic lung / bone / soft-tissue windows. Plain
    radiographs have no physical units, so their presets come from the histogram: the full range,
    1-99 %, a "lung" window over the half of the histogram that is displayed dark (low values, or
    high values for MONOCHROME1) and a "bone" window over the half displayed bright.
    Colour images have no windows (empty dict).
    """
    if img.is_color:
        return {}
    presets: dict[str, Window] = {}
    for name, center, width in img.file_windows:
        presets[name] = (center, width)
    if not presets and img.default_window is not None:
        presets["default"] = img.default_window
    values = sample(img.pixels)
    p = dict(zip((0, 0.5, 1, 2, 40, 50, 60, 98, 99, 99.5, 100),
                 np.percentile(values, [0, 0.5, 1, 2, 40, 50, 60, 98, 99, 99.5, 100]), strict=True))
    if img.units == "HU":
        presets.update(HU_PRESETS)
    else:
        dark, bright = ((p[50], p[99]), (p[0.5], p[60])) if img.invert else ((p[1], p[50]), (p[40], p[99.5]))
        presets["1-99 %"] = window_from_range(p[1], p[99])
        presets["lung"] = window_from_range(*dark)
        presets["bone"] = window_from_range(*bright)
    presets["full range"] = window_from_range(p[0], p[100])
    return presets
