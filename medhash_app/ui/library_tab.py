"""Library tab: create/open a library, import in the background, models, re-encode, indexes."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from medhash_app.ui.case_browser import CaseBrowser
from medhash_app.ui.dropping import local_paths
from medhash_app.ui.messages import MessageBar, describe, for_the_window
from medhash_app.ui.progress import ProgressRow
from medhash_app.ui.session_state import SessionState
from medhash_app.ui.settings import AppSettings
from medhash_app.ui.themes import set_role
from medhash_app.ui.workers import JobHandle, JobRunner


def _table(headers: list[str], name: str, parent: QWidget) -> QTableWidget:
    table = QTableWidget(0, len(headers), parent)
    table.setHorizontalHeaderLabels(headers)
    table.setAccessibleName(name)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setAlternatingRowColors(True)
    header = table.horizontalHeader()
    header.setStretchLastSection(True)
    header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    for column, text in enumerate(headers):  # a header is never clipped ("ıAP@all (longest code" was)
        header.resizeSection(column, max(header.sectionSize(column), header.fontMetrics().horizontalAdvance(text) + 16))
    return table


def _fill(table: QTableWidget, rows: list[list[Any]], data: list[Any] | None = None) -> None:
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            item = QTableWidgetItem("" if value is None else str(value))
            if data is not None and c == 0:
                item.setData(Qt.ItemDataRole.UserRole, data[r])
            table.setItem(r, c, item)
    table.resizeColumnsToContents()


def problem_rows(report: Any) -> list[tuple[str, str, str]]:
    """(status, file, reason) for every skipped or failed item of an IngestReport."""
    rows: list[tuple[str, str, str]] = []
    for status in ("failed", "skipped"):
        entries = getattr(report, status, None)
        if not isinstance(entries, (list, tuple)):
            continue  # a plain count (skipped = already in the library) has no per-file reasons
        for entry in entries:
            if isinstance(entry, dict):
                path, reason = entry.get("path") or entry.get("item"), entry.get("reason")
            elif isinstance(entry, (tuple, list)):
                path, reason = entry[0], entry[1] if len(entry) > 1 else ""
            else:
                path, reason = getattr(entry, "path", getattr(entry, "item", entry)), getattr(entry, "reason", "")
            rows.append((status, str(path), str(reason or "")))
    return rows


def headline_map(model: dict[str, Any]) -> str:
    """"I→T 0.27 · T→I 0.21" at the model's longest code (mAP@all on its held-out queries)."""
    metrics = model.get("metrics") or {}
    bits = max(model.get("bits") or [0])
    parts = []
    for direction, title in (("i2t", "I→T"), ("t2i", "T→I")):
        value = (metrics.get(f"{direction}@{bits}") or {}).get("map_all")
        if isinstance(value, (int, float)):
            parts.append(f"{title} {value:.3f}")
    return " · ".join(parts)


def _count(value: Any) -> int:
    return value if isinstance(value, int) else len(value or [])


class LibraryTab(QWidget):
    """Thin: every action is one session call run by the JobRunner; results land in tables."""

    importFinished = Signal(object)
    encodeFinished = Signal(object)

    def __init__(self, state: SessionState, runner: JobRunner, settings: AppSettings,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runner = runner
        self.settings = settings
        self.setAcceptDrops(True)
        self._import_job: JobHandle | None = None
        self._encode_job: JobHandle | None = None
        self.last_report: Any = None
        self.message = MessageBar(self)
        self._demo_job: JobHandle | None = None
        self._build_welcome_box()
        self._build_library_box()
        self._build_import_box()
        self._build_models_box()
        self._build_index_box()
        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.models_box, 3)
        right_layout.addWidget(self.index_box, 2)
        left = QWidget(self)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.welcome_box)
        left_layout.addWidget(self.library_box)
        left_layout.addWidget(self.import_box, 1)
        split = QSplitter(Qt.Orientation.Horizontal, self)
        split.addWidget(left)
        split.addWidget(right)
        split.setSizes([700, 600])
        self.browser = CaseBrowser(state, runner, self)
        self.sections = QTabWidget(self)
        self.sections.setDocumentMode(True)
        self.sections.addTab(split, "Manage")
        self.sections.addTab(self.browser, "Browse cases")
        self.sections.setTabToolTip(1, "Every case of the library as thumbnails or a list, filtered and sorted; "
                                       "double-click opens a case")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.message)
        layout.addWidget(self.sections, 1)
        state.changed.connect(self._on_session_changed)
        self._on_session_changed()

    # -- construction -------------------------------------------------------------------------
    def _button(self, text: str, tip: str, slot, primary: bool = False) -> QPushButton:
        button = QPushButton(text, self)
        button.setToolTip(tip)
        button.setAccessibleName(text.rstrip("…"))
        if primary:
            set_role(button, "primary")
        button.clicked.connect(slot)
        return button

    def _build_welcome_box(self) -> None:
        """First launch: offer the demo library (it lives in a hidden per-user folder that the
        folder dialog does not show, so the window opens it by name)."""
        self.welcome_box = QGroupBox("Getting started", self)
        self.welcome_label = QLabel("", self)
        self.welcome_label.setWordWrap(True)
        self.welcome_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.demo_button = self._button("Open demo library", "Open the demo library (built on first use)",
                                        self.open_demo_library, primary=True)
        self.demo_progress = ProgressRow("steps", self)
        self.demo_progress.cancel_button.clicked.connect(
            lambda: self._demo_job is not None and self._demo_job.cancel_event.set())
        row = QHBoxLayout()
        row.addWidget(self.demo_button)
        row.addStretch(1)
        layout = QVBoxLayout(self.welcome_box)
        layout.addWidget(self.welcome_label)
        layout.addLayout(row)
        layout.addWidget(self.demo_progress)
        self.welcome_box.hide()

    def offer_demo(self) -> None:
        """Show "Getting started" with Open demo library (or Build demo library when there is none yet)."""
        from medhash_app.core.demo.location import default_demo_library, demo_library_ready

        folder = default_demo_library()
        shown = f"~/{folder.relative_to(Path.home())}" if folder.is_relative_to(Path.home()) else str(folder)
        if demo_library_ready(folder):
            self.welcome_label.setText(
                "New to MedHash? Open the demo library: generated chest radiographs and fundus photographs "
                f"with reports and a trained model, ready to search. It is stored in {shown}.")
            self.demo_button.setText("Open demo library")
        else:
            self.welcome_label.setText(
                "New to MedHash? Build the demo library: generated chest radiographs and fundus photographs "
                "with reports, and a model trained on them (several minutes on a laptop CPU), stored in "
                f"{shown}. Or create a library of your own below and import images into it.")
            self.demo_button.setText("Build demo library")
        self.demo_button.setAccessibleName(self.demo_button.text())
        self.welcome_box.show()

    def open_demo_library(self) -> JobHandle | None:
        """Open the demo library; build it first (in the background) when it is not there yet."""
        from medhash_app.core.demo.location import default_demo_library, demo_library_ready

        folder = default_demo_library()
        if demo_library_ready(folder) and (self._demo_job is None or self._demo_job.done):
            return self.state.open(folder)
        if self._demo_job is not None and not self._demo_job.done:
            return self._demo_job

        def build(progress, cancel):
            from medhash_app.core.demo.pipeline import run_demo

            return run_demo(folder, cancel=cancel, progress=progress)

        self.welcome_box.show()
        self.demo_button.setEnabled(False)
        self.demo_progress.begin("Building the demo library…")
        job = self.runner.start("build demo library", build)
        job.progress.connect(self._on_demo_progress)
        job.failed.connect(self.message.show_error)
        job.succeeded.connect(lambda _r: self.state.open(folder))
        job.finished.connect(lambda: (self.demo_progress.finish(), self.demo_button.setEnabled(True)))
        self._demo_job = job
        return job

    def _on_demo_progress(self, event: Any) -> None:
        state = self.demo_progress.update_progress(event)
        phase = event.get("event") if isinstance(event, dict) else None
        titles = {"generate": "Generating images and reports", "ingest": "Importing",
                  "queries": "Running the example queries", "step": "Training", "epoch": "Training",
                  "encode": "Encoding"}
        if phase in titles:
            done = f" {state.done:,} of {state.total:,}" if state.total else ""
            self.demo_progress.label.setText(f"{titles[phase]}{done}…")

    def _build_library_box(self) -> None:
        self.library_box = QGroupBox("Library", self)
        self.path_label = QLabel("No library open. Create one, or open an existing library folder.", self)
        self.path_label.setWordWrap(True)
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.stats_label = QLabel("", self)
        set_role(self.stats_label, "muted")
        self.new_button = self._button("New library…", "Make a new, empty library folder (Ctrl+Shift+N)",
                                       self.choose_new_library)
        self.open_button = self._button("Open library…", "Open an existing library folder (Ctrl+L)",
                                        self.choose_library)
        row = QHBoxLayout()
        row.addWidget(self.new_button)
        row.addWidget(self.open_button)
        row.addStretch(1)
        layout = QVBoxLayout(self.library_box)
        layout.addWidget(self.path_label)
        layout.addWidget(self.stats_label)
        layout.addLayout(row)

    def _build_import_box(self) -> None:
        self.import_box = QGroupBox("Import", self)
        hint = QLabel("Add files, folders, a DICOMDIR or a dataset folder (IU X-ray, MIMIC-CXR-JPG, "
                      "ODIR-5K, CSV/JSONL manifest). You can also drop them on this tab. "
                      "Files already in the library are skipped.", self)
        hint.setWordWrap(True)
        set_role(hint, "muted")
        self.import_files_button = self._button("Import files…", "Choose image files to add",
                                                self.choose_import_files)
        self.import_folder_button = self._button("Import folder…", "Choose a folder or dataset to add (Ctrl+I)",
                                                 self.choose_import_folder, primary=True)
        self.import_progress = ProgressRow("files", self)
        self.import_progress.cancel_button.clicked.connect(self.cancel_import)
        self.import_summary = QLabel("", self)
        self.import_summary.setWordWrap(True)
        self.problems = _table(["Status", "File", "Reason"], "Skipped and failed files", self)
        self.problems.setWordWrap(True)  # a reason is a sentence or two: wrap it, never cut it off
        self.problems.currentCellChanged.connect(lambda row, *_: self._show_problem(row))
        self.problems.horizontalHeader().sectionResized.connect(lambda *_: self.problems.resizeRowsToContents())
        self._problem_rows: list[tuple[str, str, str]] = []
        self.problem_details = QLabel("", self)
        self.problem_details.setWordWrap(True)
        self.problem_details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.problem_details.setAccessibleName("Reason in full")
        self.problem_details.hide()
        row = QHBoxLayout()
        row.addWidget(self.import_files_button)
        row.addWidget(self.import_folder_button)
        row.addStretch(1)
        layout = QVBoxLayout(self.import_box)
        layout.addWidget(hint)
        layout.addLayout(row)
        layout.addWidget(self.import_progress)
        layout.addWidget(self.import_summary)
        layout.addWidget(self.problems, 1)
        layout.addWidget(self.problem_details)

    def _build_models_box(self) -> None:
        self.models_box = QGroupBox("Models", self)
        self.models = _table(["Id", "Name", "Method", "Bits", "Active", "mAP@all (longest code)"],
                             "Registered models", self)
        self.activate_button = self._button("Make active", "Use the selected model for searching",
                                            self.activate_selected)
        self.register_button = self._button("Add checkpoint…", "Register a trained checkpoint folder",
                                            self.choose_checkpoint)
        self.encode_button = self._button("Re-encode library", "Compute codes for every case with the "
                                          "active model", self.encode_library)
        self.encode_progress = ProgressRow("cases", self)
        self.encode_progress.cancel_button.clicked.connect(self.cancel_encode)
        row = QHBoxLayout()
        for w in (self.activate_button, self.register_button, self.encode_button):
            row.addWidget(w)
        row.addStretch(1)
        layout = QVBoxLayout(self.models_box)
        layout.addWidget(self.models, 1)
        layout.addLayout(row)
        layout.addWidget(self.encode_progress)

    def _build_index_box(self) -> None:
        self.index_box = QGroupBox("Search indexes", self)
        self.indexes = _table(["Model", "Modality", "Bits", "Codes", "State"], "Index status", self)
        self.verify_button = self._button("Verify", "Check every index against the stored codes",
                                          self.refresh_indexes)
        self.rebuild_button = self._button("Rebuild", "Rebuild every index from the stored codes",
                                           self.rebuild_indexes)
        row = QHBoxLayout()
        row.addWidget(self.verify_button)
        row.addWidget(self.rebuild_button)
        row.addStretch(1)
        layout = QVBoxLayout(self.index_box)
        layout.addWidget(self.indexes, 1)
        layout.addLayout(row)

    # -- library ------------------------------------------------------------------------------
    def choose_new_library(self) -> None:
        """Ask for a folder that may not exist yet (a folder picker cannot return one) and make it."""
        dialog = QFileDialog(self, "New library: type a name for its folder", self.settings.last_dir("library"))
        dialog.setFileMode(QFileDialog.FileMode.AnyFile)
        dialog.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
        dialog.setLabelText(QFileDialog.DialogLabel.Accept, "Create")
        dialog.setLabelText(QFileDialog.DialogLabel.FileName, "Library folder")
        dialog.setOption(QFileDialog.Option.DontConfirmOverwrite, True)  # an existing empty folder is fine
        if not dialog.exec() or not dialog.selectedFiles():
            return
        folder = Path(dialog.selectedFiles()[0]).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)  # mkdir -p
        except OSError as exc:
            self.message.show_error(exc)
            return
        self.settings.set_last_dir("library", folder.parent)
        self.state.open(folder, create=True)

    def choose_library(self) -> None:
        name = QFileDialog.getExistingDirectory(self, "Open library folder", self.settings.last_dir("library"))
        if name:
            self.settings.set_last_dir("library", Path(name).parent)
            self.state.open(Path(name))

    def _on_session_changed(self) -> None:
        is_open = self.state.is_open
        info = self.state.info
        if is_open:
            self.welcome_box.hide()
            self.path_label.setText(f"<b>{info.library_dir.name}</b> — {info.library_dir}")
            self.stats_label.setText(f"{info.case_count:,} cases · active model: {info.model_name} · "
                                     f"device: {info.device}")
            self.settings.set_last_library(info.library_dir)
            self.refresh_models()
            self.refresh_indexes()
        else:
            self.path_label.setText("No library open. Create one, or open an existing library folder.")
            self.stats_label.setText("")
        for w in (self.import_files_button, self.import_folder_button, self.activate_button,
                  self.register_button, self.encode_button, self.verify_button, self.rebuild_button):
            w.setEnabled(is_open)

    # -- import -------------------------------------------------------------------------------
    def choose_import_files(self) -> None:
        names, _ = QFileDialog.getOpenFileNames(self, "Import files", self.settings.last_dir("import"))
        if names:
            self.settings.set_last_dir("import", Path(names[0]).parent)
            self.import_paths([Path(n) for n in names])

    def choose_import_folder(self) -> None:
        name = QFileDialog.getExistingDirectory(self, "Import folder", self.settings.last_dir("import"))
        if name:
            self.settings.set_last_dir("import", Path(name).parent)
            self.import_paths([Path(name)])

    def import_paths(self, paths: list[Path]) -> JobHandle | None:
        session = self.state.session
        if session is None:
            self.message.show_message("Open or create a library before importing.", "warning")
            return None
        if self._import_job is not None and not self._import_job.done:
            self.message.show_message("An import is already running; wait for it or cancel it.", "info", 5000)
            return None
        self.message.hide()
        self.problems.setRowCount(0)
        self._problem_rows = []
        self.problem_details.hide()
        self.import_summary.setText("")
        self.import_progress.begin(f"Importing {len(paths)} item(s)…")
        self._set_busy(True)
        job = self.runner.start("import", lambda progress, cancel: session.ingest(
            paths, progress=progress, cancel=cancel), keep_partial=True)
        job.progress.connect(self.import_progress.update_progress)  # counts, rate and time left
        job.succeeded.connect(self._on_imported)
        job.failed.connect(self._on_import_failed)
        job.cancelled.connect(lambda: self.import_summary.setText("Import cancelled."))
        job.finished.connect(self._on_import_done)
        self._import_job = job
        return job

    def cancel_import(self) -> None:
        if self._import_job is not None:
            self._import_job.cancel_event.set()  # the ingest stops after its current batch
            self.import_progress.cancel_button.setEnabled(False)
            self.import_progress.label.setText("Cancelling after the current batch…")

    def _on_imported(self, report: Any) -> None:
        self.last_report = report
        rows = [(status, path, for_the_window(reason)) for status, path, reason in problem_rows(report)]
        self._problem_rows = rows
        _fill(self.problems, [[status, Path(path).name, reason] for status, path, reason in rows])
        for row, (_status, path, reason) in enumerate(rows):
            self.problems.item(row, 1).setToolTip(path)
            self.problems.item(row, 2).setToolTip(f"<p>{html.escape(reason)}</p>")  # rich text wraps
        self.problems.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.problems.resizeRowsToContents()
        if rows:
            self.problems.setCurrentCell(0, 2)
        self._show_problem(0 if rows else -1)
        added = _count(getattr(report, "added", 0))
        skipped = _count(getattr(report, "skipped", 0))
        failed = _count(getattr(report, "failed", 0))
        rate = self.import_progress.rate
        text = f"Added {added:,} · skipped {skipped:,} · failed {failed:,}"
        if rate:
            text += f" · {rate:.1f} files/s"
        if getattr(report, "cancelled", False) or (self._import_job and self._import_job.is_cancelled):
            text = "Import cancelled. " + text
        self.import_summary.setText(text)
        if failed:
            self.message.show_message(f"{failed} file(s) could not be imported; see the table for the "
                                      "reasons. The rest was imported.", "warning")
        self.importFinished.emit(report)

    def _show_problem(self, row: int) -> None:
        """The selected problem in full under the table: whole path, whole reason, wrapped."""
        rows = self._problem_rows
        if not 0 <= row < len(rows):
            self.problem_details.hide()
            return
        status, path, reason = rows[row]
        self.problem_details.setText(f"<b>{html.escape(Path(path).name)}</b> ({status}) — {html.escape(path)}"
                                     f"<br>{html.escape(reason)}")
        self.problem_details.show()

    def _on_import_failed(self, exc: BaseException) -> None:
        self.message.show_error(exc)
        self.import_summary.setText(f"Import stopped: {describe(exc)}")

    def _on_import_done(self) -> None:
        self.import_progress.finish()
        self._set_busy(False)
        self.state.refresh()

    def shutdown(self) -> None:
        self.browser.shutdown()

    def _set_busy(self, busy: bool) -> None:
        self.import_files_button.setEnabled(not busy and self.state.is_open)
        self.import_folder_button.setEnabled(not busy and self.state.is_open)

    def dragEnterEvent(self, event) -> None:
        if local_paths(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = local_paths(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.import_paths(paths)

    # -- models -------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        session = self.state.session
        if session is None:
            return
        job = self.runner.start("list models", lambda _p, _c: session.models())
        job.succeeded.connect(self._show_models)
        job.failed.connect(self.message.show_error)

    def _show_models(self, models: list[dict[str, Any]]) -> None:
        rows = [[m.get("id"), m.get("name"), m.get("method"), "/".join(str(b) for b in (m.get("bits") or [])),
                 "●" if m.get("active") else "", headline_map(m)] for m in models]
        _fill(self.models, rows, [m.get("id") for m in models])

    def selected_model_id(self) -> Any:
        row = self.models.currentRow()
        item = self.models.item(row, 0) if row >= 0 else None
        return item.data(Qt.ItemDataRole.UserRole) if item else None

    def activate_selected(self) -> None:
        model_id = self.selected_model_id()
        if model_id is None:
            self.message.show_message("Select a model in the table first.", "info", 4000)
            return
        self.activate_model(model_id)

    def activate_model(self, model_id: Any, reencode: bool = False) -> JobHandle | None:
        session = self.state.session
        if session is None:
            return None
        job = self.runner.start("activate model", lambda _p, _c: session.set_active_model(model_id))
        job.failed.connect(self.message.show_error)
        job.succeeded.connect(lambda _r: self._after_model_change(reencode))
        return job

    def _after_model_change(self, reencode: bool) -> None:
        self.refresh_models()
        self.state.refresh()
        if reencode:
            self.encode_library()

    def choose_checkpoint(self) -> None:
        name = QFileDialog.getExistingDirectory(self, "Checkpoint folder", self.settings.last_dir("checkpoint"))
        if name:
            self.register_checkpoint(Path(name))

    def register_checkpoint(self, folder: Path, activate: bool = True) -> JobHandle | None:
        session = self.state.session
        if session is None:
            return None
        job = self.runner.start("register model", lambda _p, _c: session.register_checkpoint(
            folder, activate=activate))
        job.failed.connect(self.message.show_error)
        job.succeeded.connect(lambda _id: self._after_model_change(False))
        return job

    def encode_library(self) -> JobHandle | None:
        session = self.state.session
        if session is None or (self._encode_job is not None and not self._encode_job.done):
            return None
        self.encode_progress.begin("Encoding the library with the active model…")
        self.encode_button.setEnabled(False)
        job = self.runner.start("encode library", lambda progress, cancel: session.encode_library(
            progress=lambda done, total: progress({"done": done, "total": total}), cancel=cancel),
            keep_partial=True)
        job.progress.connect(self.encode_progress.update_progress)
        job.failed.connect(self.message.show_error)
        job.succeeded.connect(self._on_encoded)
        job.finished.connect(self._on_encode_done)
        self._encode_job = job
        return job

    def cancel_encode(self) -> None:
        if self._encode_job is not None:
            self._encode_job.cancel_event.set()
            self.encode_progress.cancel_button.setEnabled(False)

    def _on_encoded(self, count: Any) -> None:
        self.message.show_message(f"Encoded {count:,} cases with the active model." if isinstance(count, int)
                                  else "The library was encoded with the active model.", "info", 6000)
        self.encodeFinished.emit(count)

    def _on_encode_done(self) -> None:
        self.encode_progress.finish()
        self.encode_button.setEnabled(self.state.is_open)
        self.refresh_indexes()
        self.state.refresh()

    # -- indexes ------------------------------------------------------------------------------
    def refresh_indexes(self) -> None:
        session = self.state.session
        if session is None:
            return
        job = self.runner.start("index status", lambda _p, _c: session.index_status())
        job.succeeded.connect(self._show_indexes)
        job.failed.connect(self.message.show_error)

    def _show_indexes(self, rows: list[dict[str, Any]]) -> None:
        _fill(self.indexes, [[r.get("model_id"), r.get("modality"), r.get("bits"), r.get("count"),
                              r.get("state")] for r in rows])

    def rebuild_indexes(self) -> None:
        session = self.state.session
        if session is None:
            return
        self.rebuild_button.setEnabled(False)
        job = self.runner.start("rebuild indexes", lambda _p, _c: session.rebuild_indexes())
        job.failed.connect(self.message.show_error)
        job.succeeded.connect(lambda _r: self.message.show_message("Indexes rebuilt.", "info", 4000))
        job.finished.connect(lambda: (self.rebuild_button.setEnabled(self.state.is_open), self.refresh_indexes()))
