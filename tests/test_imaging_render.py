"""render / window maths / model_image / thumbnail_jpeg / window_presets."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_voi_lut, pixel_array

from medhash_app.core.imaging import (
    HeaderFacts,
    LoadedImage,
    load_image,
    model_image,
    render,
    thumbnail_jpeg,
    window_presets,
)
from medhash_app.core.imaging.facts import parse_age, parse_date, patient_key
from medhash_app.core.imaging.windowing import window_from_range

CT_SMALL = "transfer_syntax_misc/CT_small.dcm"


def _grey(pixels: np.ndarray, **kwargs) -> LoadedImage:
    fields = {"path": Path("synthetic"), "pixels": pixels.astype(np.float32), "is_color": False,
              "invert": False, "default_window": None, "facts": HeaderFacts()}
    return LoadedImage(**(fields | kwargs))


# --- window maths ---------------------------------------------------------------------------------

@pytest.mark.shared_data
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("window", [(40.0, 400.0), (-600.0, 1500.0), (1000.0, 1.0)])
def test_window_matches_pydicom_reference(dicom_dir: Path, function: str, window: tuple[float, float]) -> None:
    """Our float32 in-place windowing agrees with pydicom's float64 apply_voi_lut within 1 grey level."""
    ds = pydicom.dcmread(dicom_dir / CT_SMALL)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = window[0], window[1], function
    hu = pixel_array(ds).astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0  # so pydicom's output range is a plain 16-bit signed
    with np.errstate(over="ignore"):  # pydicom's sigmoid overflows exp() for a width of 1
        reference = apply_voi_lut(hu, ds)  # range -32768 .. 32767 for PixelRepresentation 1
    expected = np.rint((reference + 32768) / 65535 * 255)
    img = _grey(hu, voi_function=function)
    assert np.abs(render(img, window=window).astype(int) - expected).max() <= 1


def test_window_from_range_maps_ends_exactly() -> None:
    ramp = np.arange(100, 1101, dtype=np.float32)
    display = render(_grey(ramp[None, :]), window=window_from_range(100, 1100))[0]
    assert display[0] == 0 and display[-1] == 255 and np.all(np.diff(display.astype(int)) >= 0)


def test_render_leaves_pixels_untouched_and_inverts_once() -> None:
    pixels = np.linspace(0, 1000, 64, dtype=np.float32).reshape(8, 8)
    img = _grey(pixels, invert=True, default_window=(500.5, 1001.0))
    before = img.pixels.copy()
    inverted = render(img)
    assert np.array_equal(img.pixels, before)
    assert inverted[0, 0] == 255 and inverted[-1, -1] == 0
    assert np.array_equal(render(img, invert=False), 255 - inverted)
    assert np.array_equal(render(img), inverted)  # rendering twice does not flip back


def test_colour_ignores_window_and_can_invert() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    img = LoadedImage(path=Path("c"), pixels=rgb, is_color=True, invert=False, default_window=None,
                      facts=HeaderFacts())
    assert np.array_equal(render(img, window=(10.0, 20.0)), rgb)
    assert np.array_equal(render(img, invert=True), 255 - rgb)


# --- model image and thumbnail --------------------------------------------------------------------

def test_model_image_letterboxes_with_black() -> None:
    img = _grey(np.full((100, 50), 200.0), default_window=(128.0, 256.0))
    out = model_image(img, size=64)
    assert out.mode == "RGB" and out.size == (64, 64)
    arr = np.asarray(out)
    assert arr[:, :16].max() == 0 and arr[:, -16:].max() == 0  # padding left and right
    assert np.abs(arr[:, 18:46].astype(int) - 200).max() <= 1  # content, aspect 1:2 kept


@pytest.mark.shared_data
def test_model_image_of_a_mono1_chest_keeps_polarity(dicom_dir: Path) -> None:
    img = load_image(dicom_dir / "xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossy.dcm")
    arr = np.asarray(model_image(img, 256))
    assert arr.shape == (256, 256, 3)
    assert np.array_equal(arr[..., 0], arr[..., 1])
    assert arr[:, :4].max() == 0  # 1955 x 1841 is taller than wide: black columns at the sides
    assert arr[60:180, 122:134].mean() > arr[60:150, 50:90].mean() + 40  # bright spine, dark lung


def test_thumbnail_is_a_jpeg_that_fits() -> None:
    img = _grey(np.tile(np.linspace(0, 255, 400, dtype=np.float32), (200, 1)),
                default_window=(128.0, 256.0))
    data = thumbnail_jpeg(img, size=160)
    assert data[:2] == b"\xff\xd8"
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG" and thumb.size == (160, 80)


# --- presets ----------------------------------------------------------------------------------------

@pytest.mark.shared_data
@pytest.mark.parametrize("name,invert", [("xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossy.dcm", True),
                                         ("xray_other/CR_hip_MONO2_Fuji_RG2_J2KI.dcm", False)])
def test_radiograph_presets_follow_the_display_polarity(dicom_dir: Path, name: str, invert: bool) -> None:
    img = load_image(dicom_dir / name)
    presets = window_presets(img)
    assert presets["file"] == img.default_window
    assert {"1-99 %", "lung", "bone", "full range"} <= set(presets)
    assert "soft tissue" not in presets  # no HU on a plain radiograph
    # "lung" covers the values shown dark: low values, or high values for MONOCHROME1
    assert (presets["lung"][0] > presets["bone"][0]) == invert
    lung_display = render(img, window=presets["lung"])
    assert lung_display.std() > 30


# --- facts helpers --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,years", [("045Y", 45.0), ("006M", 0.5), ("014D", 0.04), ("002W", 0.04),
                                        ("45", 45.0), ("", None), ("abc", None), (None, None)])
def test_parse_age(text: str | None, years: float | None) -> None:
    assert parse_age(text) == years


@pytest.mark.parametrize("text,iso", [("20040826", "2004-08-26"), ("2004.08.26", "2004-08-26"),
                                      ("20041341", None), ("", None)])
def test_parse_date(text: str, iso: str | None) -> None:
    assert parse_date(text) == iso


def test_patient_key_is_salted_and_empty_ids_have_none() -> None:
    assert patient_key("", b"s") is None and patient_key("   ", b"s") is None
    assert patient_key("123", b"a") != patient_key("123", b"b")
    assert len(patient_key("123", b"a") or "") == 16


def test_facts_to_dict_round_trips() -> None:
    facts = HeaderFacts(modality="CR", rows=10, cols=20, age=45.0)
    assert HeaderFacts(**facts.to_dict()) == facts
