"""Builders for hostile inputs shared by the ingest and CLI tests: a DICOM whose RLE data makes
pylibjpeg-rle panic, a tiny valid DICOM, and a child process that cannot bypass file modes."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

RLE_SOURCE = "transfer_syntax_misc/MR_small_RLE.dcm"  # in ../shared/data/dicom
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def panicking_rle(dicom_dir: Path, out: Path) -> Path:
    """MR_small_RLE.dcm with its second RLE segment offset moved from 1948 to 218: pylibjpeg-rle
    2.2 panics in Rust ("index out of bounds"), a pyo3 PanicException that is a BaseException."""
    ds = pydicom.dcmread(dicom_dir / RLE_SOURCE)
    frame = bytearray(list(generate_fragments(ds.PixelData))[-1])
    struct.pack_into("<I", frame, 8, 218)
    ds.PixelData = encapsulate([bytes(frame)])
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
    return out


def tiny_dicom(path: Path, seed: int = 0) -> Path:
    """A 16 x 16 uncompressed CR image (no shared data needed)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", 16, 16, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4095, (16, 16), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _drop_file_mode_override() -> None:
    """In the child before exec: without these capabilities root obeys file modes like anyone."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_python(code: str, *args: str, obey_file_modes: bool = False, timeout: float = 120) -> str:
    """Run `code` in a fresh interpreter and return its stdout; fails the test on a timeout.

    `obey_file_modes`: the child honours mode-000 files even when the tests run as root (the
    capabilities that let root read them are dropped); skips where that cannot be done.
    """
    preexec = None
    if obey_file_modes and os.geteuid() == 0:
        if not sys.platform.startswith("linux"):
            pytest.skip("running as root and cannot drop the file-mode override here")
        preexec = _drop_file_mode_override
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=preexec, cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        pytest.fail(f"the child did not finish within {timeout} s (hung on a hostile input?)")
    except subprocess.SubprocessError as exc:  # preexec failed: no CAP_SETPCAP in this container
        pytest.skip(f"cannot drop root's file-mode override here ({exc})")
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def make_unreadable(path: Path) -> None:
    """Mode 000, and check it bites for an unprivileged reader (the child of `run_python`)."""
    path.chmod(0)
    read = "os.listdir" if path.is_dir() else "open"
    probe = f"import os\ntry:\n    {read}({str(path)!r})\n    print('readable')\nexcept PermissionError:\n    print('denied')"
    if run_python(probe, obey_file_modes=True).strip() != "denied":
        pytest.skip("mode-000 files stay readable here")
