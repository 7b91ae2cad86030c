"""A DICOMDIR (media directory of a CD/DVD/USB export): the image files it references."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from medhash_app.core.errors import DatasetLayoutError
from medhash_app.core.ingest.items import IngestItem


def _dicomdir_file(path: Path) -> Path | None:
    if path.is_file() and path.name.upper() == "DICOMDIR":
        return path
    if path.is_dir():
        return next((p for p in (path / "DICOMDIR", path / "dicomdir") if p.is_file()), None)
    return None


def detect(path: Path) -> bool:
    return _dicomdir_file(path) is not None


def items(path: Path) -> Iterator[IngestItem]:
    dicomdir = _dicomdir_file(path)
    assert dicomdir is not None
    try:
        fileset = FileSet(dcmread(dicomdir))
    except (InvalidDicomError, ValueError, AttributeError, KeyError, OSError) as exc:
        raise DatasetLayoutError(dicomdir, "not a readable DICOMDIR: its directory records are damaged or "
                                           "incomplete") from exc
    found = False
    for instance in fileset:
        if getattr(instance.node, "record_type", "IMAGE") != "IMAGE":
            continue  # structured reports, presentation states, ... are not images
        found = True
        yield IngestItem(Path(instance.path))
    if not found:
        raise DatasetLayoutError(dicomdir, "the DICOMDIR lists no images")
