"""ODIR-5K fundus photographs: one sheet row per patient with per-eye diagnostic keywords.

The sheet is the challenge's .xlsx ("ODIR-5K_Training_Annotations(Updated)_V2.xlsx" or
"data.xlsx") or Kaggle's `full_df.csv`; columns `ID`, `Patient Age`, `Patient Sex`,
`Left-Fundus`, `Right-Fundus`, `Left-Diagnostic Keywords`, `Right-Diagnostic Keywords`, and the
patient-level class columns N D G C A H M O. Each eye becomes one case whose report is that eye's
keywords; images are found by file name anywhere under the sheet's folder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medhash_app.core.errors import DatasetLayoutError
from medhash_app.core.ingest.items import IngestItem
from medhash_app.core.ingest.sources.common import (
    index_images,
    normalise_sex,
    parse_number,
    read_header,
    read_table,
    table_suffix,
    text_or_none,
)

KEYWORD_COLUMN = "{eye}-Diagnostic Keywords"
PATIENT_CLASSES = ("N", "D", "G", "C", "A", "H", "M", "O")
_EYES = {"Left": "L", "Right": "R"}


def _has_openpyxl() -> bool:
    return importlib.util.find_spec("openpyxl") is not None


def _is_sheet(path: Path) -> bool:
    suffix = table_suffix(path)
    if suffix == ".xlsx" and not _has_openpyxl():
        # Cannot look inside: go by the names the dataset is published under.
        return any(word in path.name.lower() for word in ("odir", "annotation", "data.xlsx"))
    if suffix not in (".csv", ".xlsx"):
        return False
    try:
        return KEYWORD_COLUMN.format(eye="Left") in read_header(path)
    except (OSError, UnicodeDecodeError, DatasetLayoutError):
        return False


def sheet_file(path: Path) -> Path | None:
    """The ODIR sheet: `path` itself, or a sheet in `path` or one folder below it (CSV first)."""
    if path.is_file():
        return path if _is_sheet(path) else None
    if not path.is_dir():
        return None
    candidates = [*sorted(path.glob("*.csv")), *sorted(path.glob("*/*.csv")),
                  *sorted(path.glob("*.xlsx")), *sorted(path.glob("*/*.xlsx"))]
    return next((c for c in candidates if _is_sheet(c)), None)


def detect(path: Path) -> bool:
    return sheet_file(path) is not None


def _image_index(root: Path) -> dict[str, Path]:
    """Prefer the original training images over Kaggle's preprocessed copies of the same name."""
    images = index_images(root)
    preferred = {name: p for name, p in images.items() if "preprocessed" not in str(p.parent).lower()}
    return images | preferred


def items(path: Path) -> Iterator[IngestItem]:
    sheet = sheet_file(path)
    assert sheet is not None
    root = path if path.is_dir() else sheet.parent
    images = _image_index(root)
    seen: set[str] = set()
    for row in read_table(sheet):
        for eye, laterality in _EYES.items():
            name = text_or_none(row.get(f"{eye}-Fundus"))
            if name is None or name in seen:
                continue  # Kaggle's full_df.csv repeats each patient once per eye
            seen.add(name)
            yield _eye_item(root, images, row, name, eye, laterality)


def _eye_item(root: Path, images: dict[str, Path], row: dict[str, Any], name: str, eye: str,
              laterality: str) -> IngestItem:
    codes = [c for c in PATIENT_CLASSES if str(row.get(c, "")).strip() in ("1", "1.0")]
    metadata = {"domain": "fundus", "laterality": laterality, "patient_id": text_or_none(row.get("ID")),
                "age": parse_number(row.get("Patient Age")), "sex": normalise_sex(row.get("Patient Sex")),
                "extra": {"patient_classes": codes} if codes else {}}
    report = text_or_none(row.get(KEYWORD_COLUMN.format(eye=eye)))
    if name not in images:
        return IngestItem(root / name, problem="listed in the ODIR sheet but the image file is not in the folder")
    return IngestItem(images[name], report=report, metadata=metadata)
