"""MIMIC-CXR-JPG: `files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg`, reports `sXXXXXXXX.txt` (from
MIMIC-CXR, beside the study folders or under `mimic-cxr-reports/`), and the published tables
`mimic-cxr-2.0.0-chexpert.csv` (1 positive, 0 negative, -1 uncertain, blank unmentioned),
`mimic-cxr-2.0.0-metadata.csv` (ViewPosition, StudyDate) and `mimic-cxr-2.0.0-split.csv`,
plain or gzipped as PhysioNet ships them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medhash_app.core.imaging.facts import parse_date
from medhash_app.core.ingest.items import IngestItem
from medhash_app.core.ingest.sources.common import read_table, read_text_file, text_or_none

PREFIX = "mimic-cxr-2.0.0-"
_PATIENT_RE, _STUDY_RE = re.compile(r"^p\d+$"), re.compile(r"^s(\d+)$")
_ID_COLUMNS = {"subject_id", "study_id"}
_REPORT_ROOTS = ("", "mimic-cxr-reports", "reports")


def detect(path: Path) -> bool:
    return path.is_dir() and (_table(path, "chexpert") is not None or
                              ((path / "files").is_dir() and any(_PATIENT_RE.match(d.name) and d.is_dir()
                                                                 for d in (path / "files").iterdir())))


def _table(root: Path, name: str) -> Path | None:
    return next((root / f"{PREFIX}{name}{s}" for s in (".csv", ".csv.gz")
                 if (root / f"{PREFIX}{name}{s}").is_file()), None)


def _by(root: Path, name: str, key: str, fields: tuple[str, ...]) -> dict[str, tuple[str | None, ...]]:
    """key -> the few fields needed (the full tables hold ~377,000 rows: keep memory small)."""
    table = _table(root, name)
    if table is None:
        return {}
    return {str(row[key]): tuple(text_or_none(row.get(f)) for f in fields) for row in read_table(table)}


def _chexpert(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """study id -> (positive classes, uncertain classes) from chexpert.csv."""
    table = _table(root, "chexpert")
    if table is None:
        return {}
    out: dict[str, tuple[list[str], list[str]]] = {}
    for row in read_table(table):
        values = {k: float(v) for k, v in row.items() if k not in _ID_COLUMNS and text_or_none(v)}
        out[str(row["study_id"])] = ([k for k, v in values.items() if v == 1.0],
                                     [k for k, v in values.items() if v == -1.0])
    return out


def items(path: Path) -> Iterator[IngestItem]:
    labels = _chexpert(path)
    metadata = _by(path, "metadata", "dicom_id", ("ViewPosition", "StudyDate"))
    splits = _by(path, "split", "dicom_id", ("split",))
    for image, subject, study in _study_images(path / "files"):
        yield _item(path, image, subject, study, labels.get(study), metadata.get(image.stem, (None, None)),
                    splits.get(image.stem, (None,))[0])


def _study_images(files: Path) -> Iterator[tuple[Path, str, str]]:
    """(jpg, subject id, study id) in a stable order."""
    for folder, dirs, names in os.walk(files):
        dirs.sort()
        study = _STUDY_RE.match(Path(folder).name)
        if study is None:
            continue
        subject = Path(folder).parent.name.lstrip("p")
        for name in sorted(names):
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                yield Path(folder, name), subject, study.group(1)


def _report(root: Path, image: Path) -> str | None:
    study_dir = image.parent
    relative = study_dir.relative_to(root).with_suffix(".txt")  # files/p10/p100.../s500....txt
    for base in _REPORT_ROOTS:
        candidate = root / base / relative
        if candidate.is_file():
            return read_text_file(candidate)
    return None


def _item(root: Path, image: Path, subject: str, study: str,
          labels: tuple[list[str], list[str]] | None, meta: tuple[str | None, ...], split: str | None) -> IngestItem:
    """Labels None (study not in chexpert.csv) lets the labeler read the report instead."""
    positives, uncertain = labels if labels is not None else (None, [])
    extra: dict[str, Any] = {"dicom_id": image.stem} | ({"uncertain_labels": uncertain} if uncertain else {})
    metadata = {"domain": "chest", "patient_id": subject, "study_id": study, "view": meta[0],
                "split": split, "study_date": parse_date(meta[1]), "extra": extra}
    return IngestItem(image, report=_report(root, image), labels=positives, metadata=metadata)
