"""Display and model renderings of a LoadedImage.

`render` is the only place where the VOI transform and MONOCHROME1 inversion happen, so the viewer,
the thumbnails and the model input can never disagree about polarity.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from medhash_app.core.imaging.loaded import LoadedImage, Window
from medhash_app.core.imaging.windowing import robust_window, voi_lut_to_uint8, window_to_uint8

_RESAMPLE = Image.Resampling.LANCZOS



MODEL_SIDE = 256  # the stored and query model input's side (ingest.decode.MODEL_SIZE)

def render(img: LoadedImage, window: Window | None = None, invert: bool | None = None) -> np.ndarray:
    """uint8 HxW (grey) or HxWx3 (RGB) for display.

    Grey: a given `window` wins; otherwise the file's VOI LUT, then its first window, then a
    robust 0.5-99.5 % window. `invert=None` follows the file (True for MONOCHROME1). Colour
    images ignore `window`.
    """
    flip = img.invert if invert is None else bool(invert)
    if img.is_color:
        out = np.asarray(img.pixels, dtype=np.uint8)
        return 255 - out if flip else out
    if window is None and img.voi_lut is not None:
        out = voi_lut_to_uint8(img.pixels, img.voi_lut)
    else:
        chosen = window or img.default_window or robust_window(img.pixels)
        out = window_to_uint8(img.pixels, chosen, img.voi_function)
    if flip:
        np.subtract(255, out, out=out)
    return out


def to_pil(img: LoadedImage, window: Window | None = None) -> Image.Image:
    """The default rendering as a PIL image (mode L or RGB)."""
    return Image.fromarray(render(img, window))


def model_image(img: LoadedImage, size: int = MODEL_SIDE) -> Image.Image:
    """The model input: RGB, aspect ratio kept, letterboxed onto a black `size` x `size` square.

    Ingest stores it, queries compute it on the fly and training reads the stored copy, so all
    three see exactly the same pixels.
    """
    padded = ImageOps.pad(to_pil(img), (size, size), method=_RESAMPLE, color=0, centering=(0.5, 0.5))
    return padded.convert("RGB")


def thumbnail_jpeg(img: LoadedImage, size: int = 160, quality: int = 85) -> bytes:
    """A JPEG that fits in `size` x `size` (aspect kept, no padding) for result grids."""
    pil = to_pil(img)
    pil.thumbnail((size, size), _RESAMPLE)
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
