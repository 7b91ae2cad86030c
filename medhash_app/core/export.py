"""`medhash export --deidentify`: a folder someone else may receive, following DICOM PS3.15 Annex E
(Basic Application Level Confidentiality Profile) where it applies to what a library holds.

What goes out (`cases.jsonl`, one line per case, `thumbs/<case>.jpg`, `export.json`, `README.txt`):
- `case`: a pseudonymous case key made for this export only (HMAC under the workstation key with a
  random per-export salt): not the content hash (anyone holding the original file could compute
  that), not the library's keys, and not joinable across two exports;
- `patient`: the same kind of per-export key for the patient (cases of one patient share it);
  `study_uid` / `instance_uid`: replacement UIDs (2.25.<decimal>, per export), as PS3.15's
  "replace UIDs" asks, consistent within the export;
- report, labels, label source, domain, modality, view, laterality, body part, sex, age (whole
  years, 90 and over as 90: Retain Patient Characteristics Option), the study date shifted by one
  random offset per export (Retain Longitudinal Temporal Information with Modified Dates Option:
  intervals between studies are kept, calendar dates are not), non-identifying `extra` columns
  (captions included), and the active model's binary codes (hex) when the library has one;
- thumbnails, re-encoded as plain JPEG without metadata.

What does not: source paths, the content hash, the library's salt, pseudonyms and key fingerprint,
the ingest log, model checkpoint paths. Not claimed: text burnt into the pixels (PS3.15's Clean
Pixel Data Option) is not detected or removed, and report free text is exported as stored (it is
not scrubbed of names); README.txt in the export says so.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from medhash_app.core.errors import MedHashError
from medhash_app.core.library import Library
from medhash_app.core.phi import identifying_column
from medhash_app.core.pseudonym import Pseudonymizer

EXPORT_FORMAT = 1
MAX_DATE_SHIFT_DAYS = 365
AGE_CAP = 90
PROFILE = ("DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, with the Retain Patient "
           "Characteristics Option (age capped at 90, sex) and the Retain Longitudinal Temporal Information "
           "with Modified Dates Option (every date shifted by one offset per export). NOT applied: the Clean "
           "Pixel Data Option (text burnt into images is not detected or removed) and any scrubbing of report "
           "free text (reports are exported as stored).")
README = f"""MedHash de-identified export

{PROFILE}

cases.jsonl: one case per line (case, patient, study_uid, instance_uid are keys made for this export
only). thumbs/<case>.jpg: the case's thumbnail. export.json: what was exported and how.
Check thumbnails for burnt-in text and reports for names before sharing.
"""


@dataclass
class ExportReport:
    folder: str
    cases: int = 0
    thumbnails: int = 0
    missing_thumbnails: int = 0
    model: dict[str, Any] | None = None
    profile: str = PROFILE
    notices: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _uid(digest_hex: str) -> str:
    """A DICOM UID under the 2.25 root (a UUID-derived integer), from 32 hex digits."""
    return f"2.25.{int(digest_hex[:32], 16)}"


def _shift(date: str | None, days: int) -> str | None:
    if not date:
        return None
    try:
        return (dt.date.fromisoformat(str(date)[:10]) + dt.timedelta(days=days)).isoformat()
    except ValueError:
        return None  # not a date this export can shift: left out rather than exported as is


def _age(value: object) -> int | None:
    try:
        years = int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return min(max(years, 0), AGE_CAP)


def clean_thumbnail(source: Path) -> bytes | None:
    """The stored thumbnail re-encoded without metadata (EXIF, comments), or None when unreadable."""
    try:
        with Image.open(source, formats=("JPEG", "PNG")) as image:
            clean = Image.new(image.mode if image.mode in ("L", "RGB") else "RGB", image.size)
            clean.paste(image.convert(clean.mode))
    except (OSError, ValueError):
        return None
    out = io.BytesIO()
    clean.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _codes(library: Library, model: dict[str, Any]) -> dict[str, dict[str, dict[int, str]]]:
    """{case id: {modality: {bits: hex}}} of one model."""
    out: dict[str, dict[str, dict[int, str]]] = {}
    for modality in ("image", "text"):
        for bits in model.get("bits") or []:
            ids, packed = library.get_codes(int(model["id"]), modality, int(bits))
            for case_id, row in zip(ids, packed, strict=True):
                out.setdefault(str(case_id), {}).setdefault(modality, {})[int(bits)] = row.tobytes().hex()
    return out


def deidentified_case(keyer: Pseudonymizer, case: dict[str, Any], salt: bytes, days: int) -> dict[str, Any]:
    """One case as it may leave the workstation (the fields listed above, without codes), keyed by `salt`;
    shared by this export and the archive publisher (core/archive/publish.py)."""
    extra = {k: v for k, v in (case.get("extra") or {}).items() if not identifying_column(k)}
    return {
        "case": keyer.export_id("case", case["id"], salt),
        "patient": keyer.export_id("patient", case["patient_key"], salt) if case.get("patient_key") else None,
        "study_uid": _uid(keyer.export_id("study", case["study_instance_uid"], salt, 32))
        if case.get("study_instance_uid") else None,
        "instance_uid": _uid(keyer.export_id("instance", case["id"], salt, 32)),
        "report": case.get("report"), "labels": case.get("labels") or [],
        "label_source": case.get("label_source"), "domain": case.get("domain"),
        "modality": case.get("modality"), "view": case.get("view"), "laterality": case.get("laterality"),
        "body_part": case.get("body_part"), "sex": case.get("sex"), "age": _age(case.get("age")),
        "study_date": _shift(case.get("study_date"), days), "split": case.get("split"), "extra": extra,
    }


def export_deidentified(library: Library, folder: str | Path) -> ExportReport:
    """Write a de-identified copy of the library's cases into `folder` (new or empty)."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise MedHashError(folder, "the export folder must be new or empty (an export never overwrites files)")
    try:
        (folder / "thumbs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedHashError(folder, f"cannot create the export folder ({exc.strerror or exc})") from exc
    keyer = library.pseudonyms
    salt = secrets.token_bytes(16)
    days = secrets.randbelow(2 * MAX_DATE_SHIFT_DAYS + 1) - MAX_DATE_SHIFT_DAYS
    model = library.active_model()
    codes = _codes(library, model) if model else {}
    report = ExportReport(str(folder), model={"name": model["name"], "method": model["method"],
                                              "bits": list(model.get("bits") or [])} if model else None)
    with open(folder / "cases.jsonl", "w", encoding="utf-8") as out:
        for case in library.iter_cases():
            line = deidentified_case(keyer, case, salt, days)
            line["codes"] = codes.get(case["id"], {})
            key = line["case"]
            out.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
            report.cases += 1
            thumb = clean_thumbnail(library.path_of(case["thumb_path"])) if case.get("thumb_path") else None
            if thumb is None:
                report.missing_thumbnails += 1
            else:
                (folder / "thumbs" / f"{key}.jpg").write_bytes(thumb)
                report.thumbnails += 1
    report.notices.append("text burnt into the images and names in report free text are NOT removed: check the "
                          "thumbnails and reports before sharing (README.txt in the export)")
    (folder / "README.txt").write_text(README, encoding="utf-8")
    meta = {"format": EXPORT_FORMAT, "profile": PROFILE, "cases": report.cases, "model": report.model,
            "created": dt.date.today().isoformat()[:7], "date_shift": "one random offset of up to "
            f"{MAX_DATE_SHIFT_DAYS} days for the whole export (not recorded)"}
    (folder / "export.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return report
