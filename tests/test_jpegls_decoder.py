"""JPEG-LS DICOMs are decoded by CharLS (pyjpegls) before GPL libjpeg: about 4x faster for a query
(docs/codecs.md), and the pixels must be the same bit for bit on every real JPEG-LS file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless

from medhash_app.core.imaging import load_image

JPEGLS_FILES = ["xray_chest/CR_chest_MONO1_Philips_RG1_JPEGLS_nearlossless.dcm",
                "xray_other/CR_hip_MONO2_Fuji_RG2_JLSL.dcm", "xray_other/CR_hip_MONO2_Fuji_RG2_JLSN.dcm",
                "transfer_syntax_misc/JPEGLSNearLossless_16.dcm", "transfer_syntax_misc/MR_small_jpeg_ls_lossless.dcm"]


@pytest.mark.shared_data
@pytest.mark.parametrize("rel", JPEGLS_FILES[:3])
def test_the_product_decodes_jpegls_with_charls_alone(dicom_dir: Path, rel: str, monkeypatch) -> None:
    """pydicom's own order puts libjpeg first (its plugin list is only sorted for display): count
    which real plugin functions load_image calls."""
    path = dicom_dir / rel
    if not path.is_file():
        pytest.skip(f"{rel} is not in the test data")
    calls: list[str] = []
    for uid in (JPEGLSLossless, JPEGLSNearLossless):
        plugins = get_decoder(uid)._available
        for name, fn in list(plugins.items()):
            monkeypatch.setitem(plugins, name, lambda *a, _n=name, _f=fn, **k: calls.append(_n) or _f(*a, **k))
    load_image(path)
    assert calls == ["pyjpegls"]


@pytest.mark.shared_data
@pytest.mark.parametrize("rel", JPEGLS_FILES)
def test_charls_and_libjpeg_decode_the_same_pixels(dicom_dir: Path, rel: str) -> None:
    path = dicom_dir / rel
    if not path.is_file():
        pytest.skip(f"{rel} is not in the test data")
    charls = pixel_array(path, decoding_plugin="pyjpegls")
    if "pylibjpeg" not in get_decoder(JPEGLSLossless).available_plugins:
        pytest.skip("pylibjpeg-libjpeg is not installed (a GPL-free build); nothing to compare with")
    libjpeg = pixel_array(path, decoding_plugin="pylibjpeg")
    assert charls.dtype == libjpeg.dtype and charls.shape == libjpeg.shape
    assert np.array_equal(charls, libjpeg)
    loaded = load_image(path)  # the product's path decodes the same stored values
    assert loaded.pixels.shape[:2] == charls.shape[:2]
