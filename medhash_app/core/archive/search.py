"""Hamming search in the archive, ranked exactly like the local FAISS index.

Exact (the default): `ORDER BY code <~> q, case_id LIMIT k` over one model's partition, with the
filters as SQL on the cases; the archive's `cases.id` plays the part of the library's `seq` (ties go
to the smaller id), so the ranked ids equal FAISS IndexBinaryFlat over the same codes in id order
(tests/test_archive_search.py). Approximate: the HNSW index of that (modality, bits) (`ORDER BY
code::bit(K) <~> q`, `hnsw.ef_search`), re-sorted by (distance, id); it may miss items, and
`measure_recall` says how many against the exact answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from medhash_app.core.archive.mirror import ArchiveMirror
from medhash_app.core.archive.publish import bit_string
from medhash_app.core.library.filters import CaseFilter, fts_query

CASE_COLUMNS = ("id", "case_key", "patient_key", "report", "labels", "label_source", "domain", "modality",
                "view", "laterality", "body_part", "sex", "age", "study_date", "split")


@dataclass(frozen=True)
class ArchiveHit:
    rank: int
    case_id: int  # the archive's stable case id
    distance: int
    matched: str  # which of the case's codes matched: image or text
    case: dict[str, Any]


def _values(value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else list(value or [])
    return [str(v) for v in values if v]


def filter_sql(flt: CaseFilter | None) -> tuple[sql.Composable, list[Any]]:
    """WHERE conditions over `c` (medhash.cases), the archive's form of library/filters.py.

    Dates are the archive's shifted dates; `keyword` needs every word in the report (PostgreSQL's
    'simple' text search: the same whole-word, case-insensitive match as the library's FTS5 words)."""
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    if flt is None:
        return sql.SQL("TRUE"), params
    for column in ("modality", "view", "domain", "split"):
        if values := _values(getattr(flt, column)):
            clauses.append(sql.SQL("c.{} = ANY(%s)").format(sql.Identifier(column)))
            params.append(values)
    if labels := _values(flt.labels):
        clauses.append(sql.SQL("c.labels && %s::text[]"))
        params.append(labels)
    if flt.date_from:
        clauses.append(sql.SQL("c.study_date >= %s::date"))
        params.append(str(flt.date_from))
    if flt.date_to:
        clauses.append(sql.SQL("c.study_date <= %s::date"))
        params.append(str(flt.date_to))
    words = " ".join(t.strip('"').replace('""', '"') for t in fts_query(flt.keyword or "").split())
    if words:
        clauses.append(sql.SQL("to_tsvector('simple', coalesce(c.report, '')) @@ plainto_tsquery('simple', %s)"))
        params.append(words)
    return (sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("TRUE")), params


class ArchiveSearch:
    """Ranks archive cases for packed query codes of one archive model; with a `mirror`, unfiltered
    exact searches are answered locally while it is current (core/archive/mirror.py). `last_answer`
    says who answered the last ranking: "mirror", or "server" with the reason the mirror did not."""

    def __init__(self, conn: psycopg.Connection, mirror: ArchiveMirror | None = None) -> None:
        self.conn = conn
        self.mirror = mirror
        self.last_answer = ""

    def rank(self, model_id: int, modality: str, bits: int, query: np.ndarray, k: int,
             filters: CaseFilter | None = None, *, approximate: bool = False,
             ef_search: int = 200) -> list[tuple[int, int]]:
        """[(case id, distance)] best first: ascending distance, then case id."""
        if self.mirror is not None and not approximate and not _has_filter(filters):
            found = self.mirror.search(model_id, modality, bits, query, k)
            self.last_answer = "mirror" if found is not None else "server (mirror stale or absent)"
            if found is not None:
                return found
        else:
            self.last_answer = "server" if self.mirror is None else "server (filters or approximate)"
        q = _query_bits(query, bits)
        if modality not in ("image", "text"):
            raise ValueError(f"modality must be image or text, not {modality!r}")
        where, params = filter_sql(filters)
        join = sql.SQL("JOIN medhash.cases c ON c.id = k.case_id") if params else sql.SQL("")
        if approximate:
            order = sql.SQL("(k.code::bit({b})) <~> %s::bit({b})").format(b=sql.Literal(int(bits)))
        else:
            order = sql.SQL("k.code <~> %s::varbit")
        # model, modality and bits are literals, not parameters: a cached generic plan could then neither
        # prune to the model's partition at plan time nor prove the HNSW index's partial predicate
        query_sql = sql.SQL(
            "SELECT k.case_id, (k.code <~> %s::varbit)::integer FROM medhash.codes k {join} "
            "WHERE k.model_id = {model} AND k.modality = {modality} AND k.bits = {bits} AND {where} "
            "ORDER BY {order}{tie} LIMIT %s").format(
                join=join, where=where, order=order, tie=sql.SQL("") if approximate else sql.SQL(", k.case_id"),
                model=sql.Literal(int(model_id)), modality=sql.Literal(modality), bits=sql.Literal(int(bits)))
        args = [q, *params, q, int(k)]
        with self.conn.transaction():
            if approximate:
                approximate_settings(self.conn, ef_search)
            rows = self.conn.execute(query_sql, args).fetchall()
        found = [(int(r[0]), int(r[1])) for r in rows]
        return sorted(found, key=lambda r: (r[1], r[0])) if approximate else found

    def search(self, model_id: int, targets: Sequence[str], bits: int, query: np.ndarray, k: int,
               filters: CaseFilter | None = None, *, query_kind: str | None = None, approximate: bool = False,
               ef_search: int = 200) -> list[ArchiveHit]:
        """Top-k cases over one or both modalities' codes, merged like the local search: by distance,
        cross-modal matches first on a tie, then case id; each case once, with its better match."""
        entries = []
        answers = set()
        for modality in targets:
            cross = 0 if modality != query_kind else 1
            for case_id, dist in self.rank(model_id, modality, bits, query, k, filters, approximate=approximate,
                                           ef_search=ef_search):
                entries.append((dist, cross, case_id, modality))
            answers.add(self.last_answer)
        self.last_answer = " + ".join(sorted(answers))
        entries.sort()
        seen: set[int] = set()
        picked = []
        for dist, _, case_id, modality in entries:
            if case_id not in seen:
                seen.add(case_id)
                picked.append((case_id, dist, modality))
        picked = picked[:k]
        cases = self.cases([p[0] for p in picked])
        return [ArchiveHit(i, cid, dist, modality, cases.get(cid, {}))
                for i, (cid, dist, modality) in enumerate(picked, start=1)]

    def cases(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in CASE_COLUMNS)
        cur = self.conn.execute(sql.SQL("SELECT {} FROM medhash.cases WHERE id = ANY(%s)").format(cols), [list(ids)])
        return {int(row[0]): {**dict(zip(CASE_COLUMNS, row, strict=True)),
                              "study_date": None if row[13] is None else row[13].isoformat()} for row in cur}

    def code_sets(self, model_id: int) -> list[tuple[str, int, int]]:
        """(modality, bits, version) of a model's published code sets."""
        return [(m, int(b), int(v)) for m, b, v in self.conn.execute(
            "SELECT modality, bits, version FROM medhash.code_versions WHERE model_id = %s ORDER BY 1, 2",
            [model_id])]


def approximate_settings(conn: psycopg.Connection, ef_search: int) -> None:
    """For the current transaction: HNSW with this ef_search, iterative scans (filters still fill k),
    and no plan that scans and sorts: approximate means the HNSW index. Without this the planner
    chose a scan of the primary key plus a sort at 100 k codes (benchmarks/results/archive.md)."""
    conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(int(ef_search))))
    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
    conn.execute("SET LOCAL enable_seqscan = off")
    conn.execute("SET LOCAL enable_sort = off")


def _has_filter(flt: CaseFilter | None) -> bool:
    return flt is not None and filter_sql(flt)[1] != []


def _query_bits(query: np.ndarray, bits: int) -> str:
    packed = np.ascontiguousarray(query, dtype=np.uint8).reshape(-1)
    if packed.size * 8 != bits:
        raise ValueError(f"a {bits}-bit query needs {bits // 8} bytes, got {packed.size}")
    return bit_string(packed)


def tie_aware_recall(exact: Sequence[tuple[int, int]], approx: Sequence[tuple[int, int]]) -> float:
    """Share of the exact top-k that the approximate answer matches in distance: a hit closer than the
    exact k-th distance counts, and at the k-th distance as many as the exact answer has there (which
    of several tied cases comes back is arbitrary for HNSW, so counting ids would blame it for ties)."""
    if not exact:
        return 1.0
    kth = exact[-1][1]
    closer = sum(d < kth for _, d in approx)
    at_kth = min(sum(d == kth for _, d in approx), sum(d == kth for _, d in exact))
    return (closer + at_kth) / len(exact)


def measure_recall(search: ArchiveSearch, model_id: int, modality: str, bits: int, queries: np.ndarray, k: int,
                   ef_search: int) -> float:
    """Mean tie-aware recall@k of the HNSW answer against the exact one."""
    shares = [tie_aware_recall(search.rank(model_id, modality, bits, q, k),
                               search.rank(model_id, modality, bits, q, k, approximate=True, ef_search=ef_search))
              for q in queries]
    return float(np.mean(shares)) if shares else float("nan")


def record_recall(conn: psycopg.Connection, model_id: int, modality: str, bits: int, *, k: int = 10,
                  ef_values: Sequence[int] = (40, 100, 200, 400, 800), queries: int = 100,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Measure recall@k of the HNSW index for each ef_search with queries drawn from the archive's
    codes of the other modality (what a cross-modal search sends), and store it for later searches."""
    other = "text" if modality == "image" else "image"
    sample = conn.execute("SELECT code::text FROM medhash.codes WHERE model_id = %s AND modality = %s AND bits = %s "
                          "ORDER BY md5(case_id::text || %s) LIMIT %s", [model_id, other, bits, str(seed), queries])
    codes = [np.packbits(np.frombuffer(r[0].encode(), np.uint8) == ord("1")) for r in sample.fetchall()]
    if not codes:
        return []
    total = conn.execute("SELECT count(*) FROM medhash.codes WHERE model_id = %s AND modality = %s AND bits = %s",
                         [model_id, modality, bits]).fetchone()[0]
    search = ArchiveSearch(conn)
    out = []
    for ef in ef_values:
        recall = measure_recall(search, model_id, modality, bits, np.stack(codes), k, ef)
        conn.execute("INSERT INTO medhash.hnsw_recall (model_id, modality, bits, ef_search, k, recall, queries, codes) "
                     "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (model_id, modality, bits, ef_search, k) "
                     "DO UPDATE SET recall = excluded.recall, queries = excluded.queries, codes = excluded.codes, "
                     "measured_at = now()", [model_id, modality, bits, int(ef), k, recall, len(codes), total])
        out.append({"ef_search": int(ef), "k": k, "recall": round(recall, 4), "queries": len(codes), "codes": total})
    return out


def stored_recall(conn: psycopg.Connection, model_id: int, modality: str, bits: int, ef_search: int
                  ) -> dict[str, Any] | None:
    """The recall measured for this ef_search (or the nearest smaller one measured), or None."""
    row = conn.execute("SELECT ef_search, k, recall, queries, codes, measured_at FROM medhash.hnsw_recall "
                       "WHERE model_id = %s AND modality = %s AND bits = %s AND ef_search <= %s "
                       "ORDER BY ef_search DESC, k LIMIT 1", [model_id, modality, bits, ef_search]).fetchone()
    if row is None:
        return None
    return {"ef_search": row[0], "k": row[1], "recall": round(float(row[2]), 4), "queries": row[3], "codes": row[4],
            "measured_at": row[5].isoformat(timespec="seconds")}
