"""Main window: Search, Library, Trainer and Data audit tabs, menus with shortcuts, drops, status bar."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import QApplication, QLabel, QMainWindow, QMessageBox, QTabWidget, QWidget

from medhash_app.ui.audit_view import AuditView
from medhash_app.ui.dropping import local_paths
from medhash_app.ui.library_tab import LibraryTab
from medhash_app.ui.messages import describe
from medhash_app.ui.pacs_dialog import PacsDialog
from medhash_app.ui.search_tab import SearchTab
from medhash_app.ui.session_state import SessionState
from medhash_app.ui.settings import AppSettings
from medhash_app.ui.themes import THEMES, apply_theme
from medhash_app.ui.trainer_tab import TrainerTab
from medhash_app.ui.workers import JobRunner

THEME_TITLES = {"dark": "Dark", "light": "Light", "high-contrast": "High contrast"}


class MainWindow(QMainWindow):
    """Owns the shared session, the job runner and the tabs; keeps no business logic."""

    def __init__(self, settings: AppSettings | None = None, device: str = "auto",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("MedHash — similar-case search")
        self.setAcceptDrops(True)
        self.settings = settings or AppSettings()
        self.runner = JobRunner(self)
        self.state = SessionState(self.runner, device, self)
        self.search_tab = SearchTab(self.state, self.runner, self.settings, self)
        self.library_tab = LibraryTab(self.state, self.runner, self.settings, self)
        self.trainer_tab = TrainerTab(self.state, self.runner, self.settings, self)
        self.audit_tab = AuditView(self.state, self.runner, self)
        self.tabs = QTabWidget(self)
        self.tabs.setAccessibleName("Main tabs")
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.search_tab, "Search")
        self.tabs.addTab(self.library_tab, "Library")
        self.tabs.addTab(self.trainer_tab, "Trainer")
        self.tabs.addTab(self.audit_tab, "Data audit")
        self.setCentralWidget(self.tabs)
        self._build_status_bar()
        self._build_menus()
        self.state.changed.connect(self._update_status)
        self.state.changed.connect(self._remember_library)
        self.state.failed.connect(self._on_open_failed)
        self.search_tab.statusMessage.connect(self.search_time.setText)
        self.state.preparing.connect(self.search_time.setText)
        self.resize(1440, 900)
        self._shut_down = False
        self.pacs_dialog: PacsDialog | None = None
        self._restore()

    # -- chrome -------------------------------------------------------------------------------
    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.device_label = QLabel("Device: –", self)
        self.model_label = QLabel("Model: –", self)
        self.library_label = QLabel("No library open", self)
        self.search_time = QLabel("", self)
        for label, name in ((self.device_label, "Compute device"), (self.model_label, "Active model"),
                            (self.library_label, "Library size"), (self.search_time, "Last search time")):
            label.setAccessibleName(name)
        bar.addWidget(self.library_label)
        bar.addWidget(self.search_time, 1)
        bar.addPermanentWidget(self.model_label)
        bar.addPermanentWidget(self.device_label)

    def _action(self, text: str, shortcut: QKeySequence | str | None, slot, tip: str = "") -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(slot)
        self.addAction(action)
        return action

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = self._action("&Open query image…", QKeySequence.StandardKey.Open,
                                        self._open_query, "Choose an image to search with")
        self.new_lib_action = self._action("&New library…", "Ctrl+Shift+N", self.library_tab.choose_new_library)
        self.open_lib_action = self._action("Open &library…", "Ctrl+L", self.library_tab.choose_library)
        self.demo_action = self._action("Open &demo library", None, self.library_tab.open_demo_library,
                                        "Open the demo library (built on first use)")
        self.import_action = self._action("&Import into library…", "Ctrl+I", self.library_tab.choose_import_folder)
        self.archive_action = self._action("Open &archive…", None, self._open_archive, "Search a shared case "
                                           "archive (PostgreSQL) with this library's model, or with the archive's own model "
                                           "when no library is open")
        self.pacs_action = self._action("&PACS…", None, self.show_pacs, "Receive studies from the PACS, or find "
                                        "and pull them into the library")
        self.csv_action = self._action("Export results as &CSV…", "Ctrl+E", self.search_tab.choose_csv)
        self.summary_action = self._action("Export &summary…", "Ctrl+P", self.search_tab.choose_summary)
        quit_action = self._action("&Quit", QKeySequence.StandardKey.Quit, self.close)
        for action in (self.open_action, None, self.new_lib_action, self.open_lib_action, self.demo_action,
                       self.import_action, self.archive_action, self.pacs_action,
                       None, self.csv_action, self.summary_action, None, quit_action):
            file_menu.addSeparator() if action is None else file_menu.addAction(action)

        search_menu = self.menuBar().addMenu("&Search")
        viewer = self.search_tab.query.viewer_panel.viewer
        search_now = self._action("&Search now", "Ctrl+Return", self.search_tab.search, "Search (Ctrl+Enter)")
        search_now.setShortcuts([QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")])
        search_menu.addAction(search_now)
        search_menu.addAction(self._action("Focus &report box", "Ctrl+R",
                                           lambda: self._focus(self.search_tab.query.report_edit)))
        search_menu.addAction(self._action("Toggle list / &grid", "Ctrl+G", self.search_tab.toggle_view_mode))
        search_menu.addAction(self._action("&Clear filters", "Ctrl+Shift+X", self.search_tab.filters.clear))
        search_menu.addSeparator()
        search_menu.addAction(self._action("&Fit image", "Ctrl+0", viewer.fit))
        search_menu.addAction(self._action("&Invert image", "Ctrl+Shift+I", viewer.toggle_invert))
        search_menu.addAction(self._action("&Reset window/level", "Ctrl+Shift+R", viewer.reset_window))

        view_menu = self.menuBar().addMenu("&View")
        for i, title in enumerate(("&Search", "&Library", "&Trainer", "&Data audit")):
            view_menu.addAction(self._action(f"{title} tab", f"Ctrl+{i + 1}",
                                             lambda _=False, i=i: self.tabs.setCurrentIndex(i)))
        view_menu.addSeparator()
        theme_menu = view_menu.addMenu("&Theme")
        self.theme_group = QActionGroup(self)
        self.theme_actions: dict[str, QAction] = {}
        for name in THEMES:
            action = QAction(THEME_TITLES[name], self, checkable=True)
            action.triggered.connect(lambda _=False, n=name: self.set_theme(n))
            self.theme_group.addAction(action)
            theme_menu.addAction(action)
            self.theme_actions[name] = action

        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self._action("&Keyboard shortcuts", "F1", self._show_shortcuts))
        help_menu.addAction(self._action("&About MedHash", None, self._about))

    def _focus(self, widget: QWidget) -> None:
        self.tabs.setCurrentWidget(self.search_tab)
        widget.setFocus()

    # -- theme and settings -------------------------------------------------------------------
    def set_theme(self, name: str) -> None:
        app = QApplication.instance()
        theme = apply_theme(app, name)
        self.settings.set_theme(theme.name)
        self.theme_actions[theme.name].setChecked(True)
        for widget in app.allWidgets():
            widget.update()

    def _restore(self) -> None:
        geometry, state = self.settings.geometry(), self.settings.window_state()
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)
        self.theme_actions[self.settings.theme()].setChecked(True)

    def save_settings(self) -> None:
        self.settings.set_geometry(self.saveGeometry())
        self.settings.set_window_state(self.saveState())
        if self.state.info.library_dir is not None:  # closing a library must not forget it
            self.settings.set_last_library(self.state.info.library_dir)
        self.trainer_tab.save_settings()
        self.settings.sync()

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.trainer_tab.is_training():
            answer = QMessageBox.question(self, "Training is running",
                                          "A training run is still going. Stop it and quit?")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        self.shutdown()
        event.accept()

    def shutdown(self) -> None:
        """Stop background work and remember the window. Runs once: the close event and the
        application's aboutToQuit both call it, and the second call would find the library closed."""
        if self._shut_down:
            return
        self._shut_down = True
        self.save_settings()
        self.trainer_tab.stop_training()
        if self.pacs_dialog is not None:
            self.pacs_dialog.shutdown()
        self.runner.cancel_all()
        self.search_tab.shutdown()
        self.library_tab.shutdown()
        self.runner.wait(10_000)
        self.state.close()

    def show_pacs(self) -> PacsDialog:
        """File → PACS…: one dialog per window; hiding it keeps the listener running."""
        if self.pacs_dialog is None:
            self.pacs_dialog = PacsDialog(self.state, self.runner, self)
            self.pacs_dialog.queryImage.connect(self._search_with)
        self.pacs_dialog.show()
        self.pacs_dialog.raise_()
        return self.pacs_dialog

    def _search_with(self, path: Path) -> None:
        self.tabs.setCurrentWidget(self.search_tab)
        self.search_tab.open_paths([path])

    def offer_first_run(self) -> None:
        """First launch (no library remembered): the Library tab offers the demo library."""
        self.tabs.setCurrentWidget(self.library_tab)
        self.library_tab.offer_demo()

    # -- library and status -------------------------------------------------------------------
    def open_library(self, path: Path, create: bool = False) -> None:
        self.state.open(path, create)

    def _remember_library(self) -> None:
        """The library that opened is the one the next start reopens (kept even if quitting fails)."""
        if self.state.info.library_dir is not None:
            self.settings.set_last_library(self.state.info.library_dir)

    def _update_status(self) -> None:
        info = self.state.info
        if self.state.session is None:
            self.library_label.setText("No library open")
            self.model_label.setText("Model: –")
            self.device_label.setText("Device: –")
            self.setWindowTitle("MedHash — similar-case search")
            return
        name = info.library_dir.name if info.library_dir else ""
        self.library_label.setText(f"Library “{name}” · {info.case_count:,} cases")
        bits = "/".join(str(b) for b in info.model_bits)
        self.model_label.setText(f"Model: {info.model_name}" + (f" ({bits} bits)" if bits else ""))
        self.device_label.setText(f"Device: {info.device}")
        self.setWindowTitle(f"MedHash — {name}")

    def _on_open_failed(self, exc: BaseException) -> None:
        self.library_tab.message.show_error(exc)
        self.search_tab.message.show_message(f"The library could not be opened. {describe(exc)}", "warning")

    # -- drops --------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if local_paths(event.mimeData()):
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:
        if local_paths(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = local_paths(event.mimeData())
        if not paths:
            return
        event.acceptProposedAction()
        self.handle_drop(paths)

    def handle_drop(self, paths: list[Path]) -> None:
        """On the Library tab a drop imports; anywhere else it becomes the query."""
        if self.tabs.currentWidget() is self.library_tab:
            self.library_tab.import_paths(paths)
        else:
            self.tabs.setCurrentWidget(self.search_tab)
            self.search_tab.open_paths(paths)

    def _open_archive(self) -> None:
        self.tabs.setCurrentWidget(self.search_tab)
        self.search_tab.choose_archive()

    def _open_query(self) -> None:
        self.tabs.setCurrentWidget(self.search_tab)
        self.search_tab.choose_file()

    # -- help ---------------------------------------------------------------------------------
    def _show_shortcuts(self) -> None:
        lines = [f"{a.shortcut().toString(QKeySequence.SequenceFormat.NativeText)}\t{a.text().replace('&', '')}"
                 for a in self.actions() if not a.shortcut().isEmpty()]
        lines += ["Right/middle drag\tWindow / level", "Left drag\tPan", "Wheel\tZoom",
                  "Double-click\tFit", "1–9\tWindow presets (viewer focused)"]
        QMessageBox.information(self, "Keyboard shortcuts", "\n".join(lines))

    def _about(self) -> None:
        QMessageBox.about(self, "About MedHash",
                          "MedHash finds similar earlier cases by learned binary hash codes "
                          "(image ↔ report). Everything runs on this computer.")

