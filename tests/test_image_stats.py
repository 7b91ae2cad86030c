"""Model-free image statistics (core/image_stats.py): the out-of-domain image check and the domain
guess on import, on images generated here (fundus-like, radiograph-like, CT-like, screenshots, photos)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medhash_app.core.image_stats import build_stats_reference, features, guess_domain
from tests.test_ingest import fundus_png
from tests.test_out_of_domain import screenshot_png


def fundus(rng: np.random.Generator, size: int = 256) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    base = np.array([rng.uniform(150, 220), rng.uniform(50, 100), rng.uniform(10, 40)])
    img = np.where((r < rng.uniform(0.85, 0.98))[..., None], base * (1.1 - 0.4 * r[..., None]), 0)
    img += rng.normal(0, 6, img.shape) * (img > 0)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def radiograph(rng: np.random.Generator, size: int = 256) -> Image.Image:
    yy, xx = np.mgrid[:size, :size] / size
    lungs = np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.03) + np.exp(-((xx - 0.7) ** 2 + (yy - 0.5) ** 2) / 0.03)
    img = 200 - 120 * lungs + rng.normal(0, 8, (size, size))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGB")


def ct_slice(rng: np.random.Generator, size: int = 256) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (size * 0.3)) ** 2 + ((xx - size / 2) / (size * 0.4)) ** 2 < 1
    img = np.where(body, 110 + rng.normal(0, 15, (size, size)), 0)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).convert("RGB")


def test_stats_reference_flags_foreign_images_and_few_in_domain_ones(tmp_path) -> None:
    rng = np.random.default_rng(0)
    ref = build_stats_reference(np.stack([features(fundus(rng)) for _ in range(400)]))
    assert ref is not None
    fresh = [ref.score(features(fundus(rng))) > ref.threshold for _ in range(100)]
    assert sum(fresh) <= 5  # the threshold is the 99th percentile of held-out library images
    foreign = [radiograph(rng), ct_slice(rng), Image.open(screenshot_png(tmp_path / "s.png"))]
    assert all(ref.score(features(img)) > ref.threshold for img in foreign)


def test_domain_guess_names_fundus_chest_and_other_with_confidence(tmp_path) -> None:
    rng = np.random.default_rng(1)
    eye = guess_domain(fundus(rng))
    assert eye.domain == "fundus" and eye.confidence >= 0.8
    assert guess_domain(Image.open(fundus_png(tmp_path / "eye.png"))).domain == "fundus"
    chest = guess_domain(radiograph(rng))
    assert chest.domain == "chest" and 0.5 < chest.confidence <= 0.9
    assert guess_domain(ct_slice(rng)).domain == "other"  # grey, but a slice on black: not a chest film
    assert guess_domain(Image.open(screenshot_png(tmp_path / "s.png"))).domain == "other"
    assert all(0 <= g.confidence <= 1 and g.reason for g in (eye, chest))


@pytest.mark.shared_data
def test_a_chest_radiograph_with_a_colour_cast_and_coloured_arrows_is_still_chest(dicom_dir) -> None:
    """The reported failure: real chest X-rays stored as colour JPEGs (a warm cast, coloured arrows)
    were filed as fundus photographs. Made here from the real chest DICOMs."""
    import pydicom
    from PIL import ImageDraw

    files = sorted((dicom_dir / "xray_chest").glob("*chest*LE.dcm"))
    assert files
    for path in files:
        pixels = pydicom.dcmread(path).pixel_array.astype(float)
        grey = (pixels - pixels.min()) / max(float(np.ptp(pixels)), 1.0) * 255
        img = Image.fromarray(grey.astype(np.uint8)).convert("RGB").resize((512, 512))
        warm = Image.fromarray(np.clip(np.asarray(img) * np.array([1.12, 1.0, 0.82]), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(warm)
        for k in range(3):
            draw.line([(150 + 80 * k, 200 + 40 * k), (210 + 80 * k, 260 + 40 * k)], fill=(255, 0, 0), width=8)
        assert guess_domain(warm).domain == "chest", path.name
