"""`medhash export --deidentify` (core/export.py): nothing that identifies a patient, a study or a file
leaves the library; what a recipient needs (reports, labels, codes, thumbnails, grouping) does."""

from __future__ import annotations

import json
import sqlite3
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.export import export_deidentified
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
from tests.test_phi import FILE_MARKS, _values, _variants, import_marked_files


@pytest.fixture()
def imported(tmp_path: Path) -> tuple[Path, dict]:
    return import_marked_files(tmp_path)


def _export_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def _library_identifiers(library: Path) -> list[str]:
    """Everything the library keys cases, patients and studies by: none may be in an export."""
    db = sqlite3.connect(library / "library.sqlite")
    try:
        out = [v for row in db.execute("SELECT id, patient_key, sop_instance_uid, study_instance_uid, source_path "
                                       "FROM cases") for v in row if v]
        out += [r[0] for r in db.execute("SELECT value FROM meta WHERE key IN ('salt', 'key_fingerprint')")]
    finally:
        db.close()
    return out


def test_export_holds_no_phi_marker_and_no_library_identifier(imported: tuple[Path, dict], tmp_path: Path) -> None:
    library, _ = imported
    with Library.open(library, read_only=True) as lib:
        report = export_deidentified(lib, tmp_path / "export")
        cases = lib.count_cases()
    assert report.cases == cases == 4 and report.thumbnails == 4
    lines = [json.loads(line) for line in (tmp_path / "export" / "cases.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(line["case"] and line["instance_uid"].startswith("2.25.") for line in lines)
    data = _export_bytes(tmp_path / "export")
    for marker in [*_values(), *FILE_MARKS]:
        assert not any(v in data for v in _variants(marker)), marker
    for identifier in _library_identifiers(library):
        assert identifier.encode() not in data, identifier
    assert {line["report"] for line in lines} >= {"Clear lungs.", "Mild cupping."}
    assert "Clean Pixel Data" in (tmp_path / "export" / "README.txt").read_text()  # burnt-in text: not claimed
    for thumb in (tmp_path / "export" / "thumbs").iterdir():
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and not image.info.get("exif") and "comment" not in image.info


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20), dtype=np.uint8)).save(path)


def test_dates_are_shifted_with_intervals_kept_and_patients_still_grouped(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "src" / f"{i}.png", i)
    (tmp_path / "src" / "manifest.csv").write_text(
        "image,report,patient_id,study_date,age\n"
        "0.png,First.,P1,2020-01-01,95\n1.png,Second.,P1,2020-01-31,95\n2.png,Other.,P2,2021-06-15,40\n")
    with Library.open(tmp_path / "lib", create=True) as lib:
        ingest([tmp_path / "src"], lib, workers=1)
        export_deidentified(lib, tmp_path / "a")
        export_deidentified(lib, tmp_path / "b")
    rows = {r["report"]: r for r in map(json.loads, (tmp_path / "a" / "cases.jsonl").read_text().splitlines())}
    first, second = (date.fromisoformat(rows[k]["study_date"]) for k in ("First.", "Second."))
    assert (second - first).days == 30 and first != date(2020, 1, 1)
    assert rows["First."]["patient"] == rows["Second."]["patient"] != rows["Other."]["patient"]
    assert rows["First."]["age"] == 90 and rows["Other."]["age"] == 40
    other = {r["report"]: r for r in map(json.loads, (tmp_path / "b" / "cases.jsonl").read_text().splitlines())}
    assert other["First."]["case"] != rows["First."]["case"]  # two exports cannot be joined by their keys
    assert other["First."]["patient"] != rows["First."]["patient"]


def test_cli_export_needs_deidentify_and_an_empty_folder(imported: tuple[Path, dict], tmp_path: Path) -> None:
    library, _ = imported
    runner = CliRunner()
    refused = runner.invoke(app, ["export", str(tmp_path / "out"), "-l", str(library)])
    assert refused.exit_code == 2 and "--deidentify" in refused.output
    done = runner.invoke(app, ["export", str(tmp_path / "out"), "-l", str(library), "--deidentify", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["cases"] == 4
    again = runner.invoke(app, ["export", str(tmp_path / "out"), "-l", str(library), "--deidentify"])
    assert again.exit_code == 2 and "new or empty" in again.output
