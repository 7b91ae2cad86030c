"""Imaging: one decode path for ingest, query and training (see docs/architecture.md).

DICOM (pydicom 3 + pylibjpeg plugins, docs/codecs.md) and PNG/JPEG/TIFF (Pillow) become a
`LoadedImage`; `render` makes the display, `model_image` the model input, `thumbnail_jpeg` the
result-grid thumbnail.
"""

from medhash_app.core.imaging.dicom import looks_like_dicom
from medhash_app.core.imaging.facts import HeaderFacts
from medhash_app.core.imaging.loaded import LoadedImage, VoiLut, Window
from medhash_app.core.imaging.loader import SUPPORTED_SUFFIXES, load_image
from medhash_app.core.imaging.render import model_image, render, thumbnail_jpeg
from medhash_app.core.imaging.windowing import window_presets

__all__ = [
    "SUPPORTED_SUFFIXES", "HeaderFacts", "LoadedImage", "VoiLut", "Window", "load_image",
    "looks_like_dicom", "model_image", "render", "thumbnail_jpeg", "window_presets",
]
