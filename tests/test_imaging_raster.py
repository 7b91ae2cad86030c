"""PNG / JPEG / TIFF through Pillow (images generated in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhash_app.core.imaging import load_image, render, window_presets

RNG = np.random.default_rng(7)


def _gradient16(h: int = 48, w: int = 64) -> np.ndarray:
    return (np.arange(h * w, dtype=np.uint32).reshape(h, w) * 4095 // (h * w - 1)).astype(np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_eight_bit_grey_renders_unchanged(tmp_path: Path, suffix: str) -> None:
    grey = RNG.integers(0, 256, (40, 30), dtype=np.uint8)
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(grey).save(path)
    img = load_image(path)
    assert not img.is_color and img.pixels.dtype == np.float32
    assert np.array_equal(render(img), grey)
    assert img.facts.file_format == ("PNG" if suffix == ".png" else "TIFF") and img.facts.bits_stored == 8


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_grey_keeps_depth_and_uses_its_full_range(tmp_path: Path, suffix: str) -> None:
    deep = _gradient16()
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(deep).save(path)
    img = load_image(path)
    assert img.pixels.dtype == np.float32 and img.facts.bits_stored == 16
    assert np.array_equal(img.pixels, deep.astype(np.float32))
    display = render(img)
    assert display[deep == deep.min()].max() == 0 and display[deep == deep.max()].min() == 255
    assert len(np.unique(display)) > 200  # the 12 bits of contrast spread over the 8-bit range


def test_float_tiff(tmp_path: Path) -> None:
    values = np.linspace(-1.5, 2.5, 32 * 16, dtype=np.float32).reshape(32, 16)
    values[0, 0] = np.nan
    path = tmp_path / "float.tif"
    Image.fromarray(values, mode="F").save(path)
    img = load_image(path)
    assert np.isfinite(img.pixels).all() and img.pixels[5, 5] == pytest.approx(values[5, 5])


def test_rgb_jpeg(tmp_path: Path) -> None:
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[:, :24] = (200, 30, 30)
    rgb[:, 24:] = (20, 40, 220)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    img = load_image(path)
    assert img.is_color and img.pixels.dtype == np.uint8 and img.pixels.shape == (32, 48, 3)
    assert np.abs(img.pixels[16, 8].astype(int) - (200, 30, 30)).max() < 12
    assert np.abs(img.pixels[16, 40].astype(int) - (20, 40, 220)).max() < 12
    assert window_presets(img) == {}


def test_rgba_is_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((10, 30, 4), dtype=np.uint8)
    rgba[..., :3] = (240, 120, 60)
    rgba[:, :10, 3], rgba[:, 10:20, 3], rgba[:, 20:, 3] = 0, 128, 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    px = load_image(path).pixels
    assert tuple(px[5, 5]) == (0, 0, 0)
    assert np.abs(px[5, 15].astype(int) - (120, 60, 30)).max() <= 1
    assert tuple(px[5, 25]) == (240, 120, 60)


def test_grey_with_alpha_becomes_grey(tmp_path: Path) -> None:
    la = np.stack([np.full((8, 8), 200, np.uint8), np.full((8, 8), 255, np.uint8)], axis=-1)
    la[:, :4, 1] = 0
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    img = load_image(path)
    assert not img.is_color
    assert img.pixels[0, 0] == 0 and img.pixels[0, 7] == 200


def test_palette_png_is_converted_to_rgb(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:8] = (255, 0, 0)
    rgb[8:] = (0, 128, 255)
    path = tmp_path / "palette.png"
    Image.fromarray(rgb).quantize(colors=4).save(path)
    assert Image.open(path).mode == "P"
    img = load_image(path)
    assert img.is_color and np.array_equal(img.pixels, rgb)


def test_grey_saved_as_rgb_is_treated_as_grey(tmp_path: Path) -> None:
    grey = RNG.integers(0, 256, (20, 20), dtype=np.uint8)
    path = tmp_path / "grey_rgb.png"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path)
    img = load_image(path)
    assert not img.is_color and np.array_equal(render(img), grey)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (20, 10), (0, 200, 0)).convert("CMYK").save(path, quality=95)
    img = load_image(path)
    assert img.is_color and img.pixels.shape == (10, 20, 3)
    assert img.pixels[5, 10, 1] > 150 and img.pixels[5, 10, 0] < 60


@pytest.mark.parametrize("orientation,turn", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, turn: int) -> None:
    rgb = np.zeros((20, 40, 3), dtype=np.uint8)
    rgb[:, :20] = (255, 0, 0)  # red left half
    rgb[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, quality=95, exif=exif)
    img = load_image(path)
    expected = np.rot90(rgb, k=turn)  # counter-clockwise quarter turns
    assert img.pixels.shape == expected.shape
    assert np.abs(img.pixels.astype(int) - expected).mean() < 6
    assert (img.facts.rows, img.facts.cols) == expected.shape[:2]


def test_multi_page_tiff_frames(tmp_path: Path) -> None:
    pages = [Image.fromarray(np.full((8, 8), value, np.uint8)) for value in (10, 90, 170)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    img = load_image(path)
    assert (img.frame_count, img.frame_index) == (3, 0)  # first page by default
    assert load_image(path, frame=2).pixels[0, 0] == 170
