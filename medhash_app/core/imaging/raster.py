"""PNG / JPEG / TIFF through Pillow, normalised to the same LoadedImage as DICOM.

Grey stays grey (float32, so 16-bit radiograph exports keep their depth for windowing), colour
becomes uint8 RGB; alpha is composited on black (the model's padding colour) and EXIF orientation
is applied so a phone photo of a fundus is upright.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medhash_app.core.errors import CorruptFileError, ImageTooLargeError, MedHashError
from medhash_app.core.imaging.facts import HeaderFacts
from medhash_app.core.imaging.loaded import LoadedImage, Window
from medhash_app.core.imaging.windowing import window_from_range

PILLOW_FORMATS = ("PNG", "JPEG", "TIFF")  # nothing else is parsed, even if the suffix lies (MPO opens as JPEG)
_EIGHT_BIT_IDENTITY: Window = (128.0, 256.0)  # maps 0..255 onto itself exactly
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


def load_raster(path: Path, *, frame: int | None, max_pixels: int) -> LoadedImage:
    """Decode one page/frame of a PNG, JPEG or TIFF (the first by default)."""
    try:
        with Image.open(path, formats=PILLOW_FORMATS) as opened:
            frames = int(getattr(opened, "n_frames", 1) or 1)
            check_size(path, opened.size, frames, max_pixels)
            index = choose_frame(path, frame, frames)
            opened.seek(index)
            opened.load()
            file_format = opened.format or path.suffix.lstrip(".").upper()
            image = ImageOps.exif_transpose(opened)
    except MedHashError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(path, "the image is too large to decode safely") from exc
    except UnidentifiedImageError as exc:
        raise CorruptFileError(path, f"not a readable {_kind(path)} image: its content is not "
                                     "PNG, JPEG or TIFF data") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise CorruptFileError(path, f"the {_kind(path)} image data is truncated or damaged") from exc
    except (MemoryError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a Pillow plugin's own bug on a hostile file
        raise CorruptFileError(path, f"the {_kind(path)} image could not be decoded (its content is "
                                     "damaged or uses a feature that is not supported)") from exc
    try:
        pixels, is_color, window, bits = to_pixels(image)
    except (OSError, ValueError, TypeError) as exc:
        raise CorruptFileError(path, f"the {_kind(path)} image's pixel format ({image.mode}) cannot be "
                                     "converted") from exc
    facts = HeaderFacts(photometric="RGB" if is_color else "MONOCHROME2", rows=pixels.shape[0],
                        cols=pixels.shape[1], bits_stored=bits, frames=frames, file_format=file_format)
    return LoadedImage(path=path, pixels=pixels, is_color=is_color, invert=False, default_window=window,
                       facts=facts, frame_count=frames, frame_index=index)


def check_size(path: Path, size: tuple[int, int], frames: int, max_pixels: int) -> None:
    """Refuse from the header alone, before Pillow allocates anything."""
    width, height = size
    if width * height * frames > max_pixels:
        raise ImageTooLargeError(path, f"the image has {width} x {height} pixels x {frames} frame(s) = "
                                       f"{width * height * frames:,} pixels, over the limit of {max_pixels:,}")


def choose_frame(path: Path, frame: int | None, frames: int) -> int:
    """First page by default: multi-page TIFFs put the full image first, pyramids follow."""
    if frame is None:
        return 0
    if not 0 <= frame < frames:
        raise MedHashError(path, f"frame {frame} does not exist; the file has {frames} frame(s), "
                                 f"numbered 0 to {frames - 1}")
    return frame


def to_pixels(image: Image.Image) -> tuple[np.ndarray, bool, Window, int]:
    """(pixels, is_color, default window, bits) for any Pillow mode."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode in _ALPHA_MODES:
        image = on_black(image)
    if image.mode == "1":
        image = image.convert("L")
    if image.mode == "L":
        return np.asarray(image, dtype=np.float32), False, _EIGHT_BIT_IDENTITY, 8
    if image.mode.startswith("I") or image.mode == "F":
        return deep_grey(image)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0].astype(np.float32), False, _EIGHT_BIT_IDENTITY, 8  # grey stored as RGB
    return np.ascontiguousarray(rgb), True, _EIGHT_BIT_IDENTITY, 8


def deep_grey(image: Image.Image) -> tuple[np.ndarray, bool, Window, int]:
    """16/32-bit integer or float grey -> float32 with a window over the data's full range."""
    bits = 16 if image.mode.startswith("I;16") else 32
    pixels = np.asarray(image).astype(np.float32)
    np.nan_to_num(pixels, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    window = window_from_range(float(pixels.min()), float(pixels.max())) if pixels.size else (0.5, 1.0)
    return pixels, False, window, bits


def on_black(image: Image.Image) -> Image.Image:
    """Composite over opaque black (what the letterbox pads with), dropping alpha."""
    rgba = image.convert("RGBA")
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def _kind(path: Path) -> str:
    return path.suffix.lstrip(".").upper() or "image"
