"""The generic manifest: a CSV/TSV or JSON Lines file, one row per image.

Columns: `image` (required; relative to the manifest, or absolute), `report`, `labels` (a list or
";"-separated), `patient_id`, `study_id`, `view`, `split`, `domain`; `eye`/`laterality`, `age`,
`sex` are mapped too; every other column is kept in the case's `extra`, except identifying ones
(core/phi.py). An `image` outside the manifest's folder tree (after resolving links and "..") is
that row's error unless the import allows its folder (ingest.collect_items).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medhash_app.core.errors import DatasetLayoutError, MedHashError
from medhash_app.core.ingest.items import IngestItem
from medhash_app.core.ingest.sources.common import (
    parse_labels,
    read_header,
    read_table,
    record_metadata,
    table_suffix,
    text_or_none,
)

# A folder holding one of these with an `image` column is ingested through it; without that column
# the file is some other table (e.g. a scanner export's file list) and the folder is imported as a folder.
MANIFEST_NAMES = ("manifest.csv", "manifest.tsv", "manifest.jsonl", "pairs.jsonl", "pairs.csv")


def manifest_file(path: Path) -> Path | None:
    """The manifest to read for `path`: the file itself when given as one (its columns are checked
    when read), or a folder's manifest that has an `image` column."""
    if path.is_file() and table_suffix(path) in (".csv", ".csv.gz", ".tsv", ".jsonl", ".ndjson"):
        return path
    if path.is_dir():
        return next((path / n for n in MANIFEST_NAMES if (path / n).is_file() and _names_images(path / n)), None)
    return None


def _names_images(table: Path) -> bool:
    """The table has an `image` column; an unreadable one counts as a manifest so its problem is shown."""
    try:
        return "image" in read_header(table)
    except MedHashError:
        return True


def detect(path: Path) -> bool:
    return manifest_file(path) is not None


def items(path: Path) -> Iterator[IngestItem]:
    manifest = manifest_file(path)
    assert manifest is not None
    if "image" not in read_header(manifest):
        raise DatasetLayoutError(manifest, "the manifest has no 'image' column (the image file of each "
                                           "row, relative to the manifest or absolute)")
    for number, record in enumerate(read_table(manifest), start=1):
        yield row_item(manifest, number, record)


def row_item(manifest: Path, number: int, record: dict[str, object]) -> IngestItem:
    image = text_or_none(record.get("image"))
    if image is None:
        return IngestItem(manifest, problem=f"row {number} has no image file name")
    return IngestItem(manifest.parent / image, report=text_or_none(record.get("report")),
                      labels=parse_labels(record.get("labels")), metadata={**record_metadata(record), "row": number})
