"""`Sample` and the generic JSONL/CSV manifest reader used by the trainer CLI and tests.

One record per image-report pair. Columns/keys: `image` (path, relative to the manifest's folder
unless absolute; required), `report` (required), `labels` (optional: a list, or a string split on
'|' or ';'), `patient_id` (optional), `id` (optional; defaults to the image path as written),
anything else (`split`, `eye`, `age`, ...) goes into `metadata`. The app's ingest has its own
richer reader; this one only needs to be exact and to fail clearly.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import DataError

LabelFn = Callable[["Sample"], list[str]]
_LABEL_SPLIT = re.compile(r"[|;]")


@dataclass
class Sample:
    """One image-report pair. `labels` are class names (positives only)."""

    id: str
    image_path: str
    report: str
    labels: list[str] = field(default_factory=list)
    patient_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _parse_labels(value: Any) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return [v.strip() for v in _LABEL_SPLIT.split(value) if v.strip()]
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    raise ValueError(f"labels must be a list or a '|'-separated string, not {type(value).__name__}")


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for a .jsonl or .csv manifest."""
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8-sig", newline="") as fh:
        if suffix == ".jsonl":
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{n}", f"not valid JSON ({exc.msg})") from exc
        elif suffix == ".csv":
            for n, row in enumerate(csv.DictReader(fh), start=2):
                yield n, {k: v for k, v in row.items() if k is not None}
        else:
            raise DataError(path, "manifest must be a .jsonl or .csv file")


def _sample(record: dict[str, Any], root: Path, where: str) -> tuple[Sample, bool]:
    """Record -> (Sample, whether the record carried labels)."""
    if not isinstance(record, dict):
        raise DataError(where, "each manifest line must be a JSON object")
    rec = dict(record)
    image, report = rec.pop("image", None), rec.pop("report", None)
    if not image:
        raise DataError(where, "missing 'image'")
    if report is None:
        raise DataError(where, "missing 'report'")
    try:
        labels = _parse_labels(rec.pop("labels", None))
    except ValueError as exc:
        raise DataError(where, str(exc)) from exc
    patient = rec.pop("patient_id", None)
    image_path = Path(str(image))
    sample = Sample(
        id=str(rec.pop("id", None) or image),
        image_path=str(image_path if image_path.is_absolute() else root / image_path),
        report=str(report),
        labels=labels or [],
        patient_id=None if patient in (None, "") else str(patient),
        metadata=rec,
    )
    return sample, labels is not None


def load_manifest(path: str | Path, *, label_fn: LabelFn | None = None, check_images: bool = False) -> list[Sample]:
    """Read a JSONL/CSV manifest into Samples (in file order).

    `label_fn(sample)` derives labels for records that have none (e.g. ODIR keywords ->
    classes); `check_images` verifies that every image file exists. Raises DataError naming the
    manifest line for a bad record, a duplicate id or a missing image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "manifest not found")
    samples: list[Sample] = []
    seen: set[str] = set()
    for n, record in _records(path):
        where = f"{path}:{n}"
        sample, labels_given = _sample(record, path.parent, where)
        if sample.id in seen:
            raise DataError(where, f"duplicate id {sample.id!r}")
        if check_images and not Path(sample.image_path).is_file():
            raise DataError(where, f"image file not found: {sample.image_path}")
        if not labels_given and label_fn is not None:
            sample.labels = list(label_fn(sample))
        seen.add(sample.id)
        samples.append(sample)
    if not samples:
        raise DataError(path, "manifest has no records")
    return samples
