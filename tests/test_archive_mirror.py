"""The workstation's FAISS mirror of the archive's codes and the HNSW mode (real PostgreSQL + pgvector):
the mirror answers only while its version counter is current, with the server's exact ranking; a
publish makes it stale (the server answers, and says why) until `archive mirror` refreshes it; HNSW
recall is measured against the exact answer and shown with approximate searches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.archive import ArchiveSearch, connect, init_archive, publish_library
from medhash_app.core.archive.mirror import ArchiveMirror
from medhash_app.core.archive.schema import create_hnsw_index, hnsw_index_name
from medhash_app.core.archive.search import tie_aware_recall
from tests.archive_server import fresh_archive_url, make_checkpoint, make_library


def _search(lib: Path, url: str, mirror: Path, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["archive", "search", "--library", str(lib), "--archive", url, "--mirror",
                                      str(mirror), "--code", "a5f0", "--bits", "16", "-k", "40", "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_mirror_answers_while_current_and_the_server_when_stale(tmp_path: Path) -> None:
    url = fresh_archive_url()
    with connect(url, autocommit=True) as conn:
        init_archive(conn)
    ckpt = make_checkpoint(tmp_path / "ckpt", [16, 32])
    with make_library(tmp_path / "a", 300, checkpoint=ckpt) as lib:
        publish_library(lib, url, batch=100)
    mirror = tmp_path / "mirror"
    before = _search(tmp_path / "a", url, mirror)
    assert before["answered_by"] == "server (mirror stale or absent)"
    assert CliRunner().invoke(app, ["archive", "mirror", "--archive", url, "--folder", str(mirror)]).exit_code == 0
    mirrored = _search(tmp_path / "a", url, mirror)
    assert mirrored["answered_by"] == "mirror" and mirrored["hits"] == before["hits"]  # same ranking, ties included
    filtered = _search(tmp_path / "a", url, mirror, "--label", "edema")
    assert filtered["answered_by"] == "server (filters or approximate)"
    with make_library(tmp_path / "b", 200, start=300, checkpoint=ckpt) as lib:
        publish_library(lib, url, batch=100)  # the archive changes: the mirror is stale
    stale = _search(tmp_path / "a", url, mirror)
    assert stale["answered_by"] == "server (mirror stale or absent)"
    assert CliRunner().invoke(app, ["archive", "mirror", "--archive", url, "--folder", str(mirror)]).exit_code == 0
    fresh = _search(tmp_path / "a", url, mirror)
    assert fresh["answered_by"] == "mirror" and fresh["hits"] == stale["hits"] != before["hits"]
    with connect(url, autocommit=True) as conn:  # the mirror's ranking is the server's for many queries
        server, local = ArchiveSearch(conn), ArchiveSearch(conn, ArchiveMirror(mirror, conn))
        for q in np.random.default_rng(3).integers(0, 256, (20, 4), dtype=np.uint8):
            assert local.rank(1, "image", 32, q, 25) == server.rank(1, "image", 32, q, 25)
            assert local.last_answer == "mirror"


def test_hnsw_recall_is_measured_and_shown(tmp_path: Path) -> None:
    url = fresh_archive_url()
    with connect(url, autocommit=True) as conn:
        init_archive(conn)
    with make_library(tmp_path / "lib", 400, distinct=400) as lib:
        publish_library(lib, url, batch=200)
    built = CliRunner().invoke(app, ["archive", "index", "--archive", url, "--model", "1", "--bits", "32",
                                     "--modality", "text", "--queries", "20", "--json"])
    assert built.exit_code == 0, built.output
    recall = json.loads(built.stdout)["recall"]
    assert [r["ef_search"] for r in recall] == [40, 100, 200, 400, 800]
    assert all(0.0 < r["recall"] <= 1.0 and r["queries"] == 20 and r["codes"] == 400 for r in recall)
    found = CliRunner().invoke(app, ["archive", "search", "--library", str(tmp_path / "lib"), "--archive", url,
                                     "--code", "0f0f0f0f", "--code-kind", "image", "--bits", "32", "--approximate",
                                     "--ef-search", "250", "-k", "10", "--json"])
    assert found.exit_code == 0, found.output
    payload = json.loads(found.stdout)
    assert payload["mode"] == "hnsw" and len(payload["hits"]) == 10
    assert payload["recall"]["text"]["ef_search"] == 200  # the nearest measured ef at or below the one asked
    distances = [h["distance"] for h in payload["hits"]]
    assert distances == sorted(distances)


def test_approximate_searches_use_the_hnsw_index_every_time(tmp_path: Path) -> None:
    """Also after psycopg prepares the statement (5th use): a cached generic plan must still see the
    partial index (model, modality and bits are literals in the SQL). Counted by pg_stat idx_scan."""
    url = fresh_archive_url()
    with connect(url, autocommit=True) as conn:
        init_archive(conn)
    with make_library(tmp_path / "lib", 300, distinct=300) as lib:
        publish_library(lib, url, batch=300)
    with connect(url, autocommit=True) as conn:
        create_hnsw_index(conn, 1, "image", 32)
        search = ArchiveSearch(conn)
        for q in np.random.default_rng(1).integers(0, 256, (12, 4), dtype=np.uint8):
            got = search.rank(1, "image", 32, q, 10, approximate=True, ef_search=40)
            assert len(got) == 10 and tie_aware_recall(search.rank(1, "image", 32, q, 10), got) > 0
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
    with connect(url, autocommit=True) as conn:
        scans = conn.execute("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = %s",
                             [hnsw_index_name(1, "image", 32)]).fetchone()[0]
    assert scans == 12


def test_tie_aware_recall_counts_distances_not_which_tied_case() -> None:
    exact = [(1, 3), (2, 4), (3, 5), (4, 5)]
    assert tie_aware_recall(exact, [(1, 3), (2, 4), (9, 5), (8, 5)]) == 1.0  # other cases at the 4th distance
    assert tie_aware_recall(exact, [(1, 3), (2, 4), (9, 5), (8, 6)]) == 0.75
    assert tie_aware_recall(exact, [(7, 6), (2, 4), (9, 6), (8, 6)]) == 0.25


def test_indexing_a_model_the_archive_lacks_is_one_line(tmp_path: Path) -> None:
    url = fresh_archive_url()
    with connect(url, autocommit=True) as conn:
        init_archive(conn)
    result = CliRunner().invoke(app, ["archive", "index", "--archive", url, "--model", "7", "--bits", "32"])
    assert result.exit_code == 2 and "model 7: no such model in this archive" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
