"""The reader and writer roles made by `medhash archive init --roles`: a reading workstation searches but
cannot publish or read the salt; a writer publishes (real PostgreSQL from tests/archive_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from typer.testing import CliRunner

from medhash_app.cli import app
from tests.archive_server import fresh_archive_url, make_library


def _login_role(url: str, name: str, group: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE {group}")
    return url.replace("postgresql://postgres@", f"postgresql://{name}@")


def test_reader_searches_but_cannot_publish_writer_publishes(tmp_path: Path) -> None:
    url = fresh_archive_url()
    runner = CliRunner()
    init = runner.invoke(app, ["archive", "init", url, "--roles", "--json"])
    assert init.exit_code == 0, init.output
    assert json.loads(init.stdout)["roles"] == ["medhash_reader", "medhash_writer"]
    suffix = url.rsplit("_", 1)[-1].split("?")[0]
    reader = _login_role(url, f"ward_{suffix}", "medhash_reader")
    writer = _login_role(url, f"pub_{suffix}", "medhash_writer")
    make_library(tmp_path / "lib", 50).close()
    refused = runner.invoke(app, ["archive", "publish", "--library", str(tmp_path / "lib"), "--archive", reader])
    assert refused.exit_code == 2 and "may not publish" in refused.output, refused.output
    done = runner.invoke(app, ["archive", "publish", "--library", str(tmp_path / "lib"), "--archive", writer,
                               "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["cases_added"] == 50
    found = runner.invoke(app, ["archive", "search", "--library", str(tmp_path / "lib"), "--archive", reader,
                                "--code", "00ff", "--bits", "16", "-k", "3", "--json"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.stdout)["hits"]) == 3
    with psycopg.connect(reader) as conn:
        try:
            conn.execute("DELETE FROM medhash.cases")
            deleted = True
        except psycopg.errors.InsufficientPrivilege:
            deleted = False
    assert not deleted
