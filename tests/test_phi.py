"""What an import leaves in the library about patients (docs/architecture.md, "What the library stores
about patients"): files whose names, DICOM headers and manifest columns hold unique marker strings are
imported, then every file under the library folder (bytes) and every SQLite table and column are
searched for the markers. Only file names may remain, and only where the rule keeps them: the paths
of the user's own files in `cases.source_path` and `ingest_log.path`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
from medhash_app.core.phi import identifying_column, redact

# Values in headers and manifest columns: none may be stored anywhere.
HEADER = {
    "PatientName": "Qzpnfamily^Qzpngiven", "PatientID": "QZPID7731", "PatientBirthDate": "19230417",
    "AccessionNumber": "QZACC5521", "StudyInstanceUID": "1.2.826.0.1.3680043.10.99177.1",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.10.99177.2", "InstitutionName": "Qzhospital",
    "ReferringPhysicianName": "Qzdoctor^Qzref", "OtherPatientIDs": "QZOTHER8812",
    "PatientAddress": "Qzstreet 12", "StudyID": "QZSTUDY4410",
}
SOP_MARK = "1.2.826.0.1.3680043.10.99177.3"
MANIFEST = {
    "patient_id": "QZMRNA9001", "patient_name": "Qzmanifestname", "dob": "1931-02-03", "mrn": "QZMRNB9002",
    "accession": "QZACCM7007", "address": "Qzmanifeststreet 4", "phone": "+44-555-019283",
    "email": "qzmail@example.org", "study_id": "1.2.826.0.1.3680043.10.99177.9",
}
SIDECAR = {"patient_name": "Qzsidecarname", "DateOfBirth": "1944-05-06", "patient_id": "QZSIDEPID3"}
WARNING_UID = "1.2.QZWARNUID"  # an invalid UI value: pydicom's warning quotes it
FILE_MARKS = ("QZFILEMRN4242", "Qzfilesurname")  # users name files after patients; allowed in paths only
ALLOWED_PATH_COLUMNS = {("cases", "source_path"), ("ingest_log", "path")}


def _values() -> list[str]:
    out = [*HEADER.values(), SOP_MARK, *MANIFEST.values(), *SIDECAR.values(), "1923-04-17", "QZWARNUID"]
    return [v for value in out for v in {value, *value.split("^")}]


def _dicom(path: Path, *, sop: str, broken: bool = False, warn: bool = False) -> Path:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = sop
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
    for keyword, value in HEADER.items():
        setattr(ds, keyword, value)
    ds.Modality, ds.BodyPartExamined, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", "CHEST", 16, 16, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = np.random.default_rng(len(str(path))).integers(0, 4095, (16, 16), dtype=np.uint16).tobytes()
    ds.PixelData = pixels[:100] if broken else pixels
    if warn:
        ds.SOPInstanceUID = WARNING_UID  # invalid on purpose: reading it makes pydicom warn, quoting it
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def imported(tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    yield import_marked_files(tmp_path)


def import_marked_files(tmp_path: Path) -> tuple[Path, dict]:
    """Files whose names, headers, sidecars and manifest columns hold the markers, imported into
    tmp_path/lib; (library folder, report as a dict)."""
    src = tmp_path / "src"
    name = f"{FILE_MARKS[1]}_{FILE_MARKS[0]}"
    _dicom(src / "dicom" / f"{name}.dcm", sop=SOP_MARK)
    _dicom(src / "dicom" / f"{name}_broken.dcm", sop=SOP_MARK + "1", broken=True)
    _dicom(src / "dicom" / f"{name}_warn.dcm", sop=SOP_MARK + "2", warn=True)
    _png(src / "photos" / f"{name}_eye.png", 1)
    (src / "photos" / f"{name}_eye.json").write_text(json.dumps({"report": "Mild cupping.", **SIDECAR}))
    _png(src / "table" / f"{name}_row.png", 2)
    header = ",".join(["image", "report", "scanner", *MANIFEST])
    row = ",".join([f"{name}_row.png", "Clear lungs.", "KEEPSCANNER", *MANIFEST.values()])
    (src / "table" / "manifest.csv").write_text(f"{header}\n{row}\n")
    with Library.open(tmp_path / "lib", create=True) as lib:
        report = ingest([src / "dicom", src / "photos", src / "table"], lib, workers=1).to_dict()
    return tmp_path / "lib", report


def _sqlite_cells(db_path: Path) -> Iterator[tuple[str, str, str]]:
    db = sqlite3.connect(db_path)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [r[1] for r in db.execute(f"PRAGMA table_info('{table}')")]
            for row in db.execute(f"SELECT * FROM '{table}'"):
                for column, value in zip(columns, row, strict=True):
                    if value is not None:
                        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                        yield table, column, text
    finally:
        db.close()


def _variants(marker: str) -> set[bytes]:
    return {v.encode() for v in (marker, marker.lower(), marker.upper())}


def test_import_keeps_no_identifier_and_file_names_only_in_paths(imported: tuple[Path, dict]) -> None:
    library, report = imported
    assert report["added"] == 4, report  # the sound DICOM, the one with a warning, the photo, the row
    assert [Path(f["path"]).name for f in report["failed"]] == [f"{FILE_MARKS[1]}_{FILE_MARKS[0]}_broken.dcm"]
    files = [p for p in library.rglob("*") if p.is_file()]
    assert any(p.name == "library.sqlite" for p in files)
    for path in files:  # bytes of every file: the database, its WAL, images, thumbnails, logs
        data = path.read_bytes()
        for marker in _values():
            assert not any(v in data for v in _variants(marker)), f"{marker} found in {path.relative_to(library)}"
        if not path.name.startswith("library.sqlite"):
            for marker in FILE_MARKS:
                assert not any(v in data for v in _variants(marker)), f"{marker} found in {path.relative_to(library)}"
    for table, column, text in _sqlite_cells(library / "library.sqlite"):
        for marker in _values():
            assert marker.lower() not in text.lower(), f"{marker} in {table}.{column}"
        if (table, column) not in ALLOWED_PATH_COLUMNS:
            for marker in FILE_MARKS:
                assert marker.lower() not in text.lower(), f"{marker} in {table}.{column}"


def test_what_the_library_keeps_still_does_its_job(imported: tuple[Path, dict]) -> None:
    library, report = imported
    with Library.open(library, read_only=True) as lib:
        cases = list(lib.iter_cases())
        by_name = {Path(c["source_path"]).name: c for c in cases}
        row = next(c for name, c in by_name.items() if name.endswith("_row.png"))
        extra = {k: v for k, v in row["extra"].items() if k != "domain_confidence"}  # the image check's
        assert extra == {"scanner": "KEEPSCANNER"}  # unknown, non-identifying columns are kept
        assert row["patient_key"] and row["study_instance_uid"]  # pseudonyms, for grouping
        dicom = next(c for name, c in by_name.items() if name.endswith(f"{FILE_MARKS[0]}.dcm"))
        assert dicom["patient_key"] and len(dicom["sop_instance_uid"]) == 32 and dicom["study_date"] is None
        assert all(lib.image_file(c) == Path(c["source_path"]) for c in cases)  # originals open again
    notices = " ".join(report["notices"])
    for column in ("patient_name", "dob", "mrn", "accession", "address", "phone", "email", "DateOfBirth"):
        assert column in notices
    for entry in report["failed"]:  # reasons speak about the file, never quote its header
        assert not any(marker.lower() in entry["reason"].lower() for marker in _values())



@pytest.mark.parametrize("column", ["patient_name", "PatientName", "name", "dob", "DateOfBirth", "birth_date",
                                    "mrn", "MRN", "accession", "AccessionNumber", "address", "home_phone", "email",
                                    "surname", "study_uid", "SOPInstanceUID", "referring_physician", "ssn"])
def test_identifying_columns(column: str) -> None:
    assert identifying_column(column)


@pytest.mark.parametrize("column", ["scanner", "file_label", "file_name", "patient_classes", "age", "sex", "eye",
                                    "caption", "id", "case_id", "modality_detail", "fluid_level", "label_name"])
def test_columns_that_are_kept(column: str) -> None:
    assert not identifying_column(column)


def test_redact_removes_values_decoders_quote() -> None:
    text = redact("Invalid value for VR PN: 'Qz^Name'. Please see <https://dicom.nema.org/x#t> for allowed values "
                  "for each VR. Also DOE^JOHN, 1.2.826.0.1.3680043.2 and \"QZSECRET\"")
    assert "Qz" not in text and "DOE" not in text and "1.2.826" not in text and "QZSECRET" not in text
    assert text.startswith("Invalid value for VR PN") and "http" not in text
