"""JPEG 2000 DICOMs decoded at a reduced resolution, for a model input that is only 256 pixels wide.

A JPEG 2000 codestream holds its image as a pyramid of resolution levels; decoding level r costs a
fraction of the full image (the 1955x1841 lossless chest file: ~0.15 s at level 2, 489x461, against
~1.4-2.3 s in full on 2 busy cores). libopenjp2 does it (`opj_set_decoded_resolution_factor`), here
through glymur (PyPI) and the system's libopenjp2 (Debian: libopenjp2-7); pydicom's J2K plugins cannot.
The level is the deepest whose image still has a long side of at least 1.5 x `min_side`, so the model
input is a downscale of it, as of the full image (tests/test_j2k_reduced.py: at least 40 dB PSNR
against the model input from the full decode on the real J2K DICOMs). Only single-frame, single-component, unsigned
images are decoded this way; anything else, or any failure, returns None and the caller decodes the
whole image as before (and reports a damaged file in its usual words). The viewer never asks for this.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000, UID, JPEG2000Lossless

from medhash_app.core.imaging.loaded import LoadedImage

log = logging.getLogger(__name__)

SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})
# The decoded long side stays >= MARGIN x the model input's, so the model input is still a real
# downscale of it: on the real J2K chest and hip files a level with a long side just above 256 gave
# 24-38 dB PSNR against the full decode's model input, one level up (>= 1.5 x 256) 41.8-44.9 dB.
MARGIN = 1.5


def reduction(rows: int, cols: int, min_side: int, levels: int) -> int:
    """The deepest resolution level (0 = full) whose long side is still MARGIN x `min_side`."""
    level = 0
    while level < levels and math.ceil(max(rows, cols) / 2 ** (level + 1)) >= MARGIN * min_side:
        level += 1
    return level


def would_reduce(img: LoadedImage, min_side: int) -> bool:
    """Whether `load_image(img.path, min_side=min_side)` may give another (reduced) image than `img`, a
    full decode: a search must then decode the file itself so that it always ranks by the same pixels."""
    names = {uid.name for uid in SYNTAXES}
    rows, cols = int(img.facts.rows or 0), int(img.facts.cols or 0)
    return (img.facts.transfer_syntax in names and img.frame_count == 1 and not img.is_color
            and reduction(rows, cols, min_side, 32) > 0)


def reduced_shape(rows: int, cols: int, level: int) -> tuple[int, int]:
    return math.ceil(rows / 2**level), math.ceil(cols / 2**level)


def decode_reduced(path: Path, header: Dataset, tsyntax: UID, min_side: int) -> np.ndarray | None:
    """Stored values of the single frame at the deepest level that keeps `min_side`, or None (see module)."""
    rows, cols = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
    if (tsyntax not in SYNTAXES or int(header.get("SamplesPerPixel") or 1) != 1
            or int(header.get("PixelRepresentation") or 0) != 0 or int(header.get("NumberOfFrames") or 1) != 1
            or reduction(rows, cols, min_side, 32) == 0):
        return None
    try:
        return _decode(path, rows, cols, min_side)
    except Exception as exc:  # noqa: BLE001 - the full decode that follows reports the file's problem
        log.debug("reduced J2K decode of %s failed (%s); decoding in full", path.name, exc)
        return None


def _decode(path: Path, rows: int, cols: int, min_side: int) -> np.ndarray | None:
    import glymur  # loads libopenjp2; imported only when a J2K query arrives
    from pydicom import dcmread
    from pydicom.encaps import get_frame

    with dcmread(path, defer_size=1024) as ds:
        codestream = get_frame(ds.PixelData, 0, number_of_frames=1)
    fd, name = tempfile.mkstemp(suffix=".j2k")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(codestream)
        jp2 = glymur.Jp2k(name)
        if tuple(jp2.shape[:2]) != (rows, cols) or len(jp2.shape) > 2 and jp2.shape[2] != 1:
            return None  # the codestream disagrees with the header: the full decode says so in words
        cod = next(seg for seg in jp2.codestream.segment if seg.marker_id == "COD")
        levels = int(cod.num_res)  # decomposition levels of the image (tile-parts may not go deeper)
        level = reduction(rows, cols, min_side, levels)
        if level == 0:
            return None
        step = 2**level
        pixels = np.asarray(jp2[::step, ::step])
    finally:
        os.unlink(name)
    pixels = pixels[..., 0] if pixels.ndim == 3 else pixels
    return pixels if pixels.shape == reduced_shape(rows, cols, level) else None
