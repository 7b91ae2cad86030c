"""Library schema: table definitions, the version stamp in `meta`, and the migration hook.

The schema is written as plain SQL because it needs things sqlite-utils' table builder does not
express (ON DELETE CASCADE, a UNIQUE text id beside the integer rowid). Each schema change adds a
function to MIGRATIONS and bumps SCHEMA_VERSION; `migrate` runs the missing steps in order.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable

from sqlite_utils import Database

from medhash_app.core.phi import identifying_column
from medhash_app.core.pseudonym import LEGACY_KEY_HEX, Pseudonymizer, is_pseudonym

SCHEMA_VERSION = 3

# `seq` is the explicit rowid: it is the stable "database position" that ranking uses to break
# ties, and the rowid the FTS index points at. An implicit rowid could be renumbered by VACUUM.
_TABLES_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT, study_instance_uid TEXT,
    source_path TEXT NOT NULL, source_kind TEXT,
    report TEXT, labels TEXT NOT NULL DEFAULT '[]', label_source TEXT NOT NULL DEFAULT 'none',
    domain TEXT NOT NULL DEFAULT 'other',
    modality TEXT, view TEXT, laterality TEXT, body_part TEXT, study_date TEXT,
    age REAL, sex TEXT, patient_key TEXT, split TEXT, extra TEXT NOT NULL DEFAULT '{}',
    input_path TEXT, thumb_path TEXT, added_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_domain ON cases(domain);
CREATE INDEX IF NOT EXISTS cases_modality ON cases(modality);
CREATE INDEX IF NOT EXISTS cases_study_date ON cases(study_date);
CREATE INDEX IF NOT EXISTS cases_patient ON cases(patient_key);
CREATE TABLE IF NOT EXISTS ingest_log (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, content_hash TEXT,
    status TEXT NOT NULL CHECK (status IN ('ok', 'skipped', 'error')),
    reason TEXT, at TEXT NOT NULL, batch_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ingest_log_batch ON ingest_log(batch_id, status);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, method TEXT NOT NULL, bits TEXT NOT NULL,
    checkpoint_path TEXT NOT NULL, created_at TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    metrics TEXT NOT NULL DEFAULT '{}', config TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS codes (
    model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    modality TEXT NOT NULL CHECK (modality IN ('image', 'text')),
    bits INTEGER NOT NULL,
    case_id TEXT NOT NULL REFERENCES cases(id) ON DELETE CASCADE,
    code BLOB NOT NULL, embedding BLOB,
    PRIMARY KEY (model_id, modality, bits, case_id)
);
CREATE INDEX IF NOT EXISTS codes_case ON codes(case_id);
"""

# Schema 3: two tables kept in step with `cases` and `codes` by triggers, so every write path (this
# package, raw SQL, ON DELETE CASCADE) updates them.
# - case_labels: one row per (label, case seq), so a labels filter is an index lookup instead of a
#   json_each scan of every case. Only text labels are kept: a filter's values are text, and json_each
#   values of another type never compared equal to them. Malformed JSON counts as no labels.
# - code_versions: a random token per (model, modality, bits), replaced on every change to those
#   codes; a codes file on disk (library/code_files.py) is trusted only while its token is current.
#   Random rather than a counter, so a library restored from a backup cannot reuse a token.
_TABLES_V3 = """
CREATE TABLE IF NOT EXISTS case_labels (
    label TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (label, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS case_labels_seq ON case_labels(seq);
CREATE TRIGGER IF NOT EXISTS case_labels_insert AFTER INSERT ON cases BEGIN
    INSERT OR IGNORE INTO case_labels (label, seq) SELECT value, new.seq FROM json_each(
        CASE WHEN json_valid(new.labels) THEN new.labels ELSE '[]' END) WHERE type = 'text';
END;
CREATE TRIGGER IF NOT EXISTS case_labels_update AFTER UPDATE OF labels, seq ON cases BEGIN
    DELETE FROM case_labels WHERE seq = old.seq;
    INSERT OR IGNORE INTO case_labels (label, seq) SELECT value, new.seq FROM json_each(
        CASE WHEN json_valid(new.labels) THEN new.labels ELSE '[]' END) WHERE type = 'text';
END;
CREATE TRIGGER IF NOT EXISTS case_labels_delete AFTER DELETE ON cases BEGIN
    DELETE FROM case_labels WHERE seq = old.seq;
END;
CREATE TABLE IF NOT EXISTS code_versions (
    model_id INTEGER NOT NULL, modality TEXT NOT NULL, bits INTEGER NOT NULL, token TEXT NOT NULL,
    PRIMARY KEY (model_id, modality, bits)
);
CREATE TRIGGER IF NOT EXISTS code_versions_insert AFTER INSERT ON codes BEGIN
    INSERT OR REPLACE INTO code_versions VALUES (new.model_id, new.modality, new.bits, hex(randomblob(8)));
END;
CREATE TRIGGER IF NOT EXISTS code_versions_update AFTER UPDATE ON codes BEGIN
    INSERT OR REPLACE INTO code_versions VALUES (old.model_id, old.modality, old.bits, hex(randomblob(8)));
    INSERT OR REPLACE INTO code_versions VALUES (new.model_id, new.modality, new.bits, hex(randomblob(8)));
END;
CREATE TRIGGER IF NOT EXISTS code_versions_delete AFTER DELETE ON codes BEGIN
    INSERT OR REPLACE INTO code_versions VALUES (old.model_id, old.modality, old.bits, hex(randomblob(8)));
END;
"""

PseudonymSource = Callable[[], Pseudonymizer]
Migration = Callable[[Database, PseudonymSource], None]


def _pseudonymise_v1(db: Database, pseudonyms: PseudonymSource) -> None:
    """Schema 1 -> 2: what schema 1 kept in clear becomes what schema 2 keeps (architecture.md,
    "What the library stores about patients"): salted patient keys are re-keyed with the workstation
    key (grouping by patient is kept), Study/SOP Instance UIDs become keyed pseudonyms, and identifying
    columns (names, birth dates, MRNs...) are removed from `extra`. Old values are overwritten in the
    file, not just unlinked (secure_delete, and the caller truncates the WAL)."""
    rows = list(db.query("SELECT id, patient_key, sop_instance_uid, study_instance_uid, extra FROM cases"))
    if not rows:
        return
    keyer = pseudonyms()
    updates = []
    for row in rows:
        key = row["patient_key"]
        if key and len(key) == LEGACY_KEY_HEX:
            key = keyer.rekey_patient(key)
        sop, study = (v if v is None or is_pseudonym(v) else keyer.uid(v)
                      for v in (row["sop_instance_uid"], row["study_instance_uid"]))
        extra = json.loads(row["extra"] or "{}")
        kept = {k: v for k, v in extra.items() if not identifying_column(k)} if isinstance(extra, dict) else extra
        updates.append((key, sop, study, json.dumps(kept, sort_keys=True, default=str), row["id"]))
    db.conn.executemany("UPDATE cases SET patient_key = ?, sop_instance_uid = ?, study_instance_uid = ?, "
                        "extra = ? WHERE id = ?", updates)
    set_meta(db, "key_fingerprint", keyer.fingerprint())


def _run_script(db: Database, script: str) -> None:
    """Run the statements one by one (executescript would commit the caller's transaction); SQLite's
    own `complete_statement` says where each ends, trigger bodies included."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            db.execute(pending)
            pending = ""


def _label_and_version_tables_v2(db: Database, pseudonyms: PseudonymSource) -> None:
    """Schema 2 -> 3: case_labels and code_versions (with their triggers), filled from what is there."""
    _run_script(db, _TABLES_V3)
    db.execute("INSERT OR IGNORE INTO case_labels (label, seq) SELECT j.value, c.seq FROM cases c, "
               "json_each(CASE WHEN json_valid(c.labels) THEN c.labels ELSE '[]' END) j WHERE j.type = 'text'")
    db.execute("INSERT OR REPLACE INTO code_versions SELECT model_id, modality, bits, hex(randomblob(8)) "
               "FROM codes GROUP BY model_id, modality, bits")


# MIGRATIONS[v] upgrades a library from schema v to v + 1.
MIGRATIONS: dict[int, Migration] = {1: _pseudonymise_v1, 2: _label_and_version_tables_v2}


def create_schema(db: Database) -> None:
    """Create every table of the current schema, the FTS index and the meta stamp (caller holds a
    transaction, so a crash mid-way leaves no half-made library)."""
    for statement in _TABLES_V1.split(";"):
        if statement.strip():
            db.execute(statement)
    _run_script(db, _TABLES_V3)
    if "cases_fts" not in db.table_names():
        db["cases"].enable_fts(["report"], create_triggers=True, tokenize="unicode61")
    set_meta(db, "schema_version", str(SCHEMA_VERSION))
    if get_meta(db, "salt") is None:
        set_meta(db, "salt", secrets.token_hex(16))


def get_meta(db: Database, key: str) -> str | None:
    rows = list(db.query("SELECT value FROM meta WHERE key = ?", [key]))
    return rows[0]["value"] if rows else None


def set_meta(db: Database, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [key, value])


def migrate(db: Database, from_version: int, pseudonyms: PseudonymSource) -> None:
    """Apply MIGRATIONS[from_version], ... up to SCHEMA_VERSION (caller holds a transaction).
    `pseudonyms()` gives the workstation's Pseudonymizer for this library (called only if needed)."""
    for version in range(from_version, SCHEMA_VERSION):
        MIGRATIONS[version](db, pseudonyms)
        set_meta(db, "schema_version", str(version + 1))
