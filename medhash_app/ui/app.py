"""Application entry: QApplication, global exception hook, theme, main window.

`medhash` with no arguments calls `run_app(None, sys.argv)` (the CLI owns argument parsing).
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from PySide6.QtCore import QCoreApplication, Qt, QTimer
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QMessageBox

from medhash_app.core.errors import MedHashError
from medhash_app.ui.messages import describe
from medhash_app.ui.settings import APPLICATION, ORGANIZATION, AppSettings
from medhash_app.ui.themes import apply_theme

log = logging.getLogger("medhash.ui")


def _log_file() -> Path | None:
    try:
        from platformdirs import user_log_dir

        folder = Path(user_log_dir("MedHash", ORGANIZATION))
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "medhash-ui.log"
    except OSError:
        return None


def configure_logging() -> Path | None:
    path = _log_file()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path is not None:
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    return path


class ExceptionHook:
    """sys.excepthook: log the traceback, then tell the user in plain words; never exit.

    Exceptions raised in Qt slots come through here too (PySide calls sys.excepthook), so one
    bad input cannot crash the app. Reentrant calls (an error while showing the dialog) only log.
    """

    def __init__(self) -> None:
        self._showing = False
        self.last_error: BaseException | None = None
        self.dialog: QMessageBox | None = None
        self.previous = sys.excepthook
        self.previous_threading = threading.excepthook

    def install(self) -> None:
        sys.excepthook = self
        threading.excepthook = lambda args: self(args.exc_type, args.exc_value, args.exc_traceback)

    def uninstall(self) -> None:
        sys.excepthook = self.previous
        threading.excepthook = self.previous_threading

    def __call__(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            QApplication.quit()
            return
        self.last_error = exc
        if isinstance(exc, MedHashError):
            log.warning("user problem: %s", exc)
        else:
            log.error("unhandled error:\n%s", "".join(traceback.format_exception(exc_type, exc, tb)))
        if self._showing or QApplication.instance() is None:
            return
        if threading.current_thread() is not threading.main_thread():
            QTimer.singleShot(0, lambda: self._show(exc, tb))
        else:
            self._show(exc, tb)

    def _show(self, exc: BaseException, tb: TracebackType | None) -> None:
        self._showing = True
        try:
            box = QMessageBox(QMessageBox.Icon.Warning, "MedHash", describe(exc), QMessageBox.StandardButton.Ok,
                              QApplication.activeWindow())
            if not isinstance(exc, MedHashError):
                box.setInformativeText("MedHash keeps running. If this happens again, please send the "
                                       "log file to your administrator.")
                box.setDetailedText("".join(traceback.format_exception(type(exc), exc, tb)))
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.finished.connect(self._done)
            self.dialog = box
            box.open()
        except Exception:  # noqa: BLE001 - the hook itself must never raise
            self._showing = False

    def _done(self, *_: object) -> None:
        self._showing = False
        self.dialog = None


def make_application(argv: Sequence[str]) -> QApplication:
    """The QApplication with names (QSettings), high-DPI policy and style; reuses an existing one."""
    app = QApplication.instance()
    if app is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        app = QApplication(list(argv))
    QCoreApplication.setOrganizationName(ORGANIZATION)
    QCoreApplication.setApplicationName(APPLICATION)
    QGuiApplication.setApplicationDisplayName("MedHash")
    QGuiApplication.setDesktopFileName("medhash")
    return app


def binding_problem() -> str | None:
    """A plain-words warning when the installed Qt binding is known to crash this Python."""
    import PySide6

    if PySide6.__version__ == "6.12.0" and sys.version_info < (3, 12):
        return ("PySide6 6.12.0 loses Python references on every signal and can crash MedHash on "
                "Python 3.11. Install PySide6 6.11 (pip install 'PySide6-Essentials<6.12') or use Python 3.12+.")
    return None


def run_app(library_dir: Path | None, argv: Sequence[str], *, device: str = "auto",
            open_paths: Sequence[Path] = ()) -> int:
    """Build the app, show the main window (opening `library_dir` or the last library) and run."""
    log_path = configure_logging()
    app = make_application(argv)
    hook = ExceptionHook()
    hook.install()
    settings = AppSettings()
    apply_theme(app, settings.theme())
    from medhash_app.ui.main_window import MainWindow

    window = MainWindow(settings, device=device)
    window.show()
    problem = binding_problem()
    if problem:
        log.error(problem)
        QMessageBox.warning(window, "MedHash", problem)
    target = library_dir or settings.last_library()
    if target is not None and Path(target).is_dir():
        window.open_library(Path(target))
    elif library_dir is None:
        window.offer_first_run()  # nothing to reopen: offer the demo library
    if open_paths:  # `medhash --open FILE`, the desktop entry's .dcm association: the file is the query
        window.tabs.setCurrentWidget(window.search_tab)
        window.search_tab.open_paths(list(open_paths))
    log.info("MedHash UI started (log: %s)", log_path)
    app.aboutToQuit.connect(window.shutdown)
    try:
        return int(app.exec())
    finally:
        hook.uninstall()
