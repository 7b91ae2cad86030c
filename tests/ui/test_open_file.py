"""`medhash --open FILE` (what the desktop entry's .dcm association runs): the window starts on the
Search tab with FILE as the query, also on a first launch that would otherwise show the Library tab."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from medhash_app.ui import app as ui_app
from medhash_app.ui.main_window import MainWindow

pytestmark = pytest.mark.shared_data


def test_run_app_opens_the_file_as_the_query(qapp, settings, dicom_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    query = dicom_dir / "xray_chest" / "DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # the UI log
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # no demo library there: a first launch
    monkeypatch.setattr(ui_app, "AppSettings", lambda: settings)
    seen: dict[str, object] = {}

    def look_then_quit() -> None:
        window = next(w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow))
        seen["tab"] = window.tabs.currentWidget() is window.search_tab
        seen["query"] = window.search_tab.query.image_path
        window.close()
        qapp.quit()

    QTimer.singleShot(500, look_then_quit)
    assert ui_app.run_app(None, [], device="cpu", open_paths=[query]) == 0
    assert seen == {"tab": True, "query": query}
