"""The window searches a shared archive (real PostgreSQL + pgvector, tests/archive_server.py): the rows
shown are the CLI's `medhash archive search` hits (ids, distances, order) for the same typed report
and filter, the source (server, then the workstation's mirror) is shown, and a dead or unsuitable
server is one readable line in the window, never a crash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.archive import connect, init_archive, publish_library
from medhash_app.core.library import Library
from medhash_app.ui.results_model import COL, ThumbRole
from tests.archive_server import fresh_archive_url, server_or_skip

REPORT = "Small left pleural effusion. Heart size normal."


@pytest.fixture
def library_copy(tiny_library: Path, tmp_path: Path) -> Path:
    """The trained tiny library, copied: the window writes caches into the library it opens."""
    return Path(shutil.copytree(tiny_library, tmp_path / "library"))


def _published_archive(library: Path) -> str:
    url = fresh_archive_url()
    with connect(url, autocommit=True) as conn:
        init_archive(conn)
    with Library.open(library, read_only=True) as lib:
        publish_library(lib, url, batch=50)
    return url


def _cli_hits(library: Path, url: str, *extra: str) -> list[tuple[int, int]]:
    result = CliRunner().invoke(app, ["archive", "search", "--library", str(library), "--archive", url, "--text",
                                      REPORT, "-k", "15", "--device", "cpu", "--json", *extra])
    assert result.exit_code == 0, result.output
    return [(h["case_id"], h["distance"]) for h in json.loads(result.stdout)["hits"]]


def _shown(tab) -> list[tuple[int, int]]:
    rows = [tab.model.hit(r) for r in range(tab.model.rowCount())]
    return [(h.case["id"], h.distance) for h in rows]


def _search(qtbot, tab):
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        tab.search()
    return blocker.args[0]


def test_window_shows_the_archive_search_of_the_cli(qtbot, window, open_library, library_copy: Path,
                                                     tmp_path: Path) -> None:
    url = _published_archive(library_copy)
    open_library(window, library_copy)
    tab = window.search_tab
    with qtbot.waitSignal(tab.archive_bar.opened, timeout=30_000) as opened:
        tab.open_archive(url, tmp_path / "mirror")
    assert opened.args[0].cases == 120 and opened.args[0].model_id is not None
    assert tab.archive_bar.isVisible() and "120 cases" in tab.archive_bar.name_label.text()
    tab.query.set_mode("text")
    tab.query.report_edit.setPlainText(REPORT)
    tab.filters.set_target("images")
    tab.filters.k.setValue(15)
    tab.filters.keyword.setText("consolidation")  # a filter: applied in SQL on the server
    tab.filters._debounce.stop()

    _search(qtbot, tab)
    want = _cli_hits(library_copy, url, "--target", "images", "--keyword", "consolidation")
    assert want and _shown(tab) == want
    assert all("consolidation" in tab.model.hit(r).case["report"].lower() for r in range(tab.model.rowCount()))
    filtered = want
    assert "archive server (filtered" in tab.archive_bar.answered_label.text()
    assert "archive, answered by the archive server" in tab.summary.text()
    qtbot.waitUntil(lambda: tab.model.data(tab.model.index(0, COL["image"]), ThumbRole) is not None,
                    timeout=10_000)  # the archive's published thumbnail, read on the loader thread

    tab.filters.keyword.setText("")
    tab.filters._debounce.stop()
    _search(qtbot, tab)
    want = _cli_hits(library_copy, url, "--target", "images")
    assert len(want) == 15 and _shown(tab) == want != filtered
    assert "mirror is stale or absent" in tab.archive_bar.answered_label.text()

    with qtbot.waitSignal(tab.archive_bar.refresh_mirror().finished, timeout=30_000):
        pass
    _search(qtbot, tab)
    assert _shown(tab) == want  # the mirror ranks as the server does, ties included
    assert tab.archive_bar.answered_label.text() == "Answered by this workstation's mirror"
    assert "Answered by this workstation's mirror" not in window.search_time.text()
    assert "answered by this workstation's mirror" in window.search_time.text()

    model_id = opened.args[0].model_id  # HNSW: built and measured by the CLI, then shown and used by the window
    assert "recall not measured" in tab.archive_bar.recall_label.text()
    built = CliRunner().invoke(app, ["archive", "index", "--archive", url, "--model", str(model_id), "--bits", "32",
                                     "--modality", "image", "--queries", "20", "--json"])
    assert built.exit_code == 0, built.output
    measured = {r["ef_search"]: r["recall"] for r in json.loads(built.stdout)["recall"]}
    with qtbot.waitSignal(tab.archive_bar.opened, timeout=30_000):
        tab.open_archive(url, tmp_path / "mirror")
    _search(qtbot, tab)
    assert f"images {measured[200]:.2f} (ef 200, 32 bits)" in tab.archive_bar.recall_label.text()
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000):
        tab.archive_bar.approximate.setChecked(True)  # re-searches, as a filter change does
    assert tab.archive_bar.answered_label.text() == "Answered by the archive server · HNSW"
    assert _shown(tab) == _cli_hits(library_copy, url, "--target", "images", "--approximate", "--ef-search", "200")

    tab.archive_bar.close_button.click()  # back to the local library
    assert not tab.archive_bar.isVisible() and tab.archive_bar.client is None
    local = _search(qtbot, tab)
    assert "archive" not in tab.summary.text() and local.hits


def test_dead_or_unsuitable_archives_are_one_line_in_the_window(qtbot, window, open_library, library_copy: Path,
                                                                 tmp_path: Path) -> None:
    socket = server_or_skip()
    open_library(window, library_copy)
    tab = window.search_tab
    with qtbot.waitSignal(tab.archive_bar.failed, timeout=30_000) as failed:
        tab.open_archive(f"postgresql://postgres@/archive?host={tmp_path / 'no-server-here'}", None)
    text = tab.message.text()
    assert "cannot connect" in text and "Traceback" not in text and not tab.archive_bar.isVisible()
    assert "cannot connect" in window.search_time.text()
    assert type(failed.args[0]).__name__ == "ArchiveError"

    with qtbot.waitSignal(tab.archive_bar.failed, timeout=5_000):
        tab.open_archive("postgresql://ward3:secret@archive.hospital.local/medhash", None)
    assert "pgpass" in tab.message.text() and "secret" not in tab.message.text()
    assert window.settings.last_archive() == ""  # nothing with a password was remembered

    empty = fresh_archive_url()  # an archive this library's model was never published to
    with connect(empty, autocommit=True) as conn:
        init_archive(conn)
    with qtbot.waitSignal(tab.archive_bar.opened, timeout=30_000):
        tab.open_archive(empty, None)
    assert "never published" in tab.message.text()
    tab.query.set_mode("text")
    tab.query.report_edit.setPlainText(REPORT)
    with qtbot.waitSignal(tab.searchFailed, timeout=60_000):
        tab.search()
    assert "never published" in tab.message.text() and tab.model.rowCount() == 0

    url = _published_archive(library_copy)  # the server drops the window's connection mid-session
    with qtbot.waitSignal(tab.archive_bar.opened, timeout=30_000):
        tab.open_archive(url, None)
    _search(qtbot, tab)
    with psycopg.connect(f"postgresql://postgres@/postgres?host={socket}", autocommit=True) as admin:
        killed = admin.execute("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE application_name = 'medhash' AND datname = %s) t",
                               [url.split("/")[3].split("?")[0]]).fetchone()[0]
    assert killed >= 1
    with qtbot.waitSignal(tab.searchFailed, timeout=60_000):
        tab.search()
    assert "stopped answering" in tab.message.text() and "Traceback" not in tab.message.text()
    assert "Archive search failed" in window.search_time.text()
    result = _search(qtbot, tab)  # the next search connects again
    assert result.hits and window.settings.last_archive() == url


def test_without_a_library_the_window_searches_with_the_archives_model(qtbot, window, library_copy: Path,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reading room with no library of its own: the archive's published checkpoint encodes the dropped
    image, and the rows are the CLI's (also without a library) for the same file."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the checkpoint is fetched into it
    url = fresh_archive_url()
    with connect(url, autocommit=True) as conn:
        init_archive(conn)
    with Library.open(library_copy, read_only=True) as lib:
        publish_library(lib, url, batch=50, with_weights=True)
        image = Path(next(c for c in lib.iter_cases() if c["domain"] == "chest")["source_path"])
    tab = window.search_tab
    assert window.state.session is None
    with qtbot.waitSignal(tab.archive_bar.opened, timeout=60_000) as opened:
        tab.open_archive(url, None)
    assert opened.args[0].encoded_by.startswith("archive model ")
    assert "encoded by archive model" in tab.summary.text()
    tab.filters.k.setValue(15)
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000):
        window.handle_drop([image])
    result = CliRunner().invoke(app, ["archive", "search", "--archive", url, "--image", str(image), "-k", "15",
                                      "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    want = [(h["case_id"], h["distance"]) for h in json.loads(result.stdout)["hits"]]
    assert len(want) == 15 and _shown(tab) == want
    assert "archive, answered by the archive server" in tab.summary.text()
    assert tab.archive_bar.name_label.text().endswith(f"· model {opened.args[0].model_id}")
    assert "encoded by archive model" in tab.archive_bar.name_label.toolTip()
    assert tab.archive_bar.close_button.text() == "Close archive"  # there is no local library to go back to
    view = tab.open_case(tab.model.hit(0)).view  # the archive shares thumbnails only: say so, do not fail
    qtbot.waitUntil(lambda: "de-identified thumbnail" in view.case_pane.no_image.text(), timeout=5_000)
    assert tab.model.hit(0).case["case_key"] in view.case_pane.no_image.text()
    tab.case_dialog.close()

    with qtbot.waitSignal(tab.archive_bar.opened, timeout=60_000) as reopened:  # a library opens: its model encodes
        window.open_library(library_copy)
    assert reopened.args[0].encoded_by == "the library's model" and reopened.args[0].model_id == opened.args[0].model_id
    assert tab.archive_bar.close_button.text() == "Search local library"
    assert "· model" not in tab.archive_bar.name_label.text()
