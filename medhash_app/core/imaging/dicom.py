"""DICOM decoding: pydicom 3 + the pylibjpeg plugins (see docs/codecs.md for who decodes what).

The header is read first (without pixel data) so size limits and codec availability are checked
before any decoding; then exactly one frame is decoded with `pydicom.pixels.pixel_array(index=)`.
"""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.pixels.processing import apply_voi
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

from medhash_app.core.errors import CorruptFileError, ImageTooLargeError, MedHashError, UnsupportedFileError
from medhash_app.core.imaging.facts import facts_from_dataset, int_value, text_value
from medhash_app.core.imaging.j2k_reduced import decode_reduced
from medhash_app.core.imaging.loaded import LoadedImage, VoiLut
from medhash_app.core.input_files import open_input

log = logging.getLogger(__name__)
_IDENTIFYING_TAGS = ("SOPClassUID", "Modality", "Rows", "StudyInstanceUID", "PhotometricInterpretation")
_PLUGIN_LINE = re.compile(r"^\s+(\w[\w-]*): (.+)$", re.MULTILINE)
_LIBJPEG_CODE = re.compile(r"libjpeg error code '-?\d+' returned from \w+\(\): ")
_NOT_SUPPORTED = re.compile(r"does not support|not supported|unsupported", re.IGNORECASE)
# Tried first where installed: pydicom tries plugins in registration order (libjpeg before CharLS for
# JPEG-LS), and CharLS decodes the 1955x1841 chest file in ~150 ms against ~600 ms (docs/codecs.md).
PREFERRED_PLUGIN = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}


def looks_like_dicom(path: str | Path) -> bool:
    """True for a Part 10 file ("DICM" at byte 128) or a bare data set pydicom can parse.

    A bare data set must yield a recognisable attribute (SOP Class, Modality, Rows...), so text
    or random bytes forced through the parser do not count.
    """
    try:
        with open_input(path) as handle:  # a FIFO or /dev/zero is not DICOM (and must not block)
            head = handle.read(132)
        if head[128:132] == b"DICM":
            return True
        if len(head) < 8:
            return False
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True, defer_size=1024)  # no big reads
        return any(keyword in ds for keyword in _IDENTIFYING_TAGS)
    except Exception:  # noqa: BLE001 - any parse failure simply means "not DICOM"
        return False


def load_dicom(path: Path, *, frame: int | None, salt: bytes | str, max_pixels: int,
               key: bytes | None = None, min_side: int | None = None) -> LoadedImage:
    """Decode one frame of a DICOM file into a LoadedImage (modality LUT applied, no VOI yet).
    Whatever fails is a MedHashError naming the file in plain words; the original exception is its
    __cause__ (for the log, never for the user). `min_side`: see `load_image`."""
    try:
        return _load_dicom(path, frame=frame, salt=salt, max_pixels=max_pixels, key=key, min_side=min_side)
    except (MedHashError, MemoryError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # a header value no code path expected (a fuzzed LUT...)
        raise CorruptFileError(path, "the DICOM header holds values that cannot be interpreted (for example an "
                                     "invalid lookup table or pixel description)") from exc


def _load_dicom(path: Path, *, frame: int | None, salt: bytes | str, max_pixels: int,
                key: bytes | None, min_side: int | None = None) -> LoadedImage:
    header = read_header(path)
    tsyntax = transfer_syntax(header)
    rows, cols, frames = geometry(header, path)
    if rows * cols * frames > max_pixels:
        raise ImageTooLargeError(path, f"the image has {rows} x {cols} pixels x {frames} frame(s) = "
                                       f"{rows * cols * frames:,} pixels, over the limit of {max_pixels:,}")
    index = choose_frame(frame, frames, path)
    stored = decode_reduced(path, header, tsyntax, min_side) if min_side else None
    if stored is None:
        stored = decode_frame(path, header, tsyntax, None if frames == 1 else index)
    elif stored.shape[:2] != (rows, cols):  # a reduced J2K decode: the model input only needs min_side
        rows, cols = stored.shape[:2]
    if stored.ndim not in (2, 3) or stored.shape[:2] != (rows, cols):
        raise CorruptFileError(path, "the decoded pixel data does not have the image size the header gives "
                                     "(Rows, Columns, Samples per Pixel or Number of Frames is wrong)")
    facts = facts_from_dataset(header, salt=salt, transfer_syntax=tsyntax.name, frames=frames, key=key)
    common = {"path": path, "facts": facts, "frame_count": frames, "frame_index": index}
    if stored.ndim == 3 or facts.photometric == "PALETTE COLOR":
        return LoadedImage(pixels=color_pixels(stored, header, path), is_color=True, invert=False,
                           default_window=None, **common)
    windows = file_windows(header)
    return LoadedImage(
        pixels=modality_pixels(stored, header), is_color=False,
        invert=facts.photometric == "MONOCHROME1",
        default_window=(windows[0][1], windows[0][2]) if windows else None,
        voi_lut=voi_lut(header), voi_function=text_value(header, "VOILUTFunction") or "LINEAR",
        file_windows=windows, units=units(header), **common,
    )


def read_header(path: Path) -> Dataset:
    """Everything up to the pixel data; bare data sets (no file meta) get their encoding sniffed."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass  # no "DICM" preamble: maybe a bare data set
    except Exception as exc:  # pydicom raises many types for damaged headers
        raise CorruptFileError(path, "the DICOM header is truncated or damaged, so the file cannot be read") from exc
    if not looks_like_dicom(path):
        raise CorruptFileError(path, "not a DICOM file: it has no 'DICM' header and its content does "
                                     "not parse as a DICOM data set")
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def transfer_syntax(header: Dataset) -> UID:
    """The file's transfer syntax, or the one pydicom sniffed for a bare data set."""
    tsyntax = getattr(header, "file_meta", {}).get("TransferSyntaxUID")
    if tsyntax:
        return UID(tsyntax)
    implicit, little = header.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian


def geometry(header: Dataset, path: Path) -> tuple[int, int, int]:
    """(rows, cols, frames) from the header, refusing files that do not describe an image."""
    rows, cols = int_value(header, "Rows"), int_value(header, "Columns")
    if rows and cols and rows > 0 and cols > 0:
        return rows, cols, max(1, int_value(header, "NumberOfFrames") or 1)
    if not is_image_class(header):
        raise UnsupportedFileError(path, f"the DICOM file holds no image (it is a '{sop_class(header).name}')")
    other = endianness_mismatch(path, header)
    if other:
        raise CorruptFileError(path, f"the file's transfer syntax ({transfer_syntax(header).name}) does not match "
                                     f"its data, which is written {other}; the file was exported with the wrong "
                                     "transfer syntax UID")
    raise CorruptFileError(path, "the DICOM file is truncated or damaged: the image size (Rows/Columns) "
                                 "is missing")


def endianness_mismatch(path: Path, header: Dataset) -> str | None:
    """"Little Endian" / "Big Endian" when the data set reads correctly (with Rows and Columns) only
    in the byte order its Explicit VR transfer syntax does not say; else None. A Big Endian UID on
    Little Endian data otherwise looks like a file without an image size."""
    meta = getattr(header, "file_meta", None)
    tsyntax = UID(meta.get("TransferSyntaxUID") or "") if meta else UID("")
    if tsyntax not in (ExplicitVRBigEndian, ExplicitVRLittleEndian):
        return None
    try:
        meta_length = int(meta.get("FileMetaInformationGroupLength") or 0)
        with open_input(path) as handle:
            if handle.read(132)[128:] != b"DICM" or not meta_length:
                return None
            handle.seek(132 + 12 + meta_length)  # (0002,0000) UL element: 12 bytes, then the meta group
            flipped = not tsyntax.is_little_endian
            other = read_dataset(handle, is_implicit_VR=False, is_little_endian=flipped, defer_size=4096,
                                 stop_when=lambda tag, vr, length: tag >= 0x7FE00010)
            rows, cols = int_value(other, "Rows"), int_value(other, "Columns")
    except Exception:  # noqa: BLE001 - the other byte order does not parse either
        return None
    return ("Little Endian" if flipped else "Big Endian") if rows and cols and rows > 0 and cols > 0 else None


def sop_class(header: Dataset) -> UID:
    """SOP Class UID from the data set, else from the file meta ('' when neither says)."""
    meta = getattr(header, "file_meta", {})
    return UID(header.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")


def is_image_class(header: Dataset) -> bool:
    """False only for a known non-image SOP class (report, RT plan, DICOMDIR...): missing image
    attributes in anything else mean the file is damaged, not that it is the wrong kind."""
    uid = sop_class(header)
    return not uid or uid.name == str(uid) or "Image" in uid.name


def choose_frame(frame: int | None, frames: int, path: Path) -> int:
    """The requested frame, or by default the middle one (most representative of a cine or stack)."""
    if frame is None:
        return frames // 2
    if not 0 <= frame < frames:
        raise MedHashError(path, f"frame {frame} does not exist; the file has {frames} frame(s), "
                                 f"numbered 0 to {frames - 1}")
    return frame


def decode_frame(path: Path, header: Dataset, tsyntax: UID, index: int | None) -> np.ndarray:
    """Stored values of one frame; YBR is converted to RGB by pydicom; errors become typed errors."""
    check_decoder(path, tsyntax)
    try:
        streamable = bool(getattr(header, "file_meta", {}).get("TransferSyntaxUID"))
        if streamable and tsyntax != DeflatedExplicitVRLittleEndian:
            return _pixel_array(path, tsyntax, index)  # reads only this frame's bytes from the file
        return _pixel_array(full_dataset(path, tsyntax), tsyntax, index)
    except MedHashError:
        raise
    except AttributeError as exc:
        if "Pixel Data" in str(exc) and not is_image_class(header):
            raise UnsupportedFileError(path, "the DICOM file holds no image (no Pixel Data element)") from exc
        raise CorruptFileError(path, "the image data is missing or incomplete") from exc
    except RuntimeError as exc:
        reasons = _plugin_reasons(exc)
        if reasons and all(_NOT_SUPPORTED.search(reason) for reason in reasons):
            raise UnsupportedFileError(path, f"the installed decoders cannot read this {tsyntax.name} "
                                             f"image ({reasons[0]}); see docs/codecs.md") from exc
        raise CorruptFileError(path, f"the {tsyntax.name} pixel data is damaged and could not be "
                                     "decoded") from exc
    except Exception as exc:  # ValueError/EOFError/struct.error for short data
        raise CorruptFileError(path, pixel_problem(exc)) from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a native decoder's panic (pyo3's PanicException) is no Exception
        raise CorruptFileError(path, f"the {tsyntax.name} pixel data is damaged: the decoder crashed "
                                     "on it") from exc


def _pixel_array(source: Path | Dataset, tsyntax: UID, index: int | None) -> np.ndarray:
    """The preferred plugin first (PREFERRED_PLUGIN); a stream it rejects goes to every installed
    plugin in pydicom's order, whose errors are the ones reported."""
    plugin = PREFERRED_PLUGIN.get(tsyntax)
    if plugin and plugin in get_decoder(tsyntax).available_plugins:
        try:
            return pixel_array(source, index=index, decoding_plugin=plugin)
        except Exception as exc:  # noqa: BLE001 - the other plugins get their turn below
            log.debug("%s declined this %s stream (%s); trying every installed plugin", plugin, tsyntax.name, exc)
    return pixel_array(source, index=index)


_SIZE_WORDS = re.compile(r"reshape|buffer|length|size|too short|truncat|enough|end of|unpack", re.IGNORECASE)


def pixel_problem(exc: BaseException) -> str:
    """A plain sentence for a pixel-data failure (the exception's own text goes to the log only)."""
    if isinstance(exc, EOFError | struct.error) or _SIZE_WORDS.search(str(exc)):
        return ("the pixel data is truncated or damaged: its length does not match the image size in the "
                "header (Rows, Columns, Bits Allocated, Samples per Pixel)")
    return "the pixel data is truncated or damaged and could not be decoded"


def check_decoder(path: Path, tsyntax: UID) -> None:
    """Refuse early, in plain words, when no installed plugin can decode this transfer syntax."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise UnsupportedFileError(path, f"images compressed as '{tsyntax.name}' ({tsyntax}) are not "
                                         "supported") from exc
    if not decoder.is_available:
        raise UnsupportedFileError(path, f"no decoder for '{tsyntax.name}' is installed; install "
                                         "pylibjpeg-libjpeg or python-gdcm (see docs/codecs.md)")


def full_dataset(path: Path, tsyntax: UID) -> Dataset:
    """Whole data set for files pixel_array cannot stream (deflated, or without file meta)."""
    ds = pydicom.dcmread(path, force=True)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if not meta.get("TransferSyntaxUID"):
        meta.TransferSyntaxUID = tsyntax
    ds.file_meta = meta
    return ds


def modality_pixels(stored: np.ndarray, header: Dataset) -> np.ndarray:
    """Modality LUT -> float32. Rescale is done here in float32 because pydicom's
    apply_modality_lut promotes to float64 (twice the memory of a 2k x 2k radiograph)."""
    if header.get("ModalityLUTSequence"):
        return apply_modality_lut(stored, header).astype(np.float32)
    slope = _float(header.get("RescaleSlope"), 1.0)
    intercept = _float(header.get("RescaleIntercept"), 0.0)
    out = stored.astype(np.float32)
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def color_pixels(stored: np.ndarray, header: Dataset, path: Path) -> np.ndarray:
    """uint8 RGB from RGB/YBR (already converted by pydicom) or PALETTE COLOR (via its LUT)."""
    rgb = stored
    if text_value(header, "PhotometricInterpretation") == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(stored, header)
        except Exception as exc:  # missing/invalid palette descriptors
            raise CorruptFileError(path, "the colour palette is missing or invalid") from exc
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise UnsupportedFileError(path, f"colour images with shape {rgb.shape} are not supported")
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        bits = 8 * rgb.dtype.itemsize if text_value(header, "PhotometricInterpretation") == "PALETTE COLOR" \
            else (int_value(header, "BitsStored") or 8 * rgb.dtype.itemsize)
        rgb = (rgb.astype(np.float32) * np.float32(255.0 / (2**bits - 1))).round().clip(0, 255)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def file_windows(header: Dataset) -> tuple[tuple[str, float, float], ...]:
    """All (name, center, width) windows stored in the file; invalid widths are skipped."""
    centers, widths = _floats(header.get("WindowCenter")), _floats(header.get("WindowWidth"))
    names = (text_value(header, "WindowCenterWidthExplanation") or "").split("\\")
    windows = []
    for i, (center, width) in enumerate(zip(centers, widths, strict=False)):
        if width > 0:
            name = names[i].strip() if i < len(names) and names[i].strip() else f"file {i + 1}"
            windows.append((name, center, width))
    if len(windows) == 1 and windows[0][0] == "file 1":
        windows[0] = ("file", windows[0][1], windows[0][2])
    return tuple(windows)


def voi_lut(header: Dataset) -> VoiLut | None:
    """The first VOI LUT of the file as a [0, 1] table; parsing is left to pydicom's apply_voi."""
    sequence = header.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 2**16
    if first >= 2**15 and int_value(header, "PixelRepresentation") == 1:
        first -= 2**16  # descriptor stored as US for signed images
    inputs = np.arange(first, first + entries, dtype=np.int64)
    table = apply_voi(inputs, header, index=0).astype(np.float32)
    table /= np.float32(max(2**bits - 1, float(table.max()), 1.0))
    return VoiLut(first_mapped=first, table=table, explanation=str(item.get("LUTExplanation", "")))


def units(header: Dataset) -> str | None:
    """'HU' when the rescale yields Hounsfield units (RescaleType HU, or CT with a rescale)."""
    rescale_type = (text_value(header, "RescaleType") or "").upper()
    has_rescale = "RescaleSlope" in header and "RescaleIntercept" in header
    if rescale_type == "HU" or (text_value(header, "Modality") == "CT" and has_rescale):
        return "HU"
    return None


def _floats(value: object) -> list[float]:
    if value is None or value == "":
        return []
    values = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    out = []
    for item in values:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            continue
    return out


def _float(value: object, default: float) -> float:
    floats = _floats(value)
    return floats[0] if floats else default


def _plugin_reasons(exc: Exception) -> list[str]:
    """Each plugin's complaint from pydicom's 'exceptions were raised by all plugins' message."""
    return [_short(_LIBJPEG_CODE.sub("", f"{name}: {text}")) for name, text in _PLUGIN_LINE.findall(str(exc))]


def _short(exc: object, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
