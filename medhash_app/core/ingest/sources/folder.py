"""A plain folder tree (or a single file): DICOM files with any or no suffix, found by content;
PNG/JPEG/TIFF with an optional sidecar report `<stem>.txt` or `<stem>.json`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from medhash_app.core.errors import DatasetLayoutError, MedHashError
from medhash_app.core.imaging import looks_like_dicom
from medhash_app.core.ingest.items import IngestItem
from medhash_app.core.ingest.sources.common import (
    DICOM_SUFFIXES,
    RASTER_SUFFIXES,
    parse_labels,
    read_text_file,
    record_metadata,
    text_or_none,
)
from medhash_app.core.library import DB_NAME

# Files that are never images: not even sniffed (sniffing runs a DICOM parser).
_NEVER_IMAGES = frozenset({".txt", ".json", ".jsonl", ".csv", ".tsv", ".xml", ".xlsx", ".md", ".pdf",
                           ".html", ".htm", ".zip", ".gz", ".tar", ".py", ".sqlite", ".log", ".ini"})
_SIDECAR_KEYS = frozenset({"report", "labels", "findings", "impression", "patient_id", "study_id",
                           "view", "split", "domain"})


def detect(path: Path) -> bool:
    """The fallback source: any folder, or any single file."""
    return path.exists()


def items(path: Path) -> Iterator[IngestItem]:
    if not path.is_dir():  # a single file (or a FIFO, a device: the pipeline says why it is skipped)
        yield item_with_sidecar(path)
        return
    found = False
    unreadable: list[OSError] = []
    for file in candidate_files(path, unreadable.append):
        found = True
        yield item_with_sidecar(file)
    for exc in unreadable:  # an unreadable subfolder is that item's error; the rest goes on
        yield IngestItem(Path(exc.filename or path), problem=f"this folder cannot be read ({exc.strerror or exc})")
    if not found and not unreadable:
        raise DatasetLayoutError(path, "no images found in this folder (looked for DICOM, PNG, JPEG "
                                       "and TIFF files, and for a DICOMDIR or a dataset layout)")


def candidate_files(root: Path, on_error: Callable[[OSError], None] | None = None) -> Iterator[Path]:
    """Image files under `root` in a stable order; MedHash library folders are skipped; each
    folder that cannot be listed goes to `on_error`."""
    for folder, dirs, files in os.walk(root, onerror=on_error):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _is_library(Path(folder, d)))
        for name in sorted(files):
            path = Path(folder, name)
            if not name.startswith(".") and is_candidate(path):
                yield path


def _is_library(folder: Path) -> bool:
    try:
        return (folder / DB_NAME).exists()
    except OSError:  # cannot look inside: os.walk reports the folder when it tries to list it
        return False


def is_candidate(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in RASTER_SUFFIXES or suffix in DICOM_SUFFIXES:
        return True
    if suffix in _NEVER_IMAGES or path.name.upper() == "DICOMDIR":
        return False
    return looks_like_dicom(path)  # archives often store DICOM without a suffix (or as UID.1.2.3)


def item_with_sidecar(image: Path) -> IngestItem:
    """An image plus its sidecar report: `<stem>.txt` / `<stem>.json` (or `<name>.txt` / `.json`).
    A sidecar that cannot be read makes the item fail (rather than silently losing its report)."""
    for base in (image.with_suffix(""), image):
        text_file, json_file = Path(f"{base}.txt"), Path(f"{base}.json")
        try:
            if json_file.is_file():
                return _from_json(image, json_file)
            if text_file.is_file():
                return IngestItem(image, report=read_text_file(text_file))
        except MedHashError as exc:  # not a regular file, or over the size limit
            return IngestItem(image, problem=f"its sidecar {Path(exc.item or base).name}: {exc.reason}")
        except OSError as exc:
            name = Path(exc.filename or base).name
            return IngestItem(image, problem=f"its sidecar {name} cannot be read ({exc.strerror or exc})")
    return IngestItem(image)


def _from_json(image: Path, sidecar: Path) -> IngestItem:
    try:
        record = json.loads(read_text_file(sidecar))
    except json.JSONDecodeError as exc:
        return IngestItem(image, problem=f"its sidecar {sidecar.name} is not valid JSON ({exc.msg})")
    except RecursionError:
        return IngestItem(image, problem=f"its sidecar {sidecar.name} is nested too deeply")
    if not isinstance(record, dict):
        return IngestItem(image, problem=f"its sidecar {sidecar.name} must hold a JSON object")
    report = text_or_none(record.get("report")) or _sections(record)
    return IngestItem(image, report=report, labels=parse_labels(record.get("labels")),
                      metadata=record_metadata(record, _SIDECAR_KEYS))


def _sections(record: dict[str, object]) -> str | None:
    parts = [f"{key.upper()}: {text}" for key in ("findings", "impression")
             if (text := text_or_none(record.get(key)))]
    return "\n".join(parts) or None
