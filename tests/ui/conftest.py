"""UI fixtures: isolated QSettings, a themed main window, and one tiny trained demo library."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QSettings

from medhash_app.ui.settings import AppSettings


@pytest.fixture
def settings(tmp_path: Path) -> AppSettings:
    """Settings in a temporary INI file, so tests never touch the user's real settings."""
    return AppSettings(QSettings(str(tmp_path / "medhash.ini"), QSettings.Format.IniFormat))


@pytest.fixture
def window(qtbot, qapp, settings: AppSettings):
    from medhash_app.ui.main_window import MainWindow
    from medhash_app.ui.themes import apply_theme

    apply_theme(qapp, settings.theme())
    win = MainWindow(settings)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.shutdown()


ODIR_CASES = 60


@pytest.fixture(scope="session")
def demo_library(tmp_path_factory, odir_dir: Path) -> Path:
    """A small library built with the real services, once per session (~1 min on 2 CPU cores):
    generated chest DICOMs + reports and fundus photos (core/demo), 60 real ODIR-5K fundus photos
    with their graders' keywords, and a BASE model on the tiny backbone trained for one epoch."""
    import json

    from medhash_app.core.demo.generator import generate_demo_dataset
    from medhash_app.core.session import MedHashSession
    from medhash_app.core.training import TrainRequest, train_on_library

    root = tmp_path_factory.mktemp("demo")
    demo_manifest = generate_demo_dataset(root / "demo-source", n_chest=60, n_fundus=30)
    rows = [json.loads(line) for line in (odir_dir / "pairs.jsonl").read_text().splitlines()[:ODIR_CASES]]
    for row in rows:
        row["image"] = str(odir_dir / row["image"])
    odir_manifest = root / "odir-subset.jsonl"
    odir_manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    library = root / "library"
    with MedHashSession(library, create=True, device="cpu") as session:
        report = session.ingest([demo_manifest, odir_manifest], allowed_roots=[odir_dir])  # rows name shared files
        assert report.added > 100 and not report.failed
        train_on_library(session, TrainRequest(method="base", bits=[16, 32], epochs=1, backbone="tiny",
                                               device="cpu", seed=0))
    return library


@pytest.fixture
def open_library(qtbot):
    """`open_library(window, path, create=False)`: open a library and wait for the session."""

    def _open(window, path: Path, create: bool = False) -> None:
        with qtbot.waitSignal(window.state.changed, timeout=60_000):
            window.open_library(path, create=create)
        assert window.state.session is not None

    return _open
