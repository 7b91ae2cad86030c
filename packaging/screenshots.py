"""Screenshots of the real app: start it (under Xvfb when there is no display) on a library, drive
each tab the way a user would, and save docs/screenshots/<tab>.png.

    python packaging/screenshots.py --library /path/to/library [--query FILE] [--train-epochs 2]

The library is copied to a temporary folder first (imports and training change it), and the app
uses throw-away settings, so neither the library nor the user's settings are touched.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom"
DEFAULT_REPORT = "Enlarged cardiac silhouette. Small bilateral pleural effusions. No pneumothorax."


def start_xvfb(size: str) -> None:
    """Give Qt a real X server when there is no display (CI, SSH); stopped at exit."""
    if os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM"):
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        sys.exit("No display and no Xvfb: install it (apt-get install -y xvfb) or set QT_QPA_PLATFORM=offscreen")
    for number in range(90, 110):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    process = subprocess.Popen([xvfb, f":{number}", "-screen", "0", f"{size}x24", "-nolisten", "tcp"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(process.terminate)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        if time.monotonic() > deadline or process.poll() is not None:
            sys.exit("Xvfb did not start")
        time.sleep(0.1)
    os.environ["DISPLAY"] = f":{number}"
    os.environ["QT_QPA_PLATFORM"] = "xcb"


def wait_until(app, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)
    settle(app)


def settle(app, seconds: float = 0.4) -> None:
    """Let pending paints, thumbnails and timers finish before a grab."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def default_query(library: Path) -> Path:
    queries = sorted((library / "demo-source" / "queries").glob("*chest*.dcm"))
    if not queries:
        queries = sorted(library.parent.glob("demo-source/queries/*chest*.dcm"))
    return queries[0] if queries else SHARED_DICOM / "xray_chest" / "DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", type=Path, required=True, help="library folder (copied first)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument("--query", type=Path, help="query image (default: a demo query or a shared DICOM)")
    parser.add_argument("--report", default=DEFAULT_REPORT, help="report text for the report query")
    parser.add_argument("--import-dir", type=Path, default=SHARED_DICOM / "xray_chest",
                        help="folder imported on the Library tab (its corrupt file shows in the table)")
    parser.add_argument("--train-epochs", type=int, default=2, help="0 skips the Trainer run")
    parser.add_argument("--size", default="1600x1000")
    parser.add_argument("--theme", default="dark")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    start_xvfb(f"{width + 200}x{height + 200}")
    query = args.query or default_query(args.library)
    args.out.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="medhash-shots-"))
    atexit.register(shutil.rmtree, work, True)
    library = work / "library"
    shutil.copytree(args.library, library, ignore=shutil.ignore_patterns("indexes", "demo-source"))

    from medhash_app.ui.app import ExceptionHook, make_application
    from medhash_app.ui.main_window import MainWindow
    from medhash_app.ui.settings import AppSettings
    from medhash_app.ui.themes import apply_theme

    app = make_application([sys.argv[0]])
    ExceptionHook().install()
    settings = AppSettings.from_ini(work / "settings.ini")
    apply_theme(app, args.theme)
    window = MainWindow(settings, device="cpu")
    window.resize(width, height)
    window.show()
    settle(app)
    window.set_theme(args.theme)

    def shot(name: str, widget=None) -> None:
        settle(app)
        path = args.out / f"{name}.png"
        (widget or window).grab().save(str(path))
        print(f"saved {path}")

    window.open_library(library)
    wait_until(app, lambda: window.state.session is not None, 120, "the library to open")
    tab = window.search_tab
    wait_until(app, lambda: tab.filters.label.count() > 1, 30, "filter options")

    # Search: an image query, ranked reports (list), then the grid, then a report query.
    finished: list[object] = []
    tab.searchFinished.connect(lambda result, _ms: finished.append(result))
    tab.open_paths([query])
    wait_until(app, lambda: finished, 300, "the first image search (loads the model)")
    finished.clear()
    tab.open_paths([query])  # again, so the status bar shows a warm search time
    wait_until(app, lambda: finished, 120, "the image search")
    tab.results.table.selectRow(0)
    wait_until(app, lambda: tab.loader.requested and not tab.loader.pending(), 30, "thumbnails")
    shot("search")
    tab.set_view_mode("grid")
    settle(app, 1.0)
    shot("search-grid")
    tab.set_view_mode("list")

    # Case view: the top hit beside the query.
    dialog = tab.open_case(tab.model.hit(0))
    dialog.resize(width, height)
    wait_until(app, lambda: dialog.view.case_pane.viewer_panel.viewer.has_image(), 60, "the case image")
    shot("case", dialog)
    dialog.close()

    finished.clear()
    tab.filters.set_target("images")
    tab.query.set_mode("text")
    tab.query.report_edit.setPlainText(args.report)
    tab.search()
    wait_until(app, lambda: finished, 120, "the report search")
    settle(app, 1.0)
    shot("search-report")

    for theme in ("light", "high-contrast"):
        window.set_theme(theme)
        shot(f"search-{theme}")
    window.set_theme(args.theme)

    # Library: import a folder that holds a corrupt file.
    library_tab = window.library_tab
    window.tabs.setCurrentWidget(library_tab)
    imported: list[object] = []
    library_tab.importFinished.connect(imported.append)
    library_tab.import_paths([args.import_dir])
    wait_until(app, lambda: imported, 300, "the import")
    wait_until(app, lambda: library_tab.indexes.rowCount() > 0, 30, "index status")
    shot("library")

    # Trainer: a short run on the tiny backbone, with its curves and report.
    trainer_tab = window.trainer_tab
    window.tabs.setCurrentWidget(trainer_tab)
    if args.train_epochs > 0:
        trainer_tab.backbone.setCurrentIndex(trainer_tab.backbone.findData("tiny"))
        trainer_tab.device.setCurrentIndex(trainer_tab.device.findData("cpu"))
        trainer_tab.epochs.setValue(args.train_epochs)
        done: list[object] = []
        trainer_tab.trainingFinished.connect(done.append)
        trainer_tab.start_training()
        wait_until(app, lambda: done, 1200, "the training run")
    shot("trainer")

    # Data audit: the most suspicious pairs, the second one open beside its report.
    audit = window.audit_tab
    window.tabs.setCurrentWidget(audit)
    audited: list[object] = []
    audit.auditFinished.connect(audited.append)
    audit.run()
    wait_until(app, lambda: audited or audit.message.isVisible(), 300, "the data audit")
    if audit.table.rowCount() > 1:
        audit.table.selectRow(1)
    wait_until(app, lambda: audit.pane.viewer_panel.viewer.has_image() or not audit.table.rowCount(), 60,
               "the audited case image")
    shot("audit")
    window.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
