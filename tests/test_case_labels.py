"""The labels filter reads the indexed `case_labels` table (schema 3), kept in step with `cases` by
triggers: it must select exactly the rows the old json_each scan selected, after inserts, label
updates and deletes by any write path, and in a library migrated from schema 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from medhash_app.core.library import CaseFilter, Library, schema
from medhash_app.core.library.filters import filter_sql

LABELS = ["Edema", "Pneumonia", "D", "N", "Cardiomegaly", "Édème", "a b"]


def case_id(i: int) -> str:
    return hashlib.sha256(f"case-{i}".encode()).hexdigest()[:32]


def _old_scan(lib: Library, labels: list[str], extra: str = "1", params: tuple = ()) -> list[str]:
    """The schema-2 filter: a json_each scan of every case's labels."""
    marks = ", ".join("?" * len(labels))
    sql = (f"SELECT id FROM cases WHERE EXISTS (SELECT 1 FROM json_each(cases.labels) WHERE value IN ({marks})) "
           f"AND {extra} ORDER BY seq")
    return [r["id"] for r in lib.db.query(sql, [*labels, *params])]


FILTERS = [["Edema"], ["Pneumonia", "D"], ["Édème"], ["a b", "N"], ["nothing"], LABELS]


def _fill(lib: Library, n: int = 300, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        picked = [LABELS[j] for j in rng.choice(len(LABELS), rng.integers(0, 4), replace=True)]  # duplicates too
        rows.append({"id": case_id(i), "source_path": f"/d/{i}.png", "labels": picked,
                     "domain": "chest" if i % 2 else "fundus"})
    lib.add_cases(rows)


def _check(lib: Library) -> None:
    for labels in FILTERS:
        expected = _old_scan(lib, labels)
        assert lib.case_ids(CaseFilter(labels=labels)) == expected, labels
        assert lib.count_cases(CaseFilter(labels=labels)) == len(expected)
        seqs = [r["seq"] for r in lib.db.query(f"SELECT seq FROM cases WHERE id IN ({', '.join('?' * len(expected))})",
                                               expected)] if expected else []
        assert lib.case_seqs(CaseFilter(labels=labels)).tolist() == sorted(seqs)
        combined = CaseFilter(labels=labels, domain="chest")
        assert lib.case_ids(combined) == _old_scan(lib, labels, "domain = ?", ("chest",))


@pytest.fixture()
def lib(tmp_path: Path):
    with Library.open(tmp_path / "lib", create=True) as library:
        _fill(library)
        yield library


def test_labels_filter_reads_the_index_and_matches_the_old_scan(lib: Library) -> None:
    where, params = filter_sql(CaseFilter(labels=["Edema"]))
    plan = lib.db.execute(f"EXPLAIN QUERY PLAN SELECT seq FROM cases WHERE {where}", params).fetchall()
    assert any("case_labels" in str(row) for row in plan) and not any("json_each" in str(r) for r in plan)
    _check(lib)


def test_same_rows_after_updates_and_deletes(lib: Library) -> None:
    rng = np.random.default_rng(1)
    with lib.transaction() as db:  # raw SQL: no Python method of the library is involved
        for i in rng.choice(300, 60, replace=False):
            new = [LABELS[j] for j in rng.choice(len(LABELS), rng.integers(0, 3))]
            db.execute("UPDATE cases SET labels = ? WHERE id = ?", [json.dumps(new), case_id(int(i))])
        for i in rng.choice(300, 40, replace=False):
            db.execute("DELETE FROM cases WHERE id = ?", [case_id(int(i))])
        db.execute("UPDATE cases SET labels = 'not json' WHERE id = ?", [case_id(5)])
        db.execute("UPDATE cases SET labels = '[1, null, \"Edema\"]' WHERE id = ?", [case_id(6)])
    lib.add_cases([{"id": case_id(1000), "source_path": "/d/x.png", "labels": ["Edema", "Edema"]}])
    lib.set_extras({case_id(7): {"note": "x"}})  # another column changes: labels stay
    _check_tolerant(lib)


def _check_tolerant(lib: Library) -> None:
    """As _check; the old scan fails on malformed JSON, so that row is compared by hand."""
    bad = case_id(5)
    with lib.transaction() as db:
        db.execute("UPDATE cases SET labels = '[]' WHERE id = ?", [bad])
    _check(lib)
    assert not lib.db.execute("SELECT 1 FROM case_labels WHERE seq = (SELECT seq FROM cases WHERE id = ?)",
                              [bad]).fetchall()


def test_malformed_labels_count_as_none(lib: Library) -> None:
    with lib.transaction() as db:
        db.execute("UPDATE cases SET labels = 'not json' WHERE id = ?", [case_id(5)])
    assert case_id(5) not in lib.case_ids(CaseFilter(labels=LABELS))


def _downgrade_to_schema_2(folder: Path) -> None:
    """Make a schema-2 library: no case_labels, no code_versions, no triggers."""
    with Library.open(folder) as lib, lib.transaction() as db:
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND "
                                  "(name LIKE 'case_labels%' OR name LIKE 'code_versions%')").fetchall():
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE case_labels")
        db.execute("DROP TABLE code_versions")
        schema.set_meta(db, "schema_version", "2")


def test_schema_2_library_is_migrated(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    with Library.open(folder, create=True) as lib:
        _fill(lib)
        model = lib.register_model("m", "base", [16], "/ck")
        lib.put_codes(model, "image", 16, [case_id(i) for i in range(10)], np.zeros((10, 2), np.uint8))
    _downgrade_to_schema_2(folder)
    with Library.open(folder) as lib:
        assert lib.schema_version == 3
        _check(lib)
        assert lib.code_token(1, "image", 16) is not None and lib.code_token(1, "text", 16) is None
        with lib.transaction() as db:  # the triggers came with the migration
            db.execute("UPDATE cases SET labels = '[\"Edema\"]' WHERE id = ?", [case_id(3)])
        assert case_id(3) in lib.case_ids(CaseFilter(labels=["Edema"]))
        _check(lib)
