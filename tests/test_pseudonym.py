"""Patient keys and UIDs are keyed pseudonyms whose key stays on the workstation (core/pseudonym.py)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhash_app.core.errors import MedHashError
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library, schema
from medhash_app.core.pseudonym import KEY_ENV, Pseudonymizer, create_key_file, load_key, read_key_file

MRN = "MRN-0042137"


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
    return path


def _manifest(folder: Path, rows: list[tuple[str, str]], start: int = 0) -> Path:
    lines = ["image,report,patient_id,study_id"]
    for i, (patient, study) in enumerate(rows, start=start):
        _png(folder / f"img{i}.png", i)
        lines.append(f"img{i}.png,No acute disease.,{patient},{study}")
    manifest = folder / f"manifest{start}.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _library_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_a_stolen_library_does_not_give_back_the_mrn(tmp_path: Path) -> None:
    """The attack of the issue: salt and key from library.sqlite, 100,000 candidate MRNs."""
    with Library.open(tmp_path / "lib", create=True) as lib:
        ingest([_manifest(tmp_path / "src", [(MRN, "S1")])], lib, workers=1)
        expected = lib.pseudonyms.patient(MRN)
    db = sqlite3.connect(tmp_path / "lib" / "library.sqlite")
    salt = bytes.fromhex(db.execute("SELECT value FROM meta WHERE key = 'salt'").fetchone()[0])
    stored = db.execute("SELECT patient_key FROM cases").fetchone()[0]
    db.close()
    assert stored == expected  # the workstation that holds the key links the patient's cases
    candidates = [f"MRN-{n:07d}" for n in range(100_000)]
    assert MRN in candidates
    for candidate in candidates:  # every way the library's own contents could key the hash
        for digest in (hashlib.sha256(salt + candidate.encode()).hexdigest(),
                       hashlib.sha256(candidate.encode()).hexdigest()):
            assert not digest.startswith(stored) and stored not in digest


def test_key_file_is_made_on_first_use_private_and_never_in_the_library(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setattr("medhash_app.core.pseudonym.default_key_file", lambda: tmp_path / "config" / "pseudonym.key")
    key_path = tmp_path / "config" / "pseudonym.key"
    assert not key_path.exists()
    with Library.open(tmp_path / "lib", create=True) as lib:
        ingest([_manifest(tmp_path / "src", [(MRN, "S1")])], lib, workers=1)
    key = read_key_file(key_path)
    assert len(key) == 32 and load_key() == key  # made once, then read back
    if os.name == "posix":
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_path.parent.stat().st_mode) & 0o077 == 0
    stored = _library_bytes(tmp_path / "lib")
    assert key.hex().encode() not in stored and key not in stored


def test_a_missing_department_key_is_an_error_not_a_new_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "share" / "department.key"
    monkeypatch.setenv(KEY_ENV, str(missing))
    with pytest.raises(MedHashError, match=KEY_ENV) as caught:
        load_key()
    assert caught.value.item == str(missing) and not missing.exists()
    bad = tmp_path / "bad.key"
    bad.write_text("not a key\n")
    monkeypatch.setenv(KEY_ENV, str(bad))
    with pytest.raises(MedHashError, match="not a MedHash pseudonym key file"):
        load_key()


def test_department_key_gives_the_same_keys_on_two_workstations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "share" / "department.key"
    key = create_key_file(shared)
    monkeypatch.setenv(KEY_ENV, str(shared))
    assert load_key() == key
    assert Pseudonymizer(key, b"s").patient(MRN) == Pseudonymizer(read_key_file(shared), b"s").patient(MRN)


def test_library_moved_to_another_key_stays_searchable_and_says_what_breaks(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with Library.open(tmp_path / "lib", create=True) as lib:
        first = ingest([_manifest(tmp_path / "src", [(MRN, "S1")])], lib, workers=1)
        assert not first.notices
        old_key = lib.get_cases(lib.case_ids())[0]["patient_key"]
    other = tmp_path / "other-workstation.key"
    create_key_file(other)
    monkeypatch.setenv(KEY_ENV, str(other))
    with Library.open(tmp_path / "lib") as lib:
        report = ingest([_manifest(tmp_path / "src", [(MRN, "S2")], start=1)], lib, workers=1)
        assert report.added == 1 and lib.count_cases() == 2
        assert lib.fts_match("acute")  # still searchable
        keys = [c["patient_key"] for c in lib.iter_cases()]
    assert keys[0] == old_key and keys[1] != old_key  # same patient, another key: no grouping
    notice = " ".join(report.notices)
    assert "another pseudonym key" in notice and KEY_ENV in notice and str(other) in notice


def _schema_1_library(folder: Path, source: Path) -> dict[str, str]:
    """A library as MedHash schema 1 wrote it: salted SHA-256 patient keys, UIDs and names in clear."""
    with Library.open(folder, create=True) as lib:
        salt = lib.salt
        png = _png(source / "old.png", 7)
        lib.add_cases([{"id": "a" * 32, "source_path": str(png), "patient_key":
                        hashlib.sha256(salt + MRN.encode()).hexdigest()[:16],
                        "sop_instance_uid": "1.2.826.0.1.3680043.99.111", "study_instance_uid": "1.2.826.0.1.3680043.99.222",
                        "extra": {"patient_name": "Zyxwvut^Qponm", "dob": "19230417", "scanner": "A"},
                        "report": "No acute disease."}])
        schema.set_meta(lib.db, "schema_version", "1")
        lib.db.execute("DELETE FROM meta WHERE key = 'key_fingerprint'")
        lib.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {"uid": "1.2.826.0.1.3680043.99.111", "study": "1.2.826.0.1.3680043.99.222", "name": "Zyxwvut",
            "dob": "19230417"}


def test_schema_1_library_is_pseudonymised_in_place_and_keeps_grouping(tmp_path: Path) -> None:
    clear = _schema_1_library(tmp_path / "lib", tmp_path / "src")
    assert clear["name"].encode() in _library_bytes(tmp_path / "lib")
    with Library.open(tmp_path / "lib") as lib:
        assert lib.schema_version == schema.SCHEMA_VERSION
        old = lib.get_case("a" * 32)
        assert old["patient_key"] == lib.pseudonyms.patient(MRN)  # re-keyed, not dropped
        assert old["sop_instance_uid"] == lib.pseudonyms.uid(clear["uid"])
        assert old["study_instance_uid"] == lib.pseudonyms.uid(clear["study"])
        assert old["extra"] == {"scanner": "A"}
        ingest([_manifest(tmp_path / "src", [(MRN, "S9")])], lib, workers=1)
        assert len({c["patient_key"] for c in lib.iter_cases()}) == 1  # old and new imports grouped
    stored = _library_bytes(tmp_path / "lib")
    for value in clear.values():
        assert value.encode() not in stored, value  # overwritten in the file and the WAL, not just unlinked


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_group_readable_key_file_still_works(tmp_path: Path) -> None:
    """A department key on a share may be group-readable: it is read, not rejected."""
    path = tmp_path / "dept.key"
    key = create_key_file(path)
    path.chmod(0o640)
    assert read_key_file(path) == key
