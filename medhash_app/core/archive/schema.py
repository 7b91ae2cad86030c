"""The archive's tables, in their own PostgreSQL schema `medhash`, created or migrated by
`medhash archive init` (docs/archive.md has the same list with the reasons).

- cases: what the de-identified export produces (core/export.py `deidentified_case`) plus a thumbnail,
  keyed by `content_key` = SHA-256(archive salt + the library's content hash): the same image published
  from two workstations is one case, and nobody without the archive's salt can match a file to it.
  `id` (an identity, handed out in publishing order) is the stable id that breaks Hamming ties.
- models: a checkpoint's config with the SHA-256 of its weights (`fingerprint` names config + weights),
  the weights themselves only when asked (`weights` bytea) or a pointer (`weights_uri`).
- codes: one row per (model, modality, bits, case), `code bit varying` checked to be `bits` long, LIST-
  partitioned by model (one partition per model, made by `add_model_partition`), so a model's scan
  reads only its own codes; an HNSW index (bit_hamming_ops) is a partial index per (modality, bits)
  on that partition over `code::bit(K)`.
- code_versions: a counter per (model, modality, bits) bumped by every publish that adds codes; a
  workstation's FAISS mirror is current while its counter equals this one.
- hnsw_recall: recall@k of the HNSW index per ef_search, measured against the exact answer when
  the index is built (`medhash archive index`) and shown with every approximate search.
- archive_meta: schema version and a random archive id that names local mirrors (readable by all
  roles); archive_secret: the salt (writers only).
"""

from __future__ import annotations

import secrets

import psycopg
from psycopg import sql

from medhash_app.core.archive.connection import ArchiveError

SCHEMA = "medhash"
SCHEMA_VERSION = 1
READER_ROLE = "medhash_reader"
WRITER_ROLE = "medhash_writer"
_LOCK = 0x6D656468  # advisory lock key for init and partition creation ("medh")

_TABLES = """
CREATE SCHEMA IF NOT EXISTS medhash;
CREATE TABLE IF NOT EXISTS medhash.archive_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS medhash.archive_secret (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS medhash.cases (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    content_key text NOT NULL UNIQUE,
    case_key text NOT NULL UNIQUE,
    patient_key text, study_uid text, instance_uid text,
    report text, labels text[] NOT NULL DEFAULT '{}', label_source text, domain text,
    modality text, view text, laterality text, body_part text, sex text, age integer,
    study_date date, split text, extra jsonb NOT NULL DEFAULT '{}', thumbnail bytea,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cases_labels ON medhash.cases USING gin (labels);
CREATE INDEX IF NOT EXISTS cases_modality ON medhash.cases (modality);
CREATE INDEX IF NOT EXISTS cases_domain ON medhash.cases (domain);
CREATE INDEX IF NOT EXISTS cases_study_date ON medhash.cases (study_date);
CREATE INDEX IF NOT EXISTS cases_report_words ON medhash.cases
    USING gin (to_tsvector('simple', coalesce(report, '')));
CREATE TABLE IF NOT EXISTS medhash.models (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint text NOT NULL UNIQUE,
    name text NOT NULL, method text NOT NULL, bits integer[] NOT NULL, config jsonb NOT NULL,
    weights_sha256 text, weights bytea, weights_uri text,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS medhash.codes (
    model_id bigint NOT NULL REFERENCES medhash.models (id),
    modality text NOT NULL CHECK (modality IN ('image', 'text')),
    bits integer NOT NULL CHECK (bits > 0 AND bits % 8 = 0),
    case_id bigint NOT NULL REFERENCES medhash.cases (id),
    code bit varying NOT NULL CHECK (bit_length(code) = bits),
    PRIMARY KEY (model_id, modality, bits, case_id)
) PARTITION BY LIST (model_id);
CREATE TABLE IF NOT EXISTS medhash.code_versions (
    model_id bigint NOT NULL, modality text NOT NULL, bits integer NOT NULL,
    version bigint NOT NULL DEFAULT 0, PRIMARY KEY (model_id, modality, bits)
);
CREATE TABLE IF NOT EXISTS medhash.hnsw_recall (
    model_id bigint NOT NULL, modality text NOT NULL, bits integer NOT NULL, ef_search integer NOT NULL,
    k integer NOT NULL, recall double precision NOT NULL, queries integer NOT NULL, codes bigint NOT NULL,
    measured_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (model_id, modality, bits, ef_search, k)
);
-- Writers may add a model's partition without owning the codes table (CREATE ... PARTITION OF needs
-- the owner): this function runs as the owner and takes only a model id that exists.
CREATE OR REPLACE FUNCTION medhash.add_model_partition(model bigint) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1835361384);
    IF NOT EXISTS (SELECT 1 FROM medhash.models WHERE id = model) THEN
        RAISE EXCEPTION 'no model %', model;
    END IF;
    EXECUTE format('CREATE TABLE IF NOT EXISTS medhash.%I PARTITION OF medhash.codes FOR VALUES IN (%s)',
                   'codes_m' || model, model);
END $$;
REVOKE ALL ON FUNCTION medhash.add_model_partition(bigint) FROM PUBLIC;
"""

_GRANTS = """
GRANT USAGE ON SCHEMA medhash TO {reader}, {writer};
GRANT SELECT ON medhash.archive_meta, medhash.cases, medhash.models, medhash.codes, medhash.code_versions,
    medhash.hnsw_recall TO {reader}, {writer};
GRANT SELECT ON medhash.archive_secret TO {writer};
GRANT INSERT ON medhash.cases, medhash.models, medhash.codes, medhash.code_versions TO {writer};
GRANT UPDATE ON medhash.code_versions TO {writer};
GRANT INSERT, UPDATE ON medhash.hnsw_recall TO {writer};
GRANT UPDATE (weights) ON medhash.models TO {writer};
GRANT EXECUTE ON FUNCTION medhash.add_model_partition(bigint) TO {writer};
"""


def init_archive(conn: psycopg.Connection, *, roles: bool = False) -> dict[str, object]:
    """Create (or migrate) the archive in the connected database, all in one transaction; with
    `roles`, also the NOLOGIN group roles medhash_reader / medhash_writer and their grants."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        _require_pgvector(conn)
        found = stored_version(conn)
        if found is not None and found > SCHEMA_VERSION:
            raise ArchiveError("archive", f"was made by a newer MedHash (schema {found}, this one knows "
                               f"{SCHEMA_VERSION}); update MedHash")
        conn.execute(_TABLES)
        conn.execute("INSERT INTO medhash.archive_secret VALUES ('salt', %s) ON CONFLICT DO NOTHING",
                     [secrets.token_hex(32)])
        conn.execute("INSERT INTO medhash.archive_meta VALUES ('archive_id', gen_random_uuid()::text) "
                     "ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO medhash.archive_meta VALUES ('schema_version', %s) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", [str(SCHEMA_VERSION)])
        if roles:
            _make_roles(conn)
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": found is None,
            "pgvector": vector_version(conn), "roles": [READER_ROLE, WRITER_ROLE] if roles else []}


def _require_pgvector(conn: psycopg.Connection) -> None:
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as exc:
        raise ArchiveError("archive", "the pgvector extension is not installed on this server or this user may "
                           f"not create it ({type(exc).__name__}); see docs/archive.md") from None
    version = vector_version(conn) or "0"
    if tuple(int(p) for p in version.split(".")[:2]) < (0, 7):
        raise ArchiveError("archive", f"pgvector {version} is too old: Hamming search on bit columns needs 0.7 or "
                           "newer (ALTER EXTENSION vector UPDATE)")


def vector_version(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return row[0] if row else None


def stored_version(conn: psycopg.Connection) -> int | None:
    """The archive's schema version, or None when the database holds no archive yet."""
    if conn.execute("SELECT to_regclass('medhash.archive_meta')").fetchone()[0] is None:
        return None
    row = conn.execute("SELECT value FROM medhash.archive_meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def require_archive(conn: psycopg.Connection, where: str) -> None:
    """Refuse a database without a current archive, in one line."""
    try:
        found = stored_version(conn)
    except psycopg.Error as exc:
        raise ArchiveError(where, f"cannot read the archive ({type(exc).__name__})") from None
    if found is None:
        raise ArchiveError(where, "holds no MedHash archive; create it with `medhash archive init`")
    if found != SCHEMA_VERSION:
        raise ArchiveError(where, f"archive schema {found}, this MedHash needs {SCHEMA_VERSION}; run "
                           "`medhash archive init` with a writer account" if found < SCHEMA_VERSION else
                           f"archive schema {found} is newer than this MedHash ({SCHEMA_VERSION}); update MedHash")


def _make_roles(conn: psycopg.Connection) -> None:
    for role in (READER_ROLE, WRITER_ROLE):
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL(_GRANTS).format(reader=sql.Identifier(READER_ROLE), writer=sql.Identifier(WRITER_ROLE)))


def lock_models(conn: psycopg.Connection) -> None:
    """Serialise model registration for this transaction (the lock add_model_partition takes too).
    Taken before inserting the model: otherwise a second publisher waiting on the new model's unique
    key and the first one's partition (whose foreign key locks `models`) deadlock."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])


def add_model_partition(conn: psycopg.Connection, model_id: int) -> None:
    conn.execute("SELECT medhash.add_model_partition(%s)", [model_id])


def hnsw_index_name(model_id: int, modality: str, bits: int) -> str:
    return f"codes_m{int(model_id)}_{modality}_{int(bits)}_hnsw"


def create_hnsw_index(conn: psycopg.Connection, model_id: int, modality: str, bits: int, *,
                      m: int = 16, ef_construction: int = 64) -> str:
    """A partial HNSW index (bit_hamming_ops) over one (modality, bits) of a model's partition."""
    if modality not in ("image", "text") or bits <= 0 or bits % 8:
        raise ArchiveError("index", f"no such code set: {modality} {bits} bits")
    name = hnsw_index_name(model_id, modality, bits)
    if conn.execute("SELECT to_regclass(%s)", [f"medhash.codes_m{int(model_id)}"]).fetchone()[0] is None:
        raise ArchiveError(f"model {int(model_id)}", "no such model in this archive (see `medhash archive status`)")
    conn.execute(sql.SQL(
        "CREATE INDEX IF NOT EXISTS {name} ON medhash.{part} USING hnsw ((code::bit({bits})) bit_hamming_ops) "
        "WITH (m = {m}, ef_construction = {ef}) WHERE modality = {modality} AND bits = {bits}").format(
            name=sql.Identifier(name), part=sql.Identifier(f"codes_m{int(model_id)}"),
            bits=sql.Literal(int(bits)), m=sql.Literal(int(m)), ef=sql.Literal(int(ef_construction)),
            modality=sql.Literal(modality)))
    return name
