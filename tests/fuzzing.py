"""Seeded mutation fuzzing of image inputs, shared by tests/test_fuzz_inputs.py (a few hundred fast
cases) and benchmarks/fuzz_inputs.py (10,000 by default, crashes/hangs/unclear messages/peak memory).

Seeds: small real DICOM files from ../shared/data/dicom when present, generated DICOM (uncompressed,
RLE), PNG (8/16-bit grey, RGB, palette) and JPEG (grey, RGB). Mutations: byte flips, truncation, a
zeroed or duplicated span, DICOM tag values set to edge values (through pydicom, then saved), and PNG
IHDR / JPEG SOF header fields. Every case is reproducible from (seed, index).

A case is judged on what ingest does with one file (imaging.load_image, model_image,
thumbnail_jpeg): it may decode or fail with a MedHashError that names the file and gives a plain
reason; anything else escaping is a crash, running past the limit is a hang.
"""

from __future__ import annotations

import io
import random
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

MUTATIONS = ("flip", "truncate", "zero_span", "duplicate_span", "tag_value", "header_field")
MAX_SEED_BYTES = 200_000

# ---------------------------------------------------------------------------------------------- seeds


@dataclass(frozen=True)
class Seed:
    name: str
    kind: str  # "dicom", "png", "jpeg"
    data: bytes


def _dicom_bytes(rows: int, cols: int, *, rgb: bool = False, rle: bool = False, seed: int = 0) -> bytes:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(seed)])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CR", rows, cols
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    bits = 8 if rgb else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits if rgb else 12, \
        (bits - 1) if rgb else 11, 0
    ds.WindowCenter, ds.WindowWidth, ds.RescaleSlope, ds.RescaleIntercept = 2048, 4096, 1, 0
    rng = np.random.default_rng(seed)
    pixels = (rng.integers(0, 255, (rows, cols, 3), dtype=np.uint8) if rgb
              else rng.integers(0, 4095, (rows, cols), dtype=np.uint16))
    ds.PixelData = pixels.tobytes()
    if rle:
        ds.compress(RLELossless, encoding_plugin="pydicom")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _raster_bytes(kind: str, mode: str, size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16))
    elif mode == "RGB":
        image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    elif mode == "P":
        image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert("P")
    else:
        image = Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format="PNG" if kind == "png" else "JPEG")
    return out.getvalue()


def generated_seeds() -> list[Seed]:
    """Seeds that need no shared data."""
    return [
        Seed("gen_mono16.dcm", "dicom", _dicom_bytes(24, 20, seed=1)),
        Seed("gen_rgb8.dcm", "dicom", _dicom_bytes(16, 16, rgb=True, seed=2)),
        Seed("gen_rle.dcm", "dicom", _dicom_bytes(20, 24, rle=True, seed=3)),
        Seed("gen_grey.png", "png", _raster_bytes("png", "L", 24, 4)),
        Seed("gen_grey16.png", "png", _raster_bytes("png", "I;16", 24, 5)),
        Seed("gen_rgb.png", "png", _raster_bytes("png", "RGB", 24, 6)),
        Seed("gen_palette.png", "png", _raster_bytes("png", "P", 24, 7)),
        Seed("gen_grey.jpg", "jpeg", _raster_bytes("jpeg", "L", 32, 8)),
        Seed("gen_rgb.jpg", "jpeg", _raster_bytes("jpeg", "RGB", 32, 9)),
    ]


def shared_dicom_seeds(dicom_dir: Path | None, max_bytes: int = MAX_SEED_BYTES) -> list[Seed]:
    """Real DICOM files of ../shared/data/dicom up to `max_bytes` (read into memory, never copied)."""
    if dicom_dir is None or not dicom_dir.is_dir():
        return []
    files = sorted(p for p in dicom_dir.rglob("*.dcm") if p.is_file() and p.stat().st_size <= max_bytes)
    return [Seed(f"shared/{p.relative_to(dicom_dir)}", "dicom", p.read_bytes()) for p in files]


# ------------------------------------------------------------------------------------------ mutators

_TAG_EDITS: tuple[tuple[str, tuple[object, ...]], ...] = (
    ("Rows", (0, 1, 65535, None)), ("Columns", (0, 1, 65535, None)),
    ("BitsAllocated", (0, 1, 7, 12, 32, 64, None)), ("BitsStored", (0, 1, 17, 40, None)),
    ("HighBit", (0, 31, 63)), ("SamplesPerPixel", (0, 2, 3, 4, 255, None)),
    ("PixelRepresentation", (1, 7)), ("PlanarConfiguration", (1, 2)),
    ("PhotometricInterpretation", ("MONOCHROME1", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "XYZ", None)),
    ("NumberOfFrames", ("0", "-1", "99999", "abc")),
    ("WindowCenter", ("0", "nan", "abc", "1e308")), ("WindowWidth", ("0", "-5", "inf", "abc")),
    ("RescaleSlope", ("0", "nan", "1e308", "-1")), ("RescaleIntercept", ("inf", "-1e308", "abc")),
    ("PixelData", ("short", "long", "empty", None)),
    ("TransferSyntaxUID", (ExplicitVRBigEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                           JPEGBaseline8Bit, JPEG2000Lossless, RLELossless, "1.2.3.4", "")),
    ("VOILUTSequence", ("bad_descriptor", "empty_data")), ("ModalityLUTSequence", ("bad_descriptor",)),
    ("RedPaletteColorLookupTableDescriptor", ("bad_descriptor",)),
)


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        pos = rng.randrange(min(len(out), 2048)) if rng.random() < 0.7 else rng.randrange(len(out))
        out[pos] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    cut = rng.randrange(min(len(data), 1024)) if rng.random() < 0.5 else rng.randrange(len(data))
    return data[:cut]


def _zero_span(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    length = rng.randint(1, 256)
    fill = bytes([rng.choice((0x00, 0xFF))]) * length
    return (data[:start] + fill + data[start + length:])[: len(data)]


def _duplicate_span(data: bytes, rng: random.Random) -> bytes:
    start = rng.randrange(len(data))
    span = data[start:start + rng.randint(1, 512)]
    at = rng.randrange(len(data))
    return data[:at] + span + data[at:]


def _lut_item(kind: str) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [0, 0] if kind == "bad_descriptor" else [4, 0, 16]
    item.LUTData = [] if kind == "empty_data" else [0, 1, 2, 3]
    item.LUTExplanation = "fuzz"
    return item


def _tag_value(data: bytes, rng: random.Random) -> bytes:
    """One DICOM attribute set to an edge value (None deletes it), saved through pydicom."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:  # noqa: BLE001 - a seed pydicom cannot parse: flip bytes instead
        return _flip(data, rng)
    keyword, values = rng.choice(_TAG_EDITS)
    value = rng.choice(values)
    try:
        if keyword == "TransferSyntaxUID":
            ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = value
        elif keyword == "PixelData" and "PixelData" in ds:
            pixels = ds.PixelData
            ds.PixelData = {"short": pixels[: len(pixels) // 3], "long": pixels + pixels[:999],
                            "empty": b""}.get(value, pixels) if value else pixels
            if value is None:
                del ds.PixelData
        elif keyword.endswith("Sequence"):
            setattr(ds, keyword, Sequence([_lut_item(str(value))]))
        elif keyword.endswith("Descriptor"):
            ds.PhotometricInterpretation = "PALETTE COLOR"
            setattr(ds, keyword, [0, 0, 99])
        elif value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
        return out.getvalue()
    except Exception:  # noqa: BLE001 - pydicom refused to write this value: keep the file as it was
        return _flip(data, rng)


def _png_ihdr(data: bytes, rng: random.Random) -> bytes:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return _flip(data, rng)
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    field = rng.randrange(5)
    if field == 0:
        width = rng.choice((0, 1, 0x7FFFFFFF, width * 4))
    elif field == 1:
        height = rng.choice((0, 1, 0x7FFFFFFF, height * 4))
    elif field == 2:
        depth = rng.choice((0, 1, 3, 16, 255))
    elif field == 3:
        colour = rng.choice((1, 2, 3, 4, 6, 7))
    else:
        interlace = rng.choice((1, 2))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, comp, filt, interlace)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return data[:16] + ihdr + crc + data[33:]


def _jpeg_sof(data: bytes, rng: random.Random) -> bytes:
    match = re.search(rb"\xff[\xc0-\xc3]", data)
    if not match:
        return _flip(data, rng)
    at = match.start() + 5  # marker(2) length(2) precision(1) -> height(2) width(2) components(1)
    out = bytearray(data)
    field = rng.randrange(4)
    if field == 0:
        out[at:at + 2] = struct.pack(">H", rng.choice((0, 1, 65535)))
    elif field == 1:
        out[at + 2:at + 4] = struct.pack(">H", rng.choice((0, 1, 65535)))
    elif field == 2:
        out[at + 4] = rng.choice((0, 2, 4, 255))
    else:
        out[at - 1] = rng.choice((0, 12, 16, 255))  # sample precision
    return bytes(out)


def _header_field(data: bytes, rng: random.Random, kind: str) -> bytes:
    if kind == "png":
        return _png_ihdr(data, rng)
    if kind == "jpeg":
        return _jpeg_sof(data, rng)
    return _tag_value(data, rng)


_MUTATORS: dict[str, Callable[[bytes, random.Random, str], bytes]] = {
    "flip": lambda d, r, k: _flip(d, r),
    "truncate": lambda d, r, k: _truncate(d, r),
    "zero_span": lambda d, r, k: _zero_span(d, r),
    "duplicate_span": lambda d, r, k: _duplicate_span(d, r),
    "tag_value": lambda d, r, k: _tag_value(d, r) if k == "dicom" else _header_field(d, r, k),
    "header_field": _header_field,
}


@dataclass(frozen=True)
class Case:
    index: int
    seed_name: str
    kind: str
    mutation: str
    file_name: str
    data: bytes


def cases(seeds: list[Seed], n: int, seed: int = 0) -> Iterator[Case]:
    """`n` mutated files, reproducible from (`seed`, index). Some DICOM lose their suffix (sniffed)."""
    for index in range(n):
        rng = random.Random(f"{seed}:{index}")
        base = rng.choice(seeds)
        mutation = rng.choice(MUTATIONS)
        data = _MUTATORS[mutation](base.data, rng, base.kind)
        suffix = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg"}[base.kind]
        if base.kind == "dicom" and rng.random() < 0.15:
            suffix = ""  # archives drop the suffix: the file is sniffed for DICOM content
        yield Case(index, base.name, base.kind, mutation, f"case{index:05d}_{mutation}{suffix}", data)


# ---------------------------------------------------------------------------------------- judging

_UNCLEAR = re.compile(
    r"Traceback|File \"|line \d+|<class|object at 0x|\[Errno|Errno \d|NoneType|has no attribute|invalid literal|"
    r"not enough values|unpack requires|cannot reshape|index out of|list index|is not subscriptable|"
    r"\b[A-Z][A-Za-z]+(Error|Exception)\b|\bpanicked\b|unexpected keyword|bytes not processed|broken data stream|"
    r"Truncated File Read|decoder error|array of size|expected \d+, got \d+|\(image file is")


def unclear_reason(reason: str | None) -> str | None:
    """Why a failure reason is not a plain sentence a user can act on, or None when it is."""
    if not reason or len(reason.strip()) < 12:
        return "empty or too short"
    if len(reason) > 400:
        return "longer than 400 characters"
    match = _UNCLEAR.search(reason)
    return f"raw Python/decoder text ({match.group(0)!r})" if match else None


@dataclass
class Verdict:
    outcome: str  # "ok", "failed", "unclear", "crash"
    detail: str = ""


def judge(path: Path) -> Verdict:
    """What ingest's per-file work does with `path` (no library needed)."""
    from medhash_app.core.errors import MedHashError
    from medhash_app.core.imaging import load_image, model_image, thumbnail_jpeg

    try:
        image = load_image(path)
        model_image(image, 64)
        thumbnail_jpeg(image, 32)
    except MedHashError as exc:
        if exc.item != str(path) or not str(exc).startswith(str(path)):
            return Verdict("unclear", f"the message does not name the file: {exc}")
        problem = unclear_reason(exc.reason)
        return Verdict("unclear", f"{problem}: {exc.reason}") if problem else Verdict("failed", exc.reason)
    except MemoryError:
        return Verdict("crash", "MemoryError")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - what fuzzing looks for: anything else is a traceback
        return Verdict("crash", f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    return Verdict("ok")
