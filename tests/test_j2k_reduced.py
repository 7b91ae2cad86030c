"""JPEG 2000 DICOMs decoded at a reduced resolution for the model input (core/imaging/j2k_reduced.py):
on the real J2K DICOMs the model input stays within 40 dB PSNR of the one from the full decode, the
viewer still gets the full image, and a damaged file is reported as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medhash_app.core.errors import MedHashError
from medhash_app.core.imaging import load_image, model_image
from medhash_app.core.imaging.j2k_reduced import MARGIN, reduction
from medhash_app.core.imaging.render import MODEL_SIDE

PSNR_DB = 40.0
# single-frame, grey, unsigned J2K files of ../shared/data/dicom (the ones decoded reduced)
REDUCED = ["xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossless.dcm", "xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossy.dcm",
           "xray_chest/DX_chest_PA_MONO1_Canon_J2K_lossless.dcm", "xray_other/CR_hip_MONO2_Fuji_RG2_J2KI.dcm",
           "xray_other/CR_hip_MONO2_Fuji_RG2_J2KR.dcm"]
# J2K files that are not reduced: too small, signed, colour, multi-frame
FULL = ["transfer_syntax_misc/JPEG2000.dcm", "transfer_syntax_misc/US1_J2KI.dcm",
        "transfer_syntax_misc/emri_small_jpeg_2k_lossless.dcm"]


@pytest.fixture(scope="module")
def openjpeg() -> None:
    try:
        import glymur
    except (ImportError, OSError) as exc:
        pytest.skip(f"glymur or libopenjp2 is not installed ({exc}); J2K files are decoded in full")
    if not glymur.version.openjpeg_version or glymur.version.openjpeg_version < "2.3":
        pytest.skip("glymur found no libopenjp2 >= 2.3 (Debian: apt install libopenjp2-7)")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_level_keeps_the_margin_over_the_model_input() -> None:
    assert reduction(1955, 1841, 256, 5) == 2 and reduction(2128, 2000, 256, 5) == 2
    assert reduction(2128, 2000, 256, 1) == 1  # never deeper than the codestream's levels
    assert reduction(700, 500, 256, 5) == 0    # 350 < 1.5 x 256: decoded in full
    for rows, cols in ((1955, 1841), (2140, 1760), (4096, 300), (383, 383)):
        level = reduction(rows, cols, 256, 8)
        assert max(rows, cols) / 2**level >= MARGIN * 256 or level == 0


@pytest.mark.shared_data
@pytest.mark.parametrize("name", REDUCED)
def test_model_input_from_the_reduced_decode_is_close_to_the_full_one(dicom_dir: Path, openjpeg: None,
                                                                      name: str) -> None:
    path = dicom_dir / name
    full = load_image(path)  # the viewer's call: full resolution
    reduced = load_image(path, min_side=MODEL_SIDE)
    assert full.pixels.shape == (int(full.facts.rows), int(full.facts.cols))
    assert reduced.pixels.shape[0] < full.pixels.shape[0] and reduced.pixels.shape[1] < full.pixels.shape[1]
    assert max(reduced.pixels.shape) >= MARGIN * MODEL_SIDE
    assert (reduced.invert, reduced.default_window) == (full.invert, full.default_window)
    psnr = _psnr(np.asarray(model_image(full)), np.asarray(model_image(reduced)))
    assert psnr >= PSNR_DB, f"{name}: {psnr:.1f} dB"


@pytest.mark.shared_data
@pytest.mark.parametrize("name", FULL)
def test_other_j2k_files_are_decoded_in_full(dicom_dir: Path, openjpeg: None, name: str) -> None:
    path = dicom_dir / name
    assert np.array_equal(load_image(path, min_side=MODEL_SIDE).pixels, load_image(path).pixels)


@pytest.mark.shared_data
def test_full_resolution_through_libopenjp2_equals_pydicom(dicom_dir: Path, openjpeg: None) -> None:
    """The values glymur reads are pydicom's (level 0), so a reduced level is the same image, smaller."""
    import tempfile

    import glymur
    import pydicom
    from pydicom.encaps import get_frame
    from pydicom.pixels import pixel_array

    path = dicom_dir / REDUCED[0]
    ds = pydicom.dcmread(path)
    with tempfile.NamedTemporaryFile(suffix=".j2k") as fh:
        fh.write(get_frame(ds.PixelData, 0, number_of_frames=1))
        fh.flush()
        assert np.array_equal(glymur.Jp2k(fh.name)[:], pixel_array(path))


@pytest.mark.shared_data
def test_damaged_j2k_file_gives_the_same_clear_error(dicom_dir: Path, openjpeg: None) -> None:
    path = dicom_dir / "xray_chest/DX_chest_PA_MONO1_Canon_J2K_lossless_CORRUPT_COM_marker.dcm"
    with pytest.raises(MedHashError) as full:
        load_image(path)
    with pytest.raises(MedHashError) as reduced:
        load_image(path, min_side=MODEL_SIDE)
    assert str(reduced.value) == str(full.value) and str(path) in str(full.value)


@pytest.mark.shared_data
def test_query_encoding_uses_the_reduced_decode(dicom_dir: Path, openjpeg: None, tiny_library: Path) -> None:
    """`encode_files` (the search's image query) encodes the reduced decode's model input."""
    from medhash_app.core.encoder.service import EncoderService
    from medhash_app.core.library import Library

    with Library.open(tiny_library, read_only=True) as lib:
        checkpoint = lib.active_model()["checkpoint_path"]
    encoder = EncoderService(checkpoint, "cpu")
    path = dicom_dir / REDUCED[0]
    reduced = load_image(path, min_side=MODEL_SIDE)
    got = encoder.encode_files([path])
    want = encoder.encode_loaded([reduced])
    assert all(np.array_equal(got.codes[b], want.codes[b]) for b in want.codes)
    assert np.array_equal(got.embeddings, want.embeddings)
