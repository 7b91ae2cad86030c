"""Publishing a library to the archive against a real PostgreSQL + pgvector (tests/archive_server.py):
de-identified rows, re-publish adds nothing, two publisher processes at once, kill -9 then resume."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from medhash_app.core.archive import ArchiveError, connect, init_archive, publish_library
from medhash_app.core.archive.connection import to_conninfo
from medhash_app.core.archive.publish import content_key, date_shift_days
from medhash_app.core.library import Library
from tests.archive_server import fresh_archive_url, make_checkpoint, make_library


def _archive(url: str) -> str:
    with connect(url, autocommit=True) as conn:
        init_archive(conn, roles=True)
    return url


def _counts(url: str) -> tuple[int, int, int]:
    with psycopg.connect(url) as conn:
        cases, distinct = conn.execute("SELECT count(*), count(DISTINCT content_key) FROM medhash.cases").fetchone()
        codes = conn.execute("SELECT count(*) FROM medhash.codes").fetchone()[0]
    return cases, distinct, codes


def _publish_cli(library: Path, url: str, batch: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medhash_app.cli", "archive", "publish", "--library", str(library),
                             "--archive", url, "--batch", str(batch), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def test_publish_is_deidentified_and_republish_adds_nothing(tmp_path: Path) -> None:
    url = _archive(fresh_archive_url())
    with make_library(tmp_path / "lib", 120, thumbs=3) as lib:
        first = publish_library(lib, url, batch=50)
        again = publish_library(lib, url, batch=50)
        ids = lib.case_ids()
        dates = [c["study_date"] for c in lib.iter_cases()]
    assert (first.cases_added, first.codes_added, first.batches) == (120, 120 * 4, 3)
    assert (again.cases_added, again.codes_added, again.cases_seen) == (0, 0, 120)
    with psycopg.connect(url) as conn:
        salt = conn.execute("SELECT value FROM medhash.archive_secret").fetchone()[0]
        rows = conn.execute("SELECT id, content_key, case_key, patient_key, study_date::text, report "
                            "FROM medhash.cases ORDER BY id").fetchall()
        thumbs = [bytes(r[0]) for r in conn.execute("SELECT thumbnail FROM medhash.cases WHERE thumbnail IS NOT NULL")]
        versions = conn.execute("SELECT modality, bits, version FROM medhash.code_versions ORDER BY 1, 2").fetchall()
    assert [r[1] for r in rows] == [content_key(salt, i) for i in ids]  # library order kept: ties break alike
    text = repr(rows)
    assert not any(i in text for i in ids) and "/data/" not in text  # no content hash, no source path
    with Library.open(tmp_path / "lib") as lib:
        days = date_shift_days(lib, salt)
    assert days != 0 and [r[4] for r in rows] == [str(dt.date.fromisoformat(d) + dt.timedelta(days=days)) for d in dates]
    assert len(thumbs) == 3 and all(t[:2] == b"\xff\xd8" and b"PATIENT NAME" not in t for t in thumbs)
    assert versions == [("image", 16, 3), ("image", 32, 3), ("text", 16, 3), ("text", 32, 3)]  # 3 batches, not 6


def test_a_password_in_the_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="pgpass"):
        to_conninfo("postgresql://writer:secret@db.example/archive")
    with pytest.raises(ArchiveError, match="pgpass"):
        to_conninfo("host=db.example dbname=archive password=secret")
    assert to_conninfo("radiology") == "service=radiology"


def test_two_publishers_at_once_make_no_duplicates_and_lose_nothing(tmp_path: Path) -> None:
    url = _archive(fresh_archive_url())
    ckpt = make_checkpoint(tmp_path / "ckpt", [16, 32])
    make_library(tmp_path / "a", 600, start=0, checkpoint=ckpt).close()
    make_library(tmp_path / "b", 600, start=300, checkpoint=ckpt).close()  # 300 cases in both
    procs = [_publish_cli(tmp_path / name, url, 40) for name in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    assert _counts(url) == (900, 900, 900 * 4)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM medhash.models").fetchone()[0] == 1  # same checkpoint, one model


def test_kill_9_during_publish_leaves_whole_batches_and_a_rerun_adds_the_rest(tmp_path: Path) -> None:
    url = _archive(fresh_archive_url())
    make_library(tmp_path / "lib", 4000).close()
    proc = _publish_cli(tmp_path / "lib", url, 25)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _counts(url)[0] < 100:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cases, _, codes = _counts(url)
    assert 100 <= cases < 4000, "the publisher ended before it could be killed"
    assert cases % 25 == 0 and codes == cases * 4  # whole batches: every case with all its codes
    rerun = _publish_cli(tmp_path / "lib", url, 25)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-500:]
    assert _counts(url) == (4000, 4000, 16000)


def test_init_is_repeatable_and_refuses_a_newer_archive(tmp_path: Path) -> None:
    url = fresh_archive_url()
    with connect(url, autocommit=True) as conn:
        assert init_archive(conn)["created"] is True
        assert init_archive(conn)["created"] is False  # again: nothing changes, nothing fails
        conn.execute("UPDATE medhash.archive_meta SET value = '99' WHERE key = 'schema_version'")
        with pytest.raises(ArchiveError, match="newer MedHash"):
            init_archive(conn)
    with make_library(tmp_path / "lib", 5) as lib, pytest.raises(ArchiveError, match="newer than this MedHash"):
        publish_library(lib, url)
    with make_library(tmp_path / "lib2", 5) as lib, pytest.raises(ArchiveError, match="no MedHash archive"):
        publish_library(lib, fresh_archive_url())
