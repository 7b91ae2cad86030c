"""`medhash --open FILE` (what the desktop entry's .dcm association runs): the window starts on the
Search tab with FILE as the query, also on a first launch that would otherwise show the Library tab.

run_app configures the whole process (root logging, exception hooks, the application's exec loop),
so it runs in its own Python process here; sharing pytest's would leave later tests' workers stuck."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.shared_data

SCRIPT = """
import json, sys
from pathlib import Path
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication
from medhash_app.ui import app as ui_app
from medhash_app.ui.main_window import MainWindow
from medhash_app.ui.settings import AppSettings

ini, query = sys.argv[1], Path(sys.argv[2])
ui_app.AppSettings = lambda: AppSettings(QSettings(ini, QSettings.Format.IniFormat))
seen = {}

def look_then_quit():
    window = next(w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow))
    seen["search_tab"] = window.tabs.currentWidget() is window.search_tab
    seen["query"] = str(window.search_tab.query.image_path)
    window.close()
    QApplication.instance().quit()

ui_app.make_application(["medhash"])  # the timer needs the application run_app then reuses
QTimer.singleShot(1500, look_then_quit)
code = ui_app.run_app(None, [], device="cpu", open_paths=[query])
print("SEEN " + json.dumps({**seen, "exit": code}))
"""


def test_run_app_opens_the_file_as_the_query(dicom_dir: Path, tmp_path: Path) -> None:
    query = dicom_dir / "xray_chest" / "DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path / "home"),
           "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "data"),  # a first launch
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "settings.ini"), str(query)], env=env, check=False,
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("SEEN ")), None)
    assert line is not None, done.stderr[-2000:]
    assert json.loads(line[5:]) == {"search_tab": True, "query": str(query), "exit": 0}
