"""Bad input becomes a typed error that names the file and the cause, never PHI."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import MPEG2MPML, JPEGExtended12Bit, JPEGLSLossless

from medhash_app.core.errors import (
    CorruptFileError,
    ImageTooLargeError,
    MedHashError,
    UnsupportedFileError,
)
from medhash_app.core.imaging import SUPPORTED_SUFFIXES, load_image, looks_like_dicom

MR_SMALL = "transfer_syntax_misc/MR_small_implicit.dcm"
HIP_UNCOMPRESSED = "xray_other/CR_hip_MONO2_Fuji_RG2_UNC_explicitLE.dcm"
CHEST_J2K = "xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossy.dcm"


def _raises(error: type[MedHashError], path: Path, *reason_words: str, **kwargs) -> MedHashError:
    with pytest.raises(error) as caught:
        load_image(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message, "the message must name the file"
    for word in reason_words:
        assert word in caught.value.reason
    return caught.value


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but carries no pixel data (costs no memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


# --- files that are not what they claim -----------------------------------------------------------

@pytest.mark.parametrize("suffix", [".dcm", ".png", ".jpg", ".tif"])
def test_zero_byte_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    path.touch()
    _raises(CorruptFileError, path, "empty")


def test_text_file_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("Findings: no acute cardiopulmonary process.\n" * 20)
    assert not looks_like_dicom(path)
    _raises(CorruptFileError, path, "not a DICOM file")


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_text("this is not a picture\n" * 10)
    _raises(CorruptFileError, path, "not a readable PNG image")


def test_gif_named_png_is_not_parsed(tmp_path: Path) -> None:
    """Only PNG/JPEG/TIFF parsers run, whatever the suffix says."""
    path = tmp_path / "animation.png"
    Image.new("P", (8, 8)).save(path, format="GIF")
    _raises(CorruptFileError, path, "not a readable PNG image")


def test_truncated_png(tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _raises(CorruptFileError, cut, "truncated or damaged")


@pytest.mark.parametrize("name", ["report.txt", "scan.gif", "volume.nii"])
def test_unsupported_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"GIF89a" + bytes(100))
    error = _raises(UnsupportedFileError, path, "not supported")
    assert Path(name).suffix in error.reason
    assert Path(name).suffix not in SUPPORTED_SUFFIXES


def test_missing_file(tmp_path: Path) -> None:
    _raises(MedHashError, tmp_path / "gone.dcm", "does not exist")


# --- damaged real DICOM ---------------------------------------------------------------------------

@pytest.mark.shared_data
@pytest.mark.parametrize("name", [HIP_UNCOMPRESSED, CHEST_J2K])
def test_dicom_cut_in_half(dicom_dir: Path, tmp_path: Path, name: str) -> None:
    data = (dicom_dir / name).read_bytes()
    path = tmp_path / Path(name).name
    path.write_bytes(data[: len(data) // 2])
    _raises(CorruptFileError, path, "damaged")


@pytest.mark.shared_data
def test_dicom_cut_inside_the_header(dicom_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "head.dcm"
    path.write_bytes((dicom_dir / HIP_UNCOMPRESSED).read_bytes()[:1000])
    _raises(CorruptFileError, path, "truncated or damaged")


@pytest.mark.shared_data
def test_dicom_that_ends_before_its_pixel_data(dicom_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "header_only.dcm"
    pydicom.dcmread(dicom_dir / CHEST_J2K, stop_before_pixels=True).save_as(path)
    _raises(CorruptFileError, path, "missing or incomplete")


@pytest.mark.shared_data
def test_error_messages_carry_no_phi(dicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / MR_SMALL)
    ds.PatientName, ds.PatientID = "Doe^Jane", "PHI-123456"
    ds.PixelData = ds.PixelData[:100]
    path = tmp_path / "phi.dcm"
    ds.save_as(path)
    error = _raises(CorruptFileError, path, "truncated or damaged")
    assert "Doe" not in str(error) and "PHI-123456" not in str(error)


@pytest.mark.shared_data
def test_dicom_without_an_image(tmp_path: Path) -> None:
    rtplan = Path(pydicom.__file__).parent / "data" / "test_files" / "rtplan.dcm"
    if not rtplan.is_file():
        pytest.skip("pydicom's test files are not installed")
    path = tmp_path / "plan.dcm"
    path.write_bytes(rtplan.read_bytes())
    _raises(UnsupportedFileError, path, "holds no image", "RT Plan")


# --- codecs ---------------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_unsupported_transfer_syntax(dicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / MR_SMALL)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(64)])
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    path = tmp_path / "video.dcm"
    ds.save_as(path, enforce_file_format=True)
    _raises(UnsupportedFileError, path, "MPEG2", "not supported")


@pytest.mark.shared_data
def test_missing_codec_plugin_is_reported(dicom_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulates an install without pylibjpeg-libjpeg/gdcm (the plugin registry is the system edge)."""
    monkeypatch.setattr(get_decoder(JPEGLSLossless), "_available", {})
    _raises(UnsupportedFileError, dicom_dir / "xray_other/CR_hip_MONO2_Fuji_RG2_JLSL.dcm",
            "no decoder", "JPEG-LS Lossless", "docs/codecs.md")


@pytest.mark.shared_data
def test_codec_that_refuses_a_variant_is_unsupported_not_corrupt(dicom_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pylibjpeg-libjpeg (e.g. a gdcm build) only decoders that refuse 12-bit JPEG Extended
    remain: a valid file must then be reported as unsupported, not as damaged."""
    decoder = get_decoder(JPEGExtended12Bit)
    monkeypatch.setattr(decoder, "_available", {k: v for k, v in decoder._available.items() if k != "pylibjpeg"})
    if not decoder.is_available:
        pytest.skip("no fallback JPEG plugin (Pillow) registered")
    _raises(UnsupportedFileError, dicom_dir / "xray_other/CR_hip_MONO2_Fuji_RG2_JPEGExt12bit_fixed.dcm",
            "cannot read", "12-bit")


# --- size limits ----------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_huge_dicom_is_refused_from_its_header(dicom_dir: Path, tmp_path: Path) -> None:
    """The header claims 20000 x 20000; the data is 64 x 64. Decoding would raise CorruptFileError,
    so ImageTooLargeError proves the check runs before decoding."""
    ds = pydicom.dcmread(dicom_dir / MR_SMALL)
    ds.Rows = ds.Columns = 20000
    path = tmp_path / "huge.dcm"
    ds.save_as(path)
    _raises(ImageTooLargeError, path, "400,000,000 pixels", "100,000,000")


@pytest.mark.shared_data
def test_pixel_limit_counts_every_frame(dicom_dir: Path) -> None:
    path = dicom_dir / "transfer_syntax_misc/emri_small_jpeg_2k_lossless.dcm"  # 10 x 64 x 64
    _raises(ImageTooLargeError, path, "40,960 pixels", max_pixels=40_000)
    assert load_image(path, max_pixels=40_960).frame_count == 10


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_png_is_refused_before_loading(tmp_path: Path) -> None:
    """12000 x 12000 is under Pillow's bomb limit, so only our own header check can stop it."""
    _raises(ImageTooLargeError, _png_header_only(tmp_path / "big.png", 12000, 12000), "144,000,000")


def test_decompression_bomb_becomes_image_too_large(tmp_path: Path) -> None:
    _raises(ImageTooLargeError, _png_header_only(tmp_path / "bomb.png", 40000, 40000), "too large",
            max_pixels=10**10)


def test_small_limit_applies_to_png(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("L", (100, 100)).save(path)
    _raises(ImageTooLargeError, path, "10,000 pixels", max_pixels=5_000)
