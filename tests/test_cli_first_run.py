"""A first run that works: the window's system libraries are checked before Qt starts, long jobs
show every phase, and the CLI prints tables a radiologist can read (item by item of the issue
"A first run that works, and results a radiologist can trust")."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core import system_libraries
from medhash_app.core.system_libraries import XCB_LIBRARIES, all_packages, install_command, window_problem

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
MISSING = {"libxcb-icccm.so.4", "libxcb-keysyms.so.1"}  # what a fresh Debian 12 lacks


def _loader_without(missing: set[str]):
    """The system edge: dlopen fails for `missing`, as on a machine without those packages."""

    def load(soname: str) -> object:
        if soname in missing:
            raise OSError(f"{soname}: cannot open shared object file: No such file or directory")
        return object()

    return load


@pytest.fixture
def xcb_libraries_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system_libraries, "_load", _loader_without(MISSING))
    for name in ("QT_QPA_PLATFORM", "XDG_SESSION_TYPE", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("Qt's xcb platform is Linux's")


def test_missing_xcb_libraries_name_their_debian_packages() -> None:
    problem = window_problem(env={}, platform="linux", load=_loader_without(MISSING))
    assert problem is not None and "\n" not in problem
    assert "sudo apt-get install -y libxcb-icccm4 libxcb-keysyms1" in problem
    assert "libxcb-cursor0" not in problem  # Qt's own abort message names this one whatever is missing
    assert window_problem(env={}, platform="linux", load=_loader_without(set())) is None


WAYLAND = {"XDG_SESSION_TYPE": "wayland", "WAYLAND_DISPLAY": "wayland-0"}


@pytest.mark.parametrize(("platform", "qpa", "session", "checked"), [
    ("linux", None, {}, True), ("linux", "xcb", {}, True), ("linux", "xcb:nograb", {}, True),
    ("linux", "offscreen", {}, False), ("linux", "wayland", {}, False), ("linux", None, WAYLAND, False),
    ("linux", "xcb", WAYLAND, True), ("darwin", None, {}, False), ("win32", None, {}, False)])
def test_only_the_xcb_platform_is_checked(platform: str, qpa: str | None, session: dict, checked: bool) -> None:
    env = {**session, **({} if qpa is None else {"QT_QPA_PLATFORM": qpa})}
    problem = window_problem(env=env, platform=platform, load=_loader_without(MISSING))
    assert (problem is not None) == checked


def test_every_library_qxcb_links_has_a_package() -> None:
    """The libraries of PySide6's libqxcb.so (readelf -d ... NEEDED, less libc/libstdc++) are all mapped."""
    needed = {"libGL.so.1", "libxkbcommon.so.0", "libxkbcommon-x11.so.0", "libxcb-cursor.so.0", "libxcb-icccm.so.4",
              "libxcb-util.so.1", "libxcb-image.so.0", "libxcb-keysyms.so.1", "libxcb-randr.so.0",
              "libxcb-render-util.so.0", "libxcb-shm.so.0", "libxcb-sync.so.1", "libxcb-xfixes.so.0",
              "libxcb-render.so.0", "libxcb-shape.so.0", "libxcb-xkb.so.1", "libxcb.so.1", "libX11-xcb.so.1",
              "libX11.so.6", "libEGL.so.1", "libfontconfig.so.1"}
    assert needed <= set(XCB_LIBRARIES)


def test_readme_quick_start_has_the_one_line_system_install() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert install_command(all_packages()) in quick_start


def test_medhash_says_which_packages_to_install_instead_of_aborting(xcb_libraries_missing,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import medhash_app.ui.app as ui_app

    monkeypatch.setattr(ui_app, "run_app", lambda *a, **k: pytest.fail("Qt must not start"))
    result = runner.invoke(app, [])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "apt-get install -y libxcb-icccm4 libxcb-keysyms1" in lines[0], result.output


def test_demo_keeps_its_work_when_the_window_cannot_open(xcb_libraries_missing, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    import medhash_app.ui.app as ui_app
    from medhash_app.core.demo import pipeline

    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(ui_app, "run_app", lambda *a, **k: pytest.fail("Qt must not start"))
    ran = []

    def fake_demo(library, **kwargs):
        ran.append(kwargs)
        return {"library": str(library), "cases": 480, "by_domain": {"chest": 240, "fundus": 240},
                "model": {"model_id": 1, "trained": True, "method": "base", "bits": [16, 32, 64]}, "queries": []}

    monkeypatch.setattr(pipeline, "run_demo", fake_demo)
    result = runner.invoke(app, ["demo", "--library", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert ran, "the demo's work must run even though the window cannot open"
    text = " ".join(result.output.split())
    assert "apt-get install -y libxcb-icccm4 libxcb-keysyms1" in text
    assert f"Open it with: medhash --library {tmp_path / 'demo'}" in text
    assert "480 cases (240 chest, 240 fundus)" in text and "model 1 (BASE, 16/32/64-bit codes, trained now)" in text
    # checked before the work: the note comes first, the summary last
    assert text.index("the window cannot open") < text.index("Built the demo library")


def test_job_events_give_every_phase_a_row_with_counts() -> None:
    from medhash_app.cli_progress import (
        ENCODE,
        EVALUATE,
        FEATURES,
        GENERATE,
        INGEST,
        TRAIN,
        PhaseBars,
        job_events,
    )

    bars = PhaseBars(None)
    on_event = job_events(bars, epochs=2)
    for event in ({"event": "generate", "done": 480, "total": 480}, {"event": "ingest", "done": 64, "total": 480},
                  {"event": "start", "epoch": 1, "epochs": 2, "steps": 10, "resumed": False},
                  {"event": "cache_fill", "done": 100, "total": 960},
                  {"event": "cache", "hits": {"image": 0}, "computed": {"image": 480, "text": 480}, "damaged": 0,
                   "seconds": 420.0},
                  {"event": "step", "epoch": 2, "step": 3, "steps": 10, "losses": {"total": 0.5}},
                  {"event": "encode", "model_id": 3}, {"event": "encode", "model_id": 3, "done": 64, "total": 213},
                  {"event": "evaluate", "model_id": 3}):
        on_event(event)
    assert bars.seen[GENERATE][:2] == (480, 480) and bars.seen[INGEST][:2] == (64, 480)
    assert bars.seen[FEATURES][:2] == (960, 960) and "960 computed" in bars.seen[FEATURES][2]
    assert bars.seen[TRAIN][:2] == (20, 20)  # finished when encoding started
    assert bars.seen[ENCODE][:2] == (213, 213) and bars.seen[EVALUATE][:2] == (0, None)
    assert list(bars.seen) == [GENERATE, INGEST, FEATURES, TRAIN, ENCODE, EVALUATE]  # rows in running order


def test_slow_batches_still_get_an_eta() -> None:
    """Encoding reports once per batch of 64, which can take longer than rich's default 30 s window."""
    from medhash_app.cli_progress import ENCODE, phase_bars

    clock = {"t": 0.0}
    with phase_bars(get_time=lambda: clock["t"]) as bars:
        for done in (0, 64, 128):
            bars.update(ENCODE, done, 480)
            clock["t"] += 45.0
        task = bars.progress.tasks[0]
        assert task.time_remaining is not None and 200 < task.time_remaining < 400


def test_train_shows_every_phase_and_prints_tables(tiny_library: Path, tmp_path: Path) -> None:
    """`medhash train`: cache/epochs/encode/evaluate each get a bar with counts; the result is a table."""
    result = runner.invoke(app, ["train", "--library", str(tiny_library), "--backbone", "tiny", "--epochs", "1",
                                 "--bits", "16,32", "--out", str(tmp_path / "run"), "--no-activate"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"Train\b.*\d+/\d+", out), out
    assert re.search(r"Encode library.*120/120", out), out  # was silent: encoding after training showed nothing
    assert "Evaluate" in out
    _assert_readable_metrics(out)


def _assert_readable_metrics(out: str) -> None:
    assert "{'" not in out and "': " not in out, out  # no raw Python dicts
    assert "image → report" in out and "report → image" in out and "mAP@all" in out


def test_eval_prints_tables_and_json_is_unchanged(tiny_library: Path) -> None:
    result = runner.invoke(app, ["eval", "--library", str(tiny_library)])
    assert result.exit_code == 0, result.output
    _assert_readable_metrics(result.output)
    assert "Within each domain" in result.output and "chest" in result.output and "fundus" in result.output
    payload = json.loads(runner.invoke(app, ["eval", "--library", str(tiny_library), "--json"]).stdout)
    assert {"model_id", "splits", "metrics", "by_domain", "warnings"} <= set(payload)


def test_search_table_tells_identical_reports_apart(tiny_library: Path) -> None:
    payload = json.loads(runner.invoke(app, ["search", "--library", str(tiny_library), "--text",
                                             "small left pleural effusion", "-k", "5", "--json"]).stdout)
    result = runner.invoke(app, ["search", "--library", str(tiny_library), "--text", "small left pleural effusion",
                                 "-k", "5"])  # rich's default 80 columns
    assert result.exit_code == 0, result.output
    assert "case id" in result.output and "file" in result.output
    for hit in payload["hits"]:
        assert hit["case_id"][:8] in result.output
        assert Path(hit["source_path"]).name in result.output


def test_a_typed_report_finds_images_by_default(tiny_library: Path) -> None:
    payload = json.loads(runner.invoke(app, ["search", "--library", str(tiny_library), "--text",
                                             "small left pleural effusion", "-k", "5", "--json"]).stdout)
    assert payload["hits"] and all(h["matched"] == "image" for h in payload["hits"])
    help_text = " ".join(runner.invoke(app, ["search", "--help"], terminal_width=200).output.split())
    assert "--text finds images" in help_text
