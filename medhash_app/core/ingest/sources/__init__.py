"""Dataset sources: each module says whether it recognises a path (`detect`) and yields the
IngestItems it finds there (`items`). The first source that recognises a path wins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from medhash_app.core.errors import DatasetLayoutError
from medhash_app.core.ingest.items import IngestItem
from medhash_app.core.ingest.sources import dicomdir, folder, iu_xray, manifest, mimic_cxr, odir

# Most specific first; `folder` accepts anything that exists.
SOURCES: tuple[tuple[str, ModuleType], ...] = (
    ("dicomdir", dicomdir), ("iu_xray", iu_xray), ("mimic_cxr", mimic_cxr), ("odir", odir),
    ("manifest", manifest), ("folder", folder),
)


def detect_source(path: Path) -> str:
    """Name of the source that will read `path`."""
    if not path.exists():
        raise DatasetLayoutError(path, "does not exist")
    try:
        return next(name for name, module in SOURCES if module.detect(path))
    except OSError as exc:  # e.g. a folder without read/search permission
        raise DatasetLayoutError(path, f"cannot be read ({exc.strerror or exc})") from exc


def iter_items(path: Path) -> Iterator[IngestItem]:
    """Every item under `path`, read by the source that recognises it."""
    yield from dict(SOURCES)[detect_source(path)].items(path)
