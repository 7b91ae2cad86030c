"""DICOM pipeline on real files: polarity, codecs agreeing, bit depth, frames, colour, LUTs, facts."""

from __future__ import annotations

import hashlib
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.pixels.processing import apply_voi
from pydicom.sequence import Sequence

from medhash_app.core.errors import MedHashError
from medhash_app.core.imaging import load_image, looks_like_dicom, render, window_presets

pytestmark = pytest.mark.shared_data

PHILIPS = "xray_chest/CR_chest_MONO1_Philips_RG1_{}.dcm"
HIP = "xray_other/CR_hip_MONO2_Fuji_RG2_{}.dcm"
MR_SMALL = "transfer_syntax_misc/MR_small_implicit.dcm"
AGFA_THUMB = "xray_chest/CR_cspine_MONO1_Agfa_16x16_thumb1.dcm"


def _centre_and_lungs(display: np.ndarray) -> tuple[float, float, float]:
    """Mean of the central vertical strip (spine/mediastinum) and of both lateral lung fields."""
    h, w = display.shape
    centre = display[int(0.3 * h):int(0.7 * h), int(0.45 * w):int(0.55 * w)].mean()
    right = display[int(0.3 * h):int(0.6 * h), int(0.2 * w):int(0.35 * w)].mean()
    left = display[int(0.3 * h):int(0.6 * h), int(0.65 * w):int(0.8 * w)].mean()
    return float(centre), float(right), float(left)


# --- polarity -------------------------------------------------------------------------------------

def test_monochrome1_chest_has_dark_lungs_and_bright_spine(dicom_dir: Path) -> None:
    img = load_image(dicom_dir / PHILIPS.format("explicitLE"))
    assert img.invert and img.facts.photometric == "MONOCHROME1"
    centre, right, left = _centre_and_lungs(img.display)
    assert centre > right + 40 and centre > left + 40
    # the stored values are not inverted (inversion happens once, in render) ...
    raw_centre, raw_right, raw_left = _centre_and_lungs(img.pixels)
    assert raw_centre < raw_right and raw_centre < raw_left
    # ... and turning inversion off gives the negative
    plain = render(img, invert=False)
    assert np.array_equal(plain, 255 - img.display)


def test_monochrome2_chest_keeps_its_polarity(dicom_dir: Path) -> None:
    img = load_image(dicom_dir / "xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm")
    assert not img.invert
    centre, right, left = _centre_and_lungs(img.display)
    assert centre > right + 40 and centre > left + 40


@pytest.mark.parametrize("twin", ["J2K_lossless", "J2K_lossy", "JPEGLS_nearlossless"])
def test_compressed_twins_of_the_mono1_chest_display_the_same(dicom_dir: Path, twin: str) -> None:
    reference = load_image(dicom_dir / PHILIPS.format("explicitLE")).display.astype(np.int16)
    display = load_image(dicom_dir / PHILIPS.format(twin)).display.astype(np.int16)
    assert np.abs(display - reference).mean() < 1.0
    assert np.abs(display - reference).max() <= 8


@pytest.mark.parametrize("syntax", ["J2KR", "JLSL", "JPLL", "RLE"])
def test_lossless_codecs_give_identical_pixels(dicom_dir: Path, syntax: str) -> None:
    reference = load_image(dicom_dir / HIP.format("UNC_explicitLE"))
    img = load_image(dicom_dir / HIP.format(syntax))
    assert np.array_equal(img.pixels, reference.pixels)


@pytest.mark.parametrize("syntax", ["J2KI", "JLSN", "JPEGExt12bit_fixed"])
def test_lossy_codecs_stay_close(dicom_dir: Path, syntax: str) -> None:
    reference = load_image(dicom_dir / HIP.format("UNC_explicitLE")).display.astype(np.int16)
    display = load_image(dicom_dir / HIP.format(syntax)).display.astype(np.int16)
    assert np.abs(display - reference).mean() < 2.0


# --- bit depth, memory ----------------------------------------------------------------------------

def test_twelve_bit_values_stay_below_4096(dicom_dir: Path) -> None:
    img = load_image(dicom_dir / "xray_chest/DX_chest_PA_MONO1_Canon_J2K_lossless.dcm")
    assert img.facts.bits_stored == 12
    assert 0 <= img.pixels.min() and img.pixels.max() < 4096


def test_bits_above_bits_stored_are_masked(dicom_dir: Path, tmp_path: Path) -> None:
    """Garbage in the unused high bits (as overlay-in-pixel files have) must not reach the pixels."""
    ds = pydicom.dcmread(dicom_dir / AGFA_THUMB)
    assert (ds.BitsAllocated, ds.BitsStored) == (16, 12)
    clean = load_image(dicom_dir / AGFA_THUMB).pixels
    stored = np.frombuffer(ds.PixelData, dtype="<u2")
    ds.PixelData = (stored | 0xF000).astype("<u2").tobytes()
    ds.save_as(tmp_path / "dirty.dcm")
    assert np.array_equal(load_image(tmp_path / "dirty.dcm").pixels, clean)


def test_big_radiograph_is_decoded_without_float64_copies(dicom_dir: Path) -> None:
    """Canon DX has RescaleSlope/Intercept; pydicom's own rescale would add a float64 copy (8 B/px)."""
    path = dicom_dir / "xray_chest/DX_chest_PA_MONO1_Canon_J2K_lossless.dcm"
    tracemalloc.start()
    try:
        img = load_image(path)
        _, peak_load = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        held, _ = tracemalloc.get_traced_memory()
        render(img)
        peak_render = tracemalloc.get_traced_memory()[1] - held
    finally:
        tracemalloc.stop()
    float32_bytes = img.pixels.size * 4
    assert img.pixels.dtype == np.float32
    assert peak_load < 2.0 * float32_bytes  # uint16 decode + float32 = 1.5x
    assert peak_render < 1.5 * float32_bytes  # one float32 temporary + the uint8 result


# --- modality LUT, VOI LUT, windows ---------------------------------------------------------------

def test_rescale_gives_float32_hounsfield_units(dicom_dir: Path) -> None:
    path = dicom_dir / "transfer_syntax_misc/CT_small.dcm"
    img = load_image(path)
    stored = pixel_array(path).astype(np.float64)
    assert img.units == "HU" and img.pixels.dtype == np.float32
    np.testing.assert_allclose(img.pixels, stored * 1.0 - 1024.0)
    presets = window_presets(img)
    assert presets["lung"] == (-600.0, 1500.0) and presets["soft tissue"] == (40.0, 400.0)


def test_fractional_rescale_is_applied(dicom_dir: Path) -> None:
    path = dicom_dir / AGFA_THUMB
    img = load_image(path)
    np.testing.assert_allclose(img.pixels, pixel_array(path) * 0.684 + 200.0, rtol=1e-6)
    assert img.units is None  # RescaleType OD is not Hounsfield


def _lut_item(first: int, entries: int, bits: int, values: np.ndarray) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item.LUTData = [int(v) for v in values]
    return item


def test_modality_lut_sequence_matches_pydicom(dicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / MR_SMALL)
    stored = pixel_array(ds)
    first, entries = int(stored.min()), int(stored.max() - stored.min() + 1)
    ds.ModalityLUTSequence = Sequence([_lut_item(first, entries, 16, np.sqrt(np.arange(entries)) * 300)])
    ds["ModalityLUTSequence"][0]["LUTData"].VR = "US"
    ds.save_as(tmp_path / "mlut.dcm")
    expected = apply_modality_lut(stored, ds).astype(np.float32)
    assert np.array_equal(load_image(tmp_path / "mlut.dcm").pixels, expected)


def test_voi_lut_is_preferred_to_the_window(dicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / MR_SMALL)
    stored = pixel_array(ds)
    first, entries = int(stored.min()), int(stored.max() - stored.min() + 1)
    curve = (np.linspace(0, 1, entries) ** 0.5 * 4095).round()
    ds.VOILUTSequence = Sequence([_lut_item(first, entries, 12, curve)])
    ds["VOILUTSequence"][0]["LUTData"].VR = "US"
    ds.save_as(tmp_path / "voi.dcm")
    img = load_image(tmp_path / "voi.dcm")
    assert img.voi_lut is not None and img.default_window == (600.0, 1600.0)
    expected = np.rint(apply_voi(stored, ds).astype(np.float64) / 4095 * 255)
    assert np.abs(render(img).astype(int) - expected).max() <= 1
    # an explicit window from the viewer still wins over the LUT
    assert not np.array_equal(render(img, window=(600.0, 1600.0)), render(img))


def test_first_of_several_windows_is_the_default(dicom_dir: Path) -> None:
    img = load_image(dicom_dir / "transfer_syntax_misc/examples_overlay.dcm")
    assert img.default_window == (450.0, 790.0)
    assert [(c, w) for _, c, w in img.file_windows] == [(450.0, 790.0), (200.0, 443.0)]
    assert len(window_presets(img)) >= 2 + 4


def test_no_window_falls_back_to_robust_percentiles(dicom_dir: Path) -> None:
    img = load_image(dicom_dir / "xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm")
    assert img.default_window is None
    display = img.display
    assert 0.001 < (display == 0).mean() < 0.02  # ~0.5 % clipped at each end
    assert 0.001 < (display == 255).mean() < 0.02


# --- frames, colour -------------------------------------------------------------------------------

def test_multi_frame_picks_the_middle_frame_by_default(dicom_dir: Path) -> None:
    path = dicom_dir / "transfer_syntax_misc/emri_small_jpeg_2k_lossless.dcm"
    img = load_image(path)
    assert (img.frame_count, img.frame_index) == (10, 5)
    all_frames = pydicom.dcmread(path).pixel_array
    assert np.array_equal(img.pixels, all_frames[5])
    assert np.array_equal(load_image(path, frame=9).pixels, all_frames[9])
    with pytest.raises(MedHashError, match="frame 10 does not exist"):
        load_image(path, frame=10)


def test_ybr_full_422_comes_out_as_rgb(dicom_dir: Path) -> None:
    ybr = load_image(dicom_dir / "transfer_syntax_misc/SC_ybr_full_422_uncompressed.dcm").pixels
    rgb = load_image(dicom_dir / "transfer_syntax_misc/SC_rgb_rle.dcm").pixels
    assert np.abs(ybr.astype(int) - rgb).max() <= 8
    assert tuple(rgb[5, 50]) == (255, 0, 0) and tuple(rgb[45, 50]) == (0, 0, 255)


@pytest.mark.parametrize("name", ["US1_J2KI.dcm", "color3d_jpeg_baseline.dcm"])
def test_ultrasound_in_ybr_looks_grey_in_rgb(dicom_dir: Path, name: str) -> None:
    """Ultrasound is mostly grey: in RGB most pixels have R ~ G ~ B (in YCbCr they would not)."""
    img = load_image(dicom_dir / "transfer_syntax_misc" / name)
    spread = img.pixels.max(axis=-1).astype(int) - img.pixels.min(axis=-1)
    assert img.is_color and (spread <= 10).mean() > 0.8


def test_palette_colour_goes_through_its_lut(dicom_dir: Path) -> None:
    path = dicom_dir / "transfer_syntax_misc/examples_palette.dcm"
    ds = pydicom.dcmread(path)
    index = pixel_array(ds)
    img = load_image(path)
    for channel, name in enumerate(("Red", "Green", "Blue")):
        entries, first, bits = getattr(ds, f"{name}PaletteColorLookupTableDescriptor")
        lut = np.frombuffer(getattr(ds, f"{name}PaletteColorLookupTableData"), dtype="<u2").astype(float)
        expected = np.rint(lut[np.clip(index.astype(int) - first, 0, entries - 1)] * 255 / (2**bits - 1))
        assert np.abs(img.pixels[..., channel].astype(int) - expected).max() <= 1


# --- header facts and PHI -------------------------------------------------------------------------

def test_header_facts_of_the_philips_chest(dicom_dir: Path) -> None:
    facts = load_image(dicom_dir / PHILIPS.format("J2K_lossy"), salt=b"site-salt").facts
    assert facts.modality == "CR" and facts.view == "PA" and facts.body_part == "CHEST"
    assert facts.study_date == "2004-08-26" and facts.sex == "F"
    assert facts.transfer_syntax == "JPEG 2000 Image Compression"
    assert re.fullmatch(r"[0-9a-f]{16}", facts.patient_key or "")
    twin = load_image(dicom_dir / PHILIPS.format("explicitLE"), salt=b"site-salt").facts
    other_salt = load_image(dicom_dir / PHILIPS.format("explicitLE"), salt=b"other").facts
    assert twin.patient_key == facts.patient_key != other_salt.patient_key


def test_facts_never_hold_patient_name_or_id(dicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / MR_SMALL)
    ds.PatientName, ds.PatientID, ds.PatientAge = "Doe^Jane", "PHI-123456", "045Y"
    ds.save_as(tmp_path / "phi.dcm")
    facts = load_image(tmp_path / "phi.dcm", salt=b"s").facts
    text = repr(facts.to_dict())
    assert "Doe" not in text and "PHI-123456" not in text
    assert facts.patient_key == hashlib.sha256(b"s" + b"PHI-123456").hexdigest()[:16]
    assert facts.age == 45.0


# --- files without file meta or suffix ------------------------------------------------------------

def test_bare_dataset_without_file_meta_is_decoded(dicom_dir: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / MR_SMALL)
    ds.preamble, ds.file_meta = None, FileMetaDataset()
    bare = tmp_path / "bare.dcm"
    pydicom.dcmwrite(bare, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    ds_bytes = bare.read_bytes()
    assert ds_bytes[128:132] != b"DICM" and ds_bytes[:2] == b"\x08\x00"  # no preamble, no meta
    assert looks_like_dicom(bare)
    img = load_image(bare)
    assert np.array_equal(img.pixels, load_image(dicom_dir / MR_SMALL).pixels)
    assert img.facts.transfer_syntax == "Implicit VR Little Endian"


def test_dicom_without_suffix_is_recognised(dicom_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "IM000001"
    target.write_bytes((dicom_dir / MR_SMALL).read_bytes())
    assert looks_like_dicom(target)
    assert load_image(target).pixels.shape == (64, 64)
