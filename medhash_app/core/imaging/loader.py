"""`load_image`: the one entry point that turns any supported file into a LoadedImage."""

from __future__ import annotations

from pathlib import Path

from medhash_app.core.errors import CorruptFileError, MedHashError, UnsupportedFileError
from medhash_app.core.imaging.dicom import load_dicom, looks_like_dicom
from medhash_app.core.imaging.loaded import LoadedImage
from medhash_app.core.imaging.raster import load_raster
from medhash_app.core.input_files import input_size

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
SUPPORTED_SUFFIXES = DICOM_SUFFIXES | RASTER_SUFFIXES
DEFAULT_MAX_PIXELS = 100_000_000


def load_image(path: str | Path, *, frame: int | None = None, salt: bytes | str = b"",
               max_pixels: int = DEFAULT_MAX_PIXELS, key: bytes | None = None,
               min_side: int | None = None) -> LoadedImage:
    """Decode `path` (DICOM, PNG, JPEG or TIFF) into a LoadedImage.

    Files without a known suffix are accepted when their content is DICOM (archives often drop the
    suffix). `frame` picks a frame of a multi-frame file: DICOM defaults to the middle frame, other
    formats to the first. Pixel counts above `max_pixels` (all frames) are refused from the header,
    before decoding. Raises UnsupportedFileError, CorruptFileError or ImageTooLargeError.
    `salt` and `key` make `facts.patient_key` the library's keyed pseudonym (core/pseudonym.py).
    `min_side`: the caller only needs an image whose long side is at least this (the model input):
    a JPEG 2000 DICOM may then come back at a reduced resolution (imaging/j2k_reduced.py). The viewer
    leaves it None and always gets the full image.
    """
    path = Path(path)
    size = file_size(path)
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES:
        if size == 0:
            raise CorruptFileError(path, "the file is empty (0 bytes)")
        return load_raster(path, frame=frame, max_pixels=max_pixels)
    if suffix in DICOM_SUFFIXES or looks_like_dicom(path):
        if size == 0:
            raise CorruptFileError(path, "the file is empty (0 bytes)")
        return load_dicom(path, frame=frame, salt=salt, max_pixels=max_pixels, key=key, min_side=min_side)
    shown = f"'{suffix}' files are" if suffix else "files without a suffix that are not DICOM are"
    raise UnsupportedFileError(path, f"{shown} not supported; MedHash reads DICOM, PNG, JPEG and TIFF")


def file_size(path: Path) -> int:
    """Size in bytes, turning 'missing', 'unreadable', 'not a regular file' (a FIFO, /dev/zero) and
    'over MAX_INPUT_BYTES' into a message the user can act on."""
    try:
        return input_size(path)
    except FileNotFoundError as exc:
        raise MedHashError(path, "the file does not exist") from exc
    except OSError as exc:
        raise MedHashError(path, f"the file cannot be read ({exc.strerror or exc})") from exc
