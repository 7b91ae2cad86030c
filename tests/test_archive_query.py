"""A report typed at a workstation, searched in the archive, ranks as `medhash search` does locally:
the library's trained model encodes the query (its checkpoint is the published one), the archive
ranks (real PostgreSQL + pgvector, tests/archive_server.py; the tiny trained library from conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.archive import connect, init_archive, publish_library
from medhash_app.core.archive.publish import content_key
from medhash_app.core.library import Library
from tests.archive_server import fresh_archive_url

REPORT = "Small left pleural effusion. Heart size normal."


def test_text_query_in_the_archive_ranks_like_the_local_search(tiny_library: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDHASH_NO_SERVE", "1")  # the local search runs in this process, no resident server
    url = fresh_archive_url()
    with connect(url, autocommit=True) as conn:
        init_archive(conn)
    with Library.open(tiny_library, read_only=True) as lib:
        publish_library(lib, url, batch=50)
    with psycopg.connect(url) as conn:
        salt = conn.execute("SELECT value FROM medhash.archive_secret").fetchone()[0]
        by_key = dict(conn.execute("SELECT content_key, id FROM medhash.cases").fetchall())
    args = ["--library", str(tiny_library), "--text", REPORT, "-k", "15", "--domain", "chest", "--device", "cpu",
            "--json"]
    local = CliRunner().invoke(app, ["search", *args])
    remote = CliRunner().invoke(app, ["archive", "search", "--archive", url, *args])
    assert local.exit_code == 0 and remote.exit_code == 0, (local.output, remote.output)
    want = [(by_key[content_key(salt, h["case_id"])], h["distance"]) for h in json.loads(local.stdout)["hits"]]
    got = json.loads(remote.stdout)
    assert got["query_kind"] == "text" and got["answered_by"] == "server"
    assert [(h["case_id"], h["distance"]) for h in got["hits"]] == want and len(want) == 15
