"""Library store: opening rules, schema/migrations, cases, filters, FTS, models and codes."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from medhash_app.core.errors import LibraryError
from medhash_app.core.library import CaseFilter, Library, fts_query, schema
from medhash_app.core.library.files import atomic_write, sweep_temp_files


def case_id(i: int) -> str:
    return hashlib.sha256(f"case-{i}".encode()).hexdigest()[:32]


def make_case(i: int, **values: object) -> dict[str, object]:
    return {"id": case_id(i), "source_path": f"/data/img{i}.png", **values}


@pytest.fixture()
def lib(tmp_path: Path):
    with Library.open(tmp_path / "lib", create=True) as library:
        yield library


def pragma(library: Library, name: str) -> object:
    return library.db.execute(f"PRAGMA {name}").fetchone()[0]


# --- opening -------------------------------------------------------------------------------------

def test_create_sets_up_wal_schema_salt_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    with Library.open(folder, create=True) as library:
        assert pragma(library, "journal_mode") == "wal"
        assert pragma(library, "foreign_keys") == 1
        assert pragma(library, "synchronous") == 1  # NORMAL
        assert library.schema_version == schema.SCHEMA_VERSION
        salt = library.salt
        assert len(salt) == 16
    assert {p.name for p in folder.iterdir()} >= {"library.sqlite", "inputs", "thumbs", "indexes", "models"}
    with Library.open(folder) as again:
        assert again.salt == salt  # the salt is per library and persistent
    with Library.open(tmp_path / "other", create=True) as other:
        assert other.salt != salt


def test_missing_folder_without_create_is_a_library_error(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="does not exist") as err:
        Library.open(tmp_path / "nowhere")
    assert err.value.item == str(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("content", [None, b"this is not sqlite at all" * 40, "foreign"])
def test_folder_that_is_not_a_library(tmp_path: Path, content: bytes | str | None) -> None:
    db_path = tmp_path / "library.sqlite"
    if content == "foreign":  # a real SQLite file made by some other program
        conn = sqlite3.connect(db_path)
        conn.execute("CREATE TABLE things (x)")
        conn.commit()
        conn.close()
    elif content is not None:
        db_path.write_bytes(content)
    before = db_path.read_bytes() if db_path.exists() else None
    with pytest.raises(LibraryError, match="not a MedHash library"):
        Library.open(tmp_path)
    assert (db_path.read_bytes() if db_path.exists() else None) == before


def test_a_file_is_not_a_library_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(LibraryError, match="is a file"):
        Library.open(tmp_path / "f", create=True)


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    with Library.open(tmp_path, create=True) as library:
        schema.set_meta(library.db, "schema_version", str(schema.SCHEMA_VERSION + 1))
    with pytest.raises(LibraryError, match="newer MedHash"):
        Library.open(tmp_path)
    with pytest.raises(LibraryError, match="newer MedHash"):
        Library.open(tmp_path, read_only=True)


def test_migration_hook_upgrades_old_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Library.open(tmp_path, create=True) as library:
        library.add_cases([make_case(1)])

    def add_reviewed_column(db, pseudonyms) -> None:
        db.execute("ALTER TABLE cases ADD COLUMN reviewed INTEGER DEFAULT 0")

    monkeypatch.setattr(schema, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
    monkeypatch.setitem(schema.MIGRATIONS, schema.SCHEMA_VERSION - 1, add_reviewed_column)
    with Library.open(tmp_path) as library:
        assert library.schema_version == schema.SCHEMA_VERSION
        assert "reviewed" in library.db["cases"].columns_dict
        assert library.count_cases() == 1


def test_failing_migration_leaves_library_at_old_version(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with Library.open(tmp_path, create=True):
        pass

    def broken(db, pseudonyms) -> None:
        db.execute("ALTER TABLE cases ADD COLUMN half_done INTEGER")
        raise RuntimeError("migration bug")

    old = schema.SCHEMA_VERSION
    monkeypatch.setattr(schema, "SCHEMA_VERSION", old + 1)
    monkeypatch.setitem(schema.MIGRATIONS, old, broken)
    with pytest.raises(RuntimeError):
        Library.open(tmp_path)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", old)
    with Library.open(tmp_path) as library:
        assert library.schema_version == old
        assert "half_done" not in library.db["cases"].columns_dict


def test_read_only_folder_refused_before_anything_is_written(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, where chmod does not stop writes; so the permission check itself (the
    # os.access system edge) is simulated. The real read-only SQLite path is tested below.
    folder = tmp_path / "lib"
    with Library.open(folder, create=True) as library:
        library.add_cases([make_case(1)])
    before = sorted(p.name for p in folder.rglob("*"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if mode & os.W_OK else real_access(p, mode))
    with pytest.raises(LibraryError, match="read-only"):
        Library.open(folder)
    with pytest.raises(LibraryError, match="read-only"):
        Library.open(tmp_path / "new", create=True)
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_read_only_open_reads_but_refuses_writes(tmp_path: Path) -> None:
    with Library.open(tmp_path, create=True) as library:
        library.add_cases([make_case(1, report="clear lungs")])
    with Library.open(tmp_path, read_only=True) as library:
        assert library.fts_match("lungs") == [case_id(1)]
        with pytest.raises(LibraryError, match="read-only"):
            library.add_cases([make_case(2)])
        assert library.count_cases() == 1


# --- cases ---------------------------------------------------------------------------------------

def test_add_cases_counts_new_rows_and_ignores_known_ids(lib: Library) -> None:
    assert lib.add_cases([make_case(i) for i in range(5)]) == 5
    assert lib.add_cases([make_case(3, report="changed"), make_case(5)]) == 1
    assert lib.count_cases() == 6
    assert lib.get_case(case_id(3))["report"] is None  # the first write wins
    assert lib.has_case(case_id(5)) and not lib.has_case(case_id(9))
    assert lib.known_hashes({case_id(1), case_id(9), case_id(4)}) == {case_id(1), case_id(4)}


def test_add_cases_is_one_transaction(lib: Library) -> None:
    bad = make_case(2, age=["not", "a", "number"])  # SQLite cannot bind a list: fails mid-batch
    with pytest.raises(LibraryError):
        lib.add_cases([make_case(0), make_case(1), bad, make_case(3)])
    assert lib.count_cases() == 0


def test_case_round_trip_keeps_json_fields(lib: Library) -> None:
    lib.add_cases([make_case(1, labels=["Edema", "Pneumonia"], extra={"eye": "left", "n": 3},
                             age=61.5, report="Mild edema.", label_source="dataset", domain="chest")])
    row = lib.get_case(case_id(1))
    assert row["labels"] == ["Edema", "Pneumonia"]
    assert row["extra"] == {"eye": "left", "n": 3}
    assert row["age"] == 61.5 and row["label_source"] == "dataset" and row["domain"] == "chest"
    assert row["added_at"].endswith("+00:00")
    assert lib.get_case("0" * 32) is None


def test_unknown_column_is_a_programming_error(lib: Library) -> None:
    with pytest.raises(ValueError, match="patient_name"):
        lib.add_cases([make_case(1, patient_name="X")])


def test_get_cases_follows_given_order(lib: Library) -> None:
    lib.add_cases([make_case(i) for i in range(4)])
    ids = [case_id(2), "unknown", case_id(0), case_id(3)]
    assert [r["id"] for r in lib.get_cases(ids)] == [case_id(2), case_id(0), case_id(3)]


def _filter_fixture(lib: Library) -> None:
    lib.add_cases([
        make_case(0, labels=["Edema"], modality="DX", view="PA", domain="chest", split="train",
                  study_date="2020-01-05", report="Pulmonary edema."),
        make_case(1, labels=["Pneumonia", "Edema"], modality="CR", view="AP", domain="chest",
                  split="test", study_date="2021-06-01", report="Right lower lobe pneumonia."),
        make_case(2, labels=["D"], domain="fundus", split="train", study_date="2019-12-31",
                  report="moderate non proliferative retinopathy"),
        make_case(3, labels=[], modality="DX", view="LL", domain="chest", report="No acute disease."),
    ])


@pytest.mark.parametrize(("flt", "expected"), [
    (CaseFilter(labels=["Edema"]), [0, 1]),
    (CaseFilter(labels=["Pneumonia", "D"]), [1, 2]),
    (CaseFilter(modality="DX"), [0, 3]),
    (CaseFilter(view=["PA", "AP"]), [0, 1]),
    (CaseFilter(domain="fundus"), [2]),
    (CaseFilter(split="train"), [0, 2]),
    (CaseFilter(date_from="2020-01-01"), [0, 1]),
    (CaseFilter(date_from="2020-01-01", date_to="2020-12-31"), [0]),
    (CaseFilter(keyword="edema"), [0]),
    (CaseFilter(keyword="  ?!  "), [0, 1, 2, 3]),
    (CaseFilter(labels=[], modality="", view=()), [0, 1, 2, 3]),
    (CaseFilter(date_to=dt.date(2020, 1, 5)), [0, 2]),
    (CaseFilter(domain="chest", labels=["Edema"], keyword="pneumonia"), [1]),
    (None, [0, 1, 2, 3]),
])
def test_filters(lib: Library, flt: CaseFilter | None, expected: list[int]) -> None:
    _filter_fixture(lib)
    assert lib.case_ids(flt) == [case_id(i) for i in expected]
    assert lib.count_cases(flt) == len(expected)
    assert [r["id"] for r in lib.iter_cases(flt, batch=1)] == [case_id(i) for i in expected]


def test_facets_list_values_present(lib: Library) -> None:
    assert lib.facets()["labels"] == [] and lib.facets()["date_min"] is None
    _filter_fixture(lib)
    facets = lib.facets()
    assert facets["labels"] == ["D", "Edema", "Pneumonia"]
    assert (facets["modalities"], facets["views"]) == (["CR", "DX"], ["AP", "LL", "PA"])
    assert (facets["domains"], facets["splits"]) == (["chest", "fundus"], ["test", "train"])
    assert (facets["date_min"], facets["date_max"]) == ("2019-12-31", "2021-06-01")


def test_iter_cases_pages_in_database_order(lib: Library) -> None:
    lib.add_cases([make_case(i) for i in range(10)])
    lib.add_cases([make_case(i) for i in range(10, 13)])
    assert [r["id"] for r in lib.iter_cases(batch=3)] == [case_id(i) for i in range(13)]


@pytest.mark.parametrize(("query", "hit"), [
    ("NOT", False), ("effusion OR", False), ('"', False), ('effusion"', True), ("*", False),
    ("a:b", False), ("(effusion", True), ("report:effusion", False), ("-effusion", True),
    ("effusion AND NEAR(", False), ("pleural)effusion", True), ("'; DROP TABLE cases; --", False)])
def test_fts_user_input_never_breaks_the_query(lib: Library, query: str, hit: bool) -> None:
    # Operators and punctuation are searched as plain words (all words must occur), never parsed.
    lib.add_cases([make_case(1, report="Small left pleural effusion."), make_case(2, report="Normal.")])
    assert lib.fts_match(query) == ([case_id(1)] if hit else [])
    assert lib.count_cases() == 2


def test_fts_ranks_and_requires_all_words(lib: Library) -> None:
    lib.add_cases([make_case(1, report="effusion"),
                   make_case(2, report="effusion effusion effusion, large effusion"),
                   make_case(3, report="atelectasis")])
    assert lib.fts_match("effusion") == [case_id(2), case_id(1)]
    assert lib.fts_match("large effusion") == [case_id(2)]
    assert lib.fts_match("effusion", limit=1) == [case_id(2)]
    assert fts_query('a "b" NOT') == '"a" "b" "NOT"'


def test_fts_handles_long_and_non_english_reports(lib: Library) -> None:
    long_report = " ".join(f"word{i}" for i in range(10_000)) + " pneumothorax"
    lib.add_cases([make_case(1, report=long_report),
                   make_case(2, report="Épanchement pleural gauche. 右肺野に浸潤影")])
    assert lib.get_case(case_id(1))["report"] == long_report
    assert lib.fts_match("pneumothorax") == [case_id(1)]
    assert lib.fts_match("épanchement") == [case_id(2)]


def test_fts_follows_deletes_and_updates(lib: Library) -> None:
    lib.add_cases([make_case(1, report="cardiomegaly"), make_case(2, report="cardiomegaly")])
    with lib.transaction() as db:
        db.execute("DELETE FROM cases WHERE id = ?", [case_id(1)])
        db.execute("UPDATE cases SET report = 'clear' WHERE id = ?", [case_id(2)])
    assert lib.fts_match("cardiomegaly") == []
    assert lib.fts_match("clear") == [case_id(2)]
    lib.db.execute("INSERT INTO cases_fts(cases_fts) VALUES('integrity-check')")  # raises if stale


def test_ingest_log_and_errors(lib: Library) -> None:
    lib.write_batch([make_case(1)], [
        {"path": "/a.png", "content_hash": case_id(1), "status": "ok", "batch_id": "b1"},
        {"path": "/b.png", "status": "error", "reason": "corrupt", "batch_id": "b1"}])
    lib.log_ingest([{"path": "/c.png", "status": "error", "reason": "empty", "batch_id": "b2"}])
    assert [e["path"] for e in lib.ingest_errors()] == ["/b.png", "/c.png"]
    assert [(e["path"], e["reason"]) for e in lib.ingest_errors("b2")] == [("/c.png", "empty")]
    assert len(lib.ingest_log("b1")) == 2
    with pytest.raises(ValueError, match="status"):
        lib.log_ingest([{"path": "/d", "status": "fine", "batch_id": "b3"}])


def test_disk_full_rolls_back_the_batch(lib: Library) -> None:
    lib.add_cases([make_case(i, report="x" * 100) for i in range(5)])
    pages = pragma(lib, "page_count")
    lib.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # real SQLITE_FULL from SQLite
    big = [make_case(100 + i, report=f"report {i} " + "y" * 5000) for i in range(50)]
    with pytest.raises(LibraryError, match="disk is full") as err:
        lib.write_batch(big, [{"path": "/p", "status": "ok", "batch_id": "full"}])
    assert err.value.item == str(lib.folder)
    assert lib.count_cases() == 5 and lib.ingest_log("full") == []
    lib.db.execute("PRAGMA max_page_count = 1073741823")
    assert lib.add_cases(big) == 50  # the library is still usable once space is back


def test_missing_files_are_detected(lib: Library) -> None:
    lib.add_cases([make_case(i, input_path=f"inputs/x{i}.png", thumb_path=f"thumbs/x{i}.jpg")
                   for i in range(3)])
    for i in range(3):
        atomic_write(lib.folder / f"inputs/x{i}.png", b"png")
        atomic_write(lib.folder / f"thumbs/x{i}.jpg", b"jpg")
    (lib.folder / "thumbs/x1.jpg").unlink()
    (lib.folder / "inputs/x2.png").write_bytes(b"")
    assert lib.cases_missing_files() == {case_id(1), case_id(2)}
    assert lib.cases_missing_files([case_id(0), case_id(2)]) == {case_id(2)}


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.png"
    atomic_write(target, b"old")

    with pytest.raises(TypeError):
        atomic_write(target, object())  # type: ignore[arg-type]  # fails inside write()
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["b.png"]


def test_sweep_removes_only_old_temp_files(tmp_path: Path) -> None:
    (tmp_path / "inputs" / "ab").mkdir(parents=True)
    old = tmp_path / "inputs" / "ab" / ".x.png.1.ab.tmp"
    new = tmp_path / "inputs" / "ab" / ".y.png.1.cd.tmp"
    keep = tmp_path / "inputs" / "ab" / "x.png"
    for p in (old, new, keep):
        p.write_bytes(b"1")
    os.utime(old, (1, 1))
    assert sweep_temp_files(tmp_path) == 1
    assert not old.exists() and new.exists() and keep.exists()


# --- models and codes ----------------------------------------------------------------------------

def test_models_register_and_activate(lib: Library) -> None:
    first = lib.register_model("base", "base", [16, 32], "/ck/a", metrics={"map": 0.5}, activate=True)
    second = lib.register_model("mcph", "mcph", [64], "/ck/b", config={"lr": 1e-4})
    assert lib.active_model()["id"] == first
    lib.set_active_model(second)
    active = lib.active_model()
    assert active["id"] == second and active["bits"] == [64] and active["config"] == {"lr": 1e-4}
    assert [m["active"] for m in lib.list_models()] == [False, True]
    assert lib.get_model(first)["metrics"] == {"map": 0.5}
    with pytest.raises(LibraryError, match="no such model"):
        lib.set_active_model(999)
    assert lib.active_model()["id"] == second
    lib.set_model_metrics(first, {"map_i2t": {"16": 0.61}})
    assert lib.get_model(first)["metrics"] == {"map_i2t": {"16": 0.61}}
    with pytest.raises(LibraryError, match="no such model"):
        lib.set_model_metrics(999, {})


def test_no_active_model_in_new_library(lib: Library) -> None:
    assert lib.active_model() is None and lib.list_models() == []


def _codes_fixture(lib: Library) -> int:
    lib.add_cases([make_case(i) for i in range(4)])
    return lib.register_model("m", "base", [16], "/ck")


def test_codes_come_back_in_database_order(lib: Library) -> None:
    model = _codes_fixture(lib)
    order = [3, 0, 2, 1]
    packed = np.array([[i, 10 + i] for i in order], dtype=np.uint8)
    lib.put_codes(model, "image", 16, [case_id(i) for i in order], packed)
    ids, codes = lib.get_codes(model, "image", 16)
    assert list(ids) == [case_id(i) for i in range(4)]
    assert codes.tolist() == [[i, 10 + i] for i in range(4)]
    empty_ids, empty = lib.get_codes(model, "text", 16)
    assert empty_ids.shape == (0,) and empty.shape == (0, 2)


def test_codes_checksum_tracks_content_and_order(lib: Library) -> None:
    model = _codes_fixture(lib)
    ids = [case_id(i) for i in range(4)]
    packed = np.arange(8, dtype=np.uint8).reshape(4, 2)
    lib.put_codes(model, "text", 16, ids, packed)
    first = lib.codes_checksum(model, "text", 16)
    expected = hashlib.sha256(b"".join(i.encode() + b"\0" + bytes(c) for i, c in zip(ids, packed))).hexdigest()
    assert first == expected
    packed[2, 0] ^= 1
    lib.put_codes(model, "text", 16, ids[2:3], packed[2:3])  # replace one code
    assert lib.codes_checksum(model, "text", 16) != first
    assert lib.count_codes(model, "text", 16) == 4


def test_embeddings_round_trip_as_float16(lib: Library) -> None:
    model = _codes_fixture(lib)
    emb = np.array([[0.1, -2.0, 3.5], [1.0, 0.0, -1.0]], dtype=np.float32)
    lib.put_codes(model, "image", 16, [case_id(0), case_id(1)], np.zeros((2, 2), np.uint8), emb)
    lib.put_codes(model, "image", 16, [case_id(2)], np.zeros((1, 2), np.uint8))
    out = lib.get_embeddings(model, "image", 16, [case_id(1), case_id(2), case_id(0)])
    np.testing.assert_allclose(out[0], emb[1], atol=1e-3)
    np.testing.assert_allclose(out[2], emb[0], atol=1e-3)
    assert np.isnan(out[1]).all() and out.dtype == np.float32


@pytest.mark.parametrize(("modality", "bits", "shape", "dtype"), [
    ("audio", 16, (2, 2), np.uint8), ("image", 12, (2, 2), np.uint8),
    ("image", 16, (2, 4), np.uint8), ("image", 16, (2, 2), np.float32)])
def test_put_codes_validates_shapes(lib: Library, modality: str, bits: int, shape: tuple, dtype) -> None:
    model = _codes_fixture(lib)
    with pytest.raises(ValueError):
        lib.put_codes(model, modality, bits, [case_id(0), case_id(1)], np.zeros(shape, dtype))


def test_codes_for_unknown_case_are_refused(lib: Library) -> None:
    model = _codes_fixture(lib)
    with pytest.raises(LibraryError):
        lib.put_codes(model, "image", 16, [case_id(0), "f" * 32], np.zeros((2, 2), np.uint8))
    assert lib.count_codes(model, "image", 16) == 0


def test_codes_cascade_and_delete(lib: Library) -> None:
    model = _codes_fixture(lib)
    ids = [case_id(i) for i in range(4)]
    for modality in ("image", "text"):
        lib.put_codes(model, modality, 16, ids, np.zeros((4, 2), np.uint8))
    with lib.transaction() as db:
        db.execute("DELETE FROM cases WHERE id = ?", [case_id(1)])
    assert list(lib.get_codes(model, "image", 16)[0]) == [case_id(0), case_id(2), case_id(3)]
    assert lib.delete_codes(model, "text") == 3
    assert lib.count_codes(model, "text", 16) == 0 and lib.count_codes(model, "image", 16) == 3
    assert lib.delete_codes(model) == 3
