"""Turn dropped or chosen paths into the files worth trying as a query or an import."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from PySide6.QtCore import QMimeData

IMAGE_SUFFIXES = {".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ""}
MAX_QUERY_FILES = 500
FILE_DIALOG_FILTER = ("Images (*.dcm *.dicom *.png *.jpg *.jpeg *.tif *.tiff);;"
                      "DICOM (*.dcm *.dicom);;All files (*)")


def local_paths(mime: QMimeData) -> list[Path]:
    """Local files and folders named by a drag and drop (remote URLs are ignored)."""
    if not mime.hasUrls():
        return []
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile() and url.toLocalFile()]


def looks_like_image(path: Path) -> bool:
    """Cheap filter by name only; the imaging module decides for real (DICOM often has no suffix)."""
    name = path.name
    return not name.startswith(".") and name.upper() != "DICOMDIR" and path.suffix.lower() in IMAGE_SUFFIXES


def query_candidates(paths: Iterable[Path], limit: int = MAX_QUERY_FILES) -> list[Path]:
    """Files to offer as the query: the files themselves, and image-like files inside folders."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    candidate = Path(root) / name
                    if looks_like_image(candidate):
                        out.append(candidate)
                        if len(out) >= limit:
                            return out
        elif path.is_file():
            out.append(path)
        if len(out) >= limit:
            break
    return out[:limit]
