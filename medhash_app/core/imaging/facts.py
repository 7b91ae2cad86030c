"""Header facts: the few DICOM attributes search and filters need, with PHI reduced to a pseudonym.

Why a separate dataclass: the library stores these per case and the UI shows them; neither should
touch a pydicom Dataset (and so never sees PatientName or the raw PatientID).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset

from medhash_app.core.pseudonym import Pseudonymizer, legacy_patient_key

_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25}


@dataclass(frozen=True, kw_only=True)
class HeaderFacts:
    """What the file says about the image; `None` where the file does not say."""

    modality: str | None = None
    view: str | None = None
    laterality: str | None = None
    body_part: str | None = None
    study_date: str | None = None  # ISO date, YYYY-MM-DD
    age: float | None = None  # years
    sex: str | None = None  # "M", "F" or "O"
    patient_key: str | None = None  # keyed pseudonym of the PatientID (core/pseudonym.py), never the ID
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    photometric: str | None = None
    transfer_syntax: str | None = None
    rows: int | None = None
    cols: int | None = None
    bits_stored: int | None = None
    manufacturer: str | None = None
    frames: int = 1
    file_format: str = "DICOM"  # "DICOM", "PNG", "JPEG", "TIFF", ...

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready) for the library's `cases` row and the UI's info panel."""
        return dataclasses.asdict(self)


def parse_age(value: object) -> float | None:
    """DICOM AS ("045Y", "006M", "010D", "002W"; bare numbers taken as years) -> years."""
    match = _AGE_RE.match(str(value or ""))
    if not match:
        return None
    days = int(match.group(1)) * _DAYS_PER_UNIT[(match.group(2) or "Y").upper()]
    return round(days / 365.25, 2)


def parse_date(value: object) -> str | None:
    """DICOM DA ("20040119", old ACR-NEMA "2004.01.19") -> "2004-01-19"; invalid dates -> None."""
    text = str(value or "").strip().replace(".", "").replace("-", "")
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date().isoformat() if len(text) >= 8 else None
    except ValueError:
        return None


def patient_key(patient_id: object, salt: bytes | str = b"", key: bytes | None = None) -> str | None:
    """The keyed pseudonym of a PatientID (HMAC under the workstation key, core/pseudonym.py) when
    `key` is given; without it the bare salted hash, which is never stored (info and queries drop it)."""
    salt_bytes = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
    if key is not None:
        return Pseudonymizer(key, salt_bytes).patient(patient_id)
    return legacy_patient_key(patient_id, salt_bytes)


def text_value(ds: Dataset, keyword: str) -> str | None:
    """An attribute as stripped text (multi-values joined with a backslash), or None if empty."""
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def int_value(ds: Dataset, keyword: str) -> int | None:
    """An integer attribute, or None when missing or unparsable."""
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def facts_from_dataset(ds: Dataset, *, salt: bytes | str = b"", transfer_syntax: str | None = None,
                       frames: int = 1, key: bytes | None = None) -> HeaderFacts:
    """Collect the header facts of a DICOM data set (PHI never leaves this function)."""
    sex = (text_value(ds, "PatientSex") or "").upper()
    return HeaderFacts(
        modality=text_value(ds, "Modality"),
        view=text_value(ds, "ViewPosition"),
        laterality=text_value(ds, "ImageLaterality") or text_value(ds, "Laterality"),
        body_part=text_value(ds, "BodyPartExamined"),
        study_date=parse_date(ds.get("StudyDate")),
        age=parse_age(ds.get("PatientAge")),
        sex=sex if sex in {"M", "F", "O"} else None,
        patient_key=patient_key(ds.get("PatientID"), salt, key),
        sop_instance_uid=text_value(ds, "SOPInstanceUID"),
        study_instance_uid=text_value(ds, "StudyInstanceUID"),
        photometric=text_value(ds, "PhotometricInterpretation"),
        transfer_syntax=transfer_syntax,
        rows=int_value(ds, "Rows"),
        cols=int_value(ds, "Columns"),
        bits_stored=int_value(ds, "BitsStored"),
        manufacturer=text_value(ds, "Manufacturer"),
        frames=frames,
    )

