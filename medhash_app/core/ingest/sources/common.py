"""Helpers the dataset sources share: tables (CSV, gzip CSV, JSONL, XLSX), text files, image
look-up by name, and the mapping of a manifest-style record onto IngestItem metadata."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medhash_app.core.errors import DatasetLayoutError
from medhash_app.core.input_files import MAX_TEXT_BYTES, read_input
from medhash_app.core.phi import PATIENT_ID_COLUMNS, identifying_column

RASTER_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic"})
TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".jsonl", ".ndjson", ".xlsx")
# Columns of a generic record that have a meaning of their own; the rest is kept in `extra`.
CORE_COLUMNS = frozenset({"image", "report", "labels", "patient_id", "study_id", "view", "split", "domain"})
_LATERALITY = {"l": "L", "left": "L", "os": "L", "r": "R", "right": "R", "od": "R", "b": "B", "both": "B"}


def table_suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in TABLE_SUFFIXES if name.endswith(s)), "")


def read_text_file(path: Path) -> str:
    """Report text in UTF-8 (with or without BOM), falling back to Latin-1 for old exports.
    Only a regular file of at most MAX_TEXT_BYTES is read (a FIFO or /dev/zero never ends)."""
    data = read_input(path, MAX_TEXT_BYTES)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_header(path: Path) -> list[str]:
    """Column names of a table, without reading it all."""
    suffix = table_suffix(path)
    if suffix == ".xlsx":
        return list(next(_xlsx_rows(path), {}).keys())
    if suffix in (".jsonl", ".ndjson"):
        return list(next(read_table(path), {}).keys())
    try:
        with _open_text(path) as handle:
            return next(csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ","), [])
    except _TABLE_ERRORS as exc:
        raise table_error(path, exc) from exc


def read_table(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a CSV/TSV (optionally gzipped), JSON Lines or XLSX file as dicts. A file that is not
    UTF-8, not gzip, damaged or unreadable is a DatasetLayoutError naming it (even mid-file)."""
    suffix = table_suffix(path)
    try:
        if suffix == ".xlsx":
            yield from _xlsx_rows(path)
        elif suffix in (".jsonl", ".ndjson"):
            yield from _jsonl_rows(path)
        else:
            with _open_text(path) as handle:
                yield from csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
    except _TABLE_ERRORS as exc:
        raise table_error(path, exc) from exc


# What reading a table can raise besides our own errors; OSError includes gzip.BadGzipFile.
_TABLE_ERRORS = (UnicodeDecodeError, EOFError, zlib.error, zipfile.BadZipFile, csv.Error, OSError)


def table_error(path: Path, exc: BaseException) -> DatasetLayoutError:
    """The reason a table could not be read, in words a user can act on."""
    if isinstance(exc, UnicodeDecodeError):
        byte = exc.object[exc.start:exc.start + 1].hex()
        return DatasetLayoutError(path, f"is not UTF-8 text (it has the byte 0x{byte}, e.g. from a Latin-1 or "
                                        "Windows export); save it as UTF-8")
    if isinstance(exc, gzip.BadGzipFile):
        return DatasetLayoutError(path, "is not a gzip file (its name ends in .gz); compress it with gzip "
                                        "or remove the .gz from its name")
    if isinstance(exc, EOFError | zlib.error):
        return DatasetLayoutError(path, "the gzip data is truncated or damaged")
    if isinstance(exc, zipfile.BadZipFile):
        return DatasetLayoutError(path, "is not a valid .xlsx workbook")
    if isinstance(exc, csv.Error):
        return DatasetLayoutError(path, f"is not a readable CSV/TSV table ({exc})")
    strerror = getattr(exc, "strerror", None)
    return DatasetLayoutError(path, f"cannot be read ({strerror or exc})")


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetLayoutError(f"{path}, line {number}", f"not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DatasetLayoutError(f"{path}, line {number}", "each line must be a JSON object")
            yield record


def _xlsx_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import openpyxl  # optional: only for ODIR's original spreadsheet
    except ImportError as exc:
        raise DatasetLayoutError(path, "reading .xlsx needs the optional package openpyxl "
                                       "(pip install openpyxl); or save the sheet as CSV and ingest that") from exc
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = book.worksheets[0].iter_rows(values_only=True)
        header = [str(cell).strip() if cell is not None else "" for cell in next(rows, ())]
        for values in rows:
            if any(v is not None for v in values):
                yield dict(zip(header, values, strict=False))
    finally:
        book.close()


def index_images(root: Path, skip: Path | None = None) -> dict[str, Path]:
    """File name -> path for every image under `root` (first found wins; hidden folders skipped)."""
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(folder, d) != skip)
        for name in sorted(files):
            if Path(name).suffix.lower() in RASTER_SUFFIXES | DICOM_SUFFIXES:
                found.setdefault(name, Path(folder, name))
    return found


def text_or_none(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def parse_labels(value: Any) -> list[str] | None:
    """A labels cell: a JSON/Python list, or a ";"-separated string. Empty means "not given"."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if not text:
        return None
    if text.startswith("["):
        try:
            return parse_labels(json.loads(text))
        except json.JSONDecodeError:
            pass
    return [part.strip() for part in text.split(";") if part.strip()]


def parse_number(value: Any) -> float | None:
    try:
        return float(str(value).strip().rstrip("Yy")) if text_or_none(value) else None
    except ValueError:
        return None


def normalise_sex(value: Any) -> str | None:
    text = (text_or_none(value) or "").lower()
    return {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}.get(text)


def normalise_laterality(value: Any) -> str | None:
    return _LATERALITY.get((text_or_none(value) or "").lower())


def record_metadata(record: dict[str, Any], consumed: set[str] | frozenset[str] = CORE_COLUMNS) -> dict[str, Any]:
    """Metadata of a manifest/sidecar record: known columns mapped, the others kept in `extra`,
    except the ones that identify someone (core/phi.py: names, birth dates, MRNs, accession numbers,
    addresses...), which are dropped and listed by name in "withheld".

    `eye`/`laterality`, `age` and `sex` are mapped onto case columns and also stay in `extra`;
    `patient_id` (or an MRN column) is only ever used to make the keyed patient key (never stored).
    """
    patient_id = next((text for column in PATIENT_ID_COLUMNS if (text := text_or_none(record.get(column)))), None)
    meta: dict[str, Any] = {
        "patient_id": patient_id,
        "study_id": text_or_none(record.get("study_id")),
        "view": (text_or_none(record.get("view")) or "").upper() or None,
        "split": text_or_none(record.get("split")),
        "domain": text_or_none(record.get("domain")),
        "laterality": normalise_laterality(record.get("laterality", record.get("eye"))),
        "age": parse_number(record.get("age")),
        "sex": normalise_sex(record.get("sex")),
        "study_date": text_or_none(record.get("study_date")),
    }
    kept = {k: v for k, v in record.items() if k not in consumed and v not in (None, "")}
    meta["extra"] = {k: v for k, v in kept.items() if not identifying_column(k)}
    meta["withheld"] = sorted(str(k) for k in kept if identifying_column(k))
    if meta["domain"] is None and "eye" in record:
        meta["domain"] = "fundus"  # per-eye records (ODIR-style manifests) are fundus photographs
    return {k: v for k, v in meta.items() if v not in (None, {}, [])}
