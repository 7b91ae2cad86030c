"""Main window without a library: themes, settings round-trip, shortcuts, accessibility, hooks."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QAbstractButton, QApplication, QComboBox, QLineEdit, QPlainTextEdit

from medhash_app.core.errors import CorruptFileError
from medhash_app.ui.settings import AppSettings
from medhash_app.ui.themes import THEMES, get_theme


def test_theme_switch_changes_palette_and_is_remembered(window, settings: AppSettings) -> None:
    app = QApplication.instance()
    seen = {}
    for name in THEMES:
        window.set_theme(name)
        colour = app.palette().color(QPalette.ColorRole.Window).name()
        assert colour == get_theme(name).window
        seen[name] = colour
        assert settings.theme() == name
        assert window.theme_actions[name].isChecked()
    assert len(set(seen.values())) == len(THEMES)
    # the viewer paints with the theme's background
    window.set_theme("light")
    viewer = window.search_tab.query.viewer_panel.viewer
    image = viewer.grab().toImage()
    assert image.pixelColor(3, 3).name() == get_theme("light").viewer_bg


def test_settings_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "s.ini")
    first = AppSettings(QSettings(path, QSettings.Format.IniFormat))
    first.set_theme("high-contrast")
    first.set_last_library(tmp_path / "lib")
    first.set_search_target("images")
    first.set_search_bits(32)
    first.set_results_view("grid")
    first.set_page_size(500)
    first.set_trainer_value("epochs", 3)
    first.sync()
    second = AppSettings(QSettings(path, QSettings.Format.IniFormat))
    assert second.theme() == "high-contrast"
    assert second.last_library() == tmp_path / "lib"
    assert second.search_target() == "images"
    assert second.search_bits() == 32
    assert second.results_view() == "grid"
    assert second.page_size() == 500
    assert int(second.trainer_value("epochs", 10)) == 3
    # garbage falls back to defaults instead of breaking the app
    second.qs.setValue("ui/theme", "neon")
    second.qs.setValue("search/bits", "many")
    assert second.theme() == "dark" and second.search_bits() is None


def test_window_geometry_and_choices_restored(qtbot, qapp, tmp_path: Path) -> None:
    from medhash_app.ui.main_window import MainWindow

    path = str(tmp_path / "w.ini")
    first = MainWindow(AppSettings(QSettings(path, QSettings.Format.IniFormat)))
    qtbot.addWidget(first)
    first.show()
    first.resize(700, 520)  # the offscreen screen is 800x800; restoreGeometry clamps to the screen
    first.search_tab.set_view_mode("grid")
    first.trainer_tab.epochs.setValue(7)
    saved = (first.width(), first.height())
    assert saved != (1440, 900)
    first.shutdown()
    second = MainWindow(AppSettings(QSettings(path, QSettings.Format.IniFormat)))
    qtbot.addWidget(second)
    screen_width = second.screen().availableGeometry().width()
    assert second.height() == saved[1]
    assert abs(second.width() - min(saved[0], screen_width)) <= 4  # clamped to the (offscreen) screen
    assert second.search_tab.results.mode == "grid"
    assert second.trainer_tab.epochs.value() == 7
    second.shutdown()


def test_controls_have_accessible_names(window) -> None:
    kinds = (QAbstractButton, QComboBox, QLineEdit, QPlainTextEdit)
    unnamed = []
    for tab in (window.search_tab, window.library_tab, window.trainer_tab):
        for widget in (w for kind in kinds for w in tab.findChildren(kind)):
            if widget.objectName().startswith("qt_") or widget.parent().objectName().startswith("qt_"):
                continue  # Qt's own internals (spin box arrows, line edits inside combos)
            if isinstance(widget.parent(), (QComboBox, QLineEdit)):
                continue  # a combo's editor, a line edit's clear button
            if not (widget.accessibleName() or (isinstance(widget, QAbstractButton) and widget.text())):
                unnamed.append(f"{type(widget).__name__} under {type(widget.parent()).__name__} "
                               f"{widget.parent().objectName()!r} in {type(tab).__name__}")
    assert unnamed == []


def test_common_actions_have_shortcuts(window) -> None:
    shortcuts = {a.text().replace("&", ""): a.shortcut().toString() for a in window.actions()}
    assert shortcuts["Open query image…"] == "Ctrl+O"
    assert shortcuts["Search now"] == "Ctrl+Return"
    assert shortcuts["Toggle list / grid"] == "Ctrl+G"
    assert shortcuts["Open library…"] == "Ctrl+L"


def test_search_without_library_explains_what_to_do(window) -> None:
    assert window.search_tab.search() is None
    assert "library" in window.search_tab.message.text().lower()


def test_exception_hook_logs_and_keeps_running(qtbot, qapp) -> None:
    from medhash_app.ui.app import ExceptionHook

    hook = ExceptionHook()
    error = CorruptFileError("/data/scan.dcm", "the JPEG 2000 stream ends early")
    hook(type(error), error, None)
    assert hook.last_error is error
    box = hook.dialog
    assert box is not None and box.isVisible()
    assert box.text() == "scan.dcm: the JPEG 2000 stream ends early"  # plain words, no traceback
    hook(type(error), error, None)  # a second error while the dialog is up only logs
    assert hook.dialog is box
    box.close()
    qtbot.waitUntil(lambda: hook.dialog is None)
    bug = ZeroDivisionError("division by zero")
    hook(type(bug), bug, None)
    assert "Unexpected problem (ZeroDivisionError)" in hook.dialog.text()
    assert hook.dialog.detailedText()
    hook.dialog.close()


def test_dropping_a_broken_file_explains_it_in_the_window(qtbot, window, dicom_dir: Path) -> None:
    bad = dicom_dir / "xray_chest/DX_chest_PA_MONO1_Canon_J2K_lossless_CORRUPT_COM_marker.dcm"
    with qtbot.waitSignal(window.search_tab.query.problem, timeout=20_000) as blocker:
        window.handle_drop([bad])
    assert blocker.args[0].item is not None
    message = window.search_tab.message.text()
    assert bad.name in message and len(message) < 300 and "Traceback" not in message
