"""Exact archive search ranks exactly like the library's local FAISS search, ties and filters included
(real PostgreSQL + pgvector from tests/archive_server.py, real SQLite + FAISS on the library side)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import faiss
import numpy as np
import psycopg
import pytest
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.archive import ArchiveSearch, connect, init_archive, publish_library
from medhash_app.core.archive.publish import content_key, date_shift_days
from medhash_app.core.library import CaseFilter, Library
from medhash_app.core.search.service import EncoderPool, SearchService
from tests.archive_server import fresh_archive_url, make_library

N, K = 400, 30


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[int, str], int]:
    """A library of N cases with tied codes, published; (library, archive URL, archive id -> library id, shift)."""
    folder = tmp_path_factory.mktemp("archive-search") / "lib"
    url = fresh_archive_url()
    with connect(url, autocommit=True) as conn:
        init_archive(conn)
    with make_library(folder, N) as lib:
        publish_library(lib, url, batch=150)
        by_key = {}
        with psycopg.connect(url) as conn:
            salt = conn.execute("SELECT value FROM medhash.archive_secret").fetchone()[0]
            archive_ids = dict(conn.execute("SELECT content_key, id FROM medhash.cases").fetchall())
        for case_id in lib.case_ids():
            by_key[archive_ids[content_key(salt, case_id)]] = case_id
        days = date_shift_days(lib, salt)
    return folder, url, by_key, days


FILTERS = [None, CaseFilter(labels=["effusion", "edema"]), CaseFilter(modality=["CR", "OP"], view="PA"),
           CaseFilter(keyword="pleural effusion"), CaseFilter(domain="fundus", labels=["glaucoma"]),
           CaseFilter(date_from="2012-01-01", date_to="2016-12-31")]


def _shifted(flt: CaseFilter | None, days: int) -> CaseFilter | None:
    """The same filter on the archive's shifted dates."""
    if flt is None or not (flt.date_from or flt.date_to):
        return flt
    move = [str(dt.date.fromisoformat(str(d)) + dt.timedelta(days=days)) for d in (flt.date_from, flt.date_to)]
    return CaseFilter(date_from=move[0], date_to=move[1])


@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("flt", FILTERS, ids=["none", "labels", "modality-view", "keyword", "domain-labels", "dates"])
def test_exact_archive_search_equals_local_faiss(published, bits: int, flt: CaseFilter | None) -> None:
    folder, url, by_key, days = published
    rng = np.random.default_rng(bits)
    with Library.open(folder) as lib, connect(url, autocommit=True) as conn:
        local = SearchService(lib, EncoderPool(device="cpu"))
        archive = ArchiveSearch(conn)
        model = lib.active_model()["id"]
        ties = 0
        for modality in ("image", "text"):
            for q in rng.integers(0, 256, (6, bits // 8), dtype=np.uint8):
                want = local._rank(model, modality, bits, q, K, flt)
                got = archive.rank(1, modality, bits, q, K, _shifted(flt, days))
                assert [by_key[cid] for cid, _ in got] == list(want.case_ids)
                assert [d for _, d in got] == [int(d) for d in want.distances]
                ties += len(got) - len({d for _, d in got})
                assert len(got) >= 5  # every filter keeps some cases: an empty answer proves nothing
    assert ties > 50  # the rule under test is the tie order: the data must be full of ties


def test_archive_order_is_faiss_flat_over_its_own_codes(published) -> None:
    """Independent of the library: FAISS IndexBinaryFlat over the archive's codes in id order."""
    _, url, _, _ = published
    with connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT case_id, code::text FROM medhash.codes WHERE modality = 'image' AND bits = 32 "
                            "ORDER BY case_id").fetchall()
        ids = np.array([r[0] for r in rows])
        codes = np.packbits(np.array([[c == "1" for c in r[1]] for r in rows]), axis=1)
        index = faiss.IndexBinaryFlat(32)
        index.add(codes)
        for q in np.random.default_rng(5).integers(0, 256, (10, 4), dtype=np.uint8):
            dist, rows_k = index.search(q[None, :], K)
            got = ArchiveSearch(conn).rank(1, "image", 32, q, K)
            assert [cid for cid, _ in got] == list(ids[rows_k[0]]) and [d for _, d in got] == list(dist[0])


def test_cli_search_with_a_code_and_filters(published) -> None:
    folder, url, by_key, _ = published
    with Library.open(folder) as lib:
        model = lib.active_model()["id"]
        _, codes = lib.get_codes(model, "image", 32)
        want = SearchService(lib, EncoderPool(device="cpu"))._rank(model, "text", 32, codes[0], 5,
                                                                    CaseFilter(labels=["normal"]))
    result = CliRunner().invoke(app, ["archive", "search", "--library", str(folder), "--archive", url,
                                      "--code", codes[0].tobytes().hex(), "--code-kind", "image", "-k", "5",
                                      "--label", "normal", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["answered_by"] == "server" and payload["mode"] == "exact"
    assert [by_key[h["case_id"]] for h in payload["hits"]] == list(want.case_ids)
    assert all("normal" in h["labels"] for h in payload["hits"])


def test_cli_refuses_a_password_and_an_unreachable_archive_in_one_line(published, tmp_path: Path) -> None:
    folder = published[0]
    for target, why in [("postgresql://u:secret@localhost/x", "pgpass"),
                        (f"postgresql://postgres@/nodb?host={tmp_path}", "cannot connect")]:
        result = CliRunner().invoke(app, ["archive", "search", "--library", str(folder), "--archive", target,
                                          "--code", "00ff00ff"])
        assert result.exit_code == 2 and why in result.output and "secret" not in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
