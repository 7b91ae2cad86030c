"""Data audit view: list the image-report pairs that most likely do not belong together and go
through them case by case (image beside its full report), so a curator can fix or drop them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medhash_app.ui.case_view import SidePane, report_html
from medhash_app.ui.messages import MessageBar, describe
from medhash_app.ui.presentation import case_labels, short_date
from medhash_app.ui.query_panel import load_for_viewer
from medhash_app.ui.session_state import SessionState
from medhash_app.ui.themes import set_role
from medhash_app.ui.workers import JobHandle, JobRunner

COLUMNS = ("Rank", "Score", "Labels", "Report excerpt")
SCORE_TITLES = {"rank": "rank score on the hash codes", "mcph": "MCPH match score on the embeddings"}


def run_audit(library: Any, top: int) -> Any:
    """The audit itself (worker thread); imported late so opening the window stays light."""
    from medhash_app.core.audit import audit_library

    return audit_library(library, top=top)


def load_case(library: Any, case_id: str) -> tuple[dict[str, Any] | None, Any]:
    """(case row, (image, presets, facts) or the exception that stopped the image) — worker thread,
    so a broken image still leaves the report readable."""
    case = library.get_case(case_id)
    if case is None:
        return None, None
    path = library.image_file(case)
    if path is None:
        return case, None
    try:
        return case, (path, *load_for_viewer(path))
    except Exception as exc:  # noqa: BLE001 - shown in plain words in the image pane
        return case, exc


class AuditView(QWidget):
    """Run the audit in the background, list the suspicious pairs, show one pair at a time."""

    auditFinished = Signal(object)  # the AuditReport
    caseShown = Signal(str)  # case id whose report and image are now on screen

    def __init__(self, state: SessionState, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runner = runner
        self.report: Any = None
        self.shown_case: dict[str, Any] | None = None
        self._audit_job: JobHandle | None = None
        self._case_job: JobHandle | None = None
        self._audited: tuple[Any, Any] = (None, None)  # (library folder, model id) of `report`
        self.message = MessageBar(self)
        self.table = self._build_table()
        self.pane = SidePane("Audited case", self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.message)
        layout.addLayout(self._build_controls())
        split = QSplitter(Qt.Orientation.Horizontal, self)
        split.addWidget(self.table)
        split.addWidget(self._build_case_side())
        split.setStretchFactor(1, 1)
        split.setSizes([620, 760])
        layout.addWidget(split, 1)
        state.changed.connect(self._on_library_changed)
        self._update_enabled()

    # -- construction -------------------------------------------------------------------------
    def _build_controls(self) -> QHBoxLayout:
        self.top_spin = QSpinBox(self)
        self.top_spin.setRange(1, 100_000)
        self.top_spin.setValue(50)
        self.top_spin.setAccessibleName("Number of pairs to list")
        self.top_spin.setToolTip("How many of the most suspicious pairs to list")
        self.run_button = QPushButton("Run audit", self)
        set_role(self.run_button, "primary")
        self.run_button.setAccessibleName("Run audit")
        self.run_button.setToolTip("Score every encoded image-report pair with the active model")
        self.run_button.clicked.connect(self.run)
        self.status_label = QLabel("Lists the image-report pairs that most likely do not belong together.", self)
        set_role(self.status_label, "muted")
        self.status_label.setAccessibleName("Audit status")
        self.export_button = QPushButton("Export CSV…", self)
        self.export_button.setAccessibleName("Export audit as CSV")
        self.export_button.clicked.connect(self.choose_csv)
        row = QHBoxLayout()
        label = QLabel("Pairs to &list", self)
        label.setBuddy(self.top_spin)
        row.addWidget(label)
        row.addWidget(self.top_spin)
        row.addWidget(self.run_button)
        row.addWidget(self.status_label, 1)
        row.addWidget(self.export_button)
        return row

    def _build_table(self) -> QTableWidget:
        table = QTableWidget(0, len(COLUMNS), self)
        table.setHorizontalHeaderLabels(list(COLUMNS))
        table.setAccessibleName("Suspicious pairs")
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setAlternatingRowColors(True)
        table.setWordWrap(False)
        table.horizontalHeader().setStretchLastSection(True)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        table.itemSelectionChanged.connect(self._on_selection)
        return table

    def _build_case_side(self) -> QWidget:
        side = QWidget(self)
        self.prev_button = QPushButton("◀ Previous", side)
        self.next_button = QPushButton("Next ▶", side)
        for button, name in ((self.prev_button, "Previous pair"), (self.next_button, "Next pair")):
            button.setAccessibleName(name)
            button.setToolTip(f"{name} in the list")
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        buttons = QHBoxLayout()
        buttons.addWidget(self.prev_button)
        buttons.addWidget(self.next_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(side)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.pane, 1)
        layout.addLayout(buttons)
        self.pane.show_text_only("Run the audit, then choose a pair")
        return side

    # -- running the audit --------------------------------------------------------------------
    def run(self) -> JobHandle | None:
        session = self.state.session
        if session is None:
            self.message.show_message("Open a library with a trained model before running the audit.", "warning")
            return None
        if self._audit_job is not None:
            self._audit_job.cancel()
        self.message.hide()
        library, top = session.library, self.top_spin.value()
        job = self.runner.start("data audit", lambda _p, _c: run_audit(library, top))
        job.succeeded.connect(self._on_audit)
        job.failed.connect(self._on_audit_failed)
        job.finished.connect(self._update_enabled)
        self._audit_job = job
        self._audited = self._audited_for()
        self.status_label.setText("Scoring every image-report pair…")
        self._update_enabled()
        return job

    def _on_audit(self, report: Any) -> None:
        self.report = report
        self._fill(report.rows)
        kind = SCORE_TITLES.get(report.score_kind, report.score_kind)
        skipped = f" · {report.not_audited:,} not encoded" if report.not_audited else ""
        self.status_label.setText(f"{len(report.rows):,} most suspicious of {report.audited:,} pairs{skipped} · "
                                  f"model {report.model_name} ({report.bits} bits) · {kind}")
        if report.rows:
            self.table.selectRow(0)
        self.auditFinished.emit(report)

    def _on_audit_failed(self, exc: BaseException) -> None:
        self.status_label.setText("The audit did not run.")
        self.message.show_message(f"The audit could not run. {describe(exc)}", "warning")

    def _fill(self, rows: list[Any]) -> None:
        self.table.clearSelection()
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = (str(row.rank), f"{row.score:.3f}", ", ".join(row.labels), row.report_excerpt)
            for c, value in enumerate(values):
                item = QTableWidgetItem(value)
                if c < 2:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                item.setToolTip(row.report_excerpt if c == 3 else value)
                self.table.setItem(r, c, item)
            self.table.item(r, 0).setData(Qt.ItemDataRole.UserRole, row.case_id)
        self.table.resizeColumnsToContents()
        self.table.setColumnWidth(2, min(self.table.columnWidth(2), 220))

    # -- one pair at a time -------------------------------------------------------------------
    def case_ids(self) -> list[str]:
        """Case ids in table order (most suspicious first)."""
        return [self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(self.table.rowCount())]

    def current_row(self) -> int:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].row() if rows else -1

    def step(self, delta: int) -> None:
        row = self.current_row() + delta
        if 0 <= row < self.table.rowCount():
            self.table.selectRow(row)

    def _on_selection(self) -> None:
        self._update_enabled()
        row, session = self.current_row(), self.state.session
        if row < 0 or session is None or self.report is None:
            return
        audit_row = self.report.rows[row]
        if self._case_job is not None:
            self._case_job.cancel()
        self.pane.report.setHtml(report_html(f"Rank {audit_row.rank}", "Loading the report…", audit_row.labels,
                                             audit_row.report_excerpt, []))
        self.pane.show_text_only("Loading image…")
        library = session.library
        job = self.runner.start("audit case", lambda _p, _c: load_case(library, audit_row.case_id))
        job.succeeded.connect(lambda value, r=audit_row: self._show_case(r, *value))
        job.failed.connect(lambda exc: self.pane.show_text_only(describe(exc)))
        self._case_job = job

    def _show_case(self, row: Any, case: dict[str, Any] | None, image: Any) -> None:
        if case is None:
            self.pane.show_text_only("This case is no longer in the library")
            return
        self.shown_case = case
        facts = " · ".join(v for v in (case.get("modality"), case.get("view"), short_date(case.get("study_date")),
                                       f"score {row.score:.3f}", *self._rank_facts(row)) if v)
        self.pane.report.setHtml(report_html(f"Rank {row.rank}", facts, case_labels(case),
                                             case.get("report") or "", []))
        if image is None:
            self.pane.show_text_only("The image of this case is not available")
        elif isinstance(image, BaseException):
            self.pane.show_text_only(describe(image))
        else:
            path, img, presets, _facts = image
            self.pane.show_image(img, presets, path.name)
        self.caseShown.emit(row.case_id)

    def _rank_facts(self, row: Any) -> tuple[str, ...]:
        """Where each half of the pair ranks the other among all audited pairs (1 = best match)."""
        n = self.report.audited
        return (f"its report ranks {row.rank_i2t:.0f} of {n:,} for this image",
                f"this image ranks {row.rank_t2i:.0f} of {n:,} for its report")

    # -- export and state ---------------------------------------------------------------------
    def export_csv(self, path: Path) -> Path:
        return self.report.write_csv(path)

    def choose_csv(self) -> None:
        if self.report is None:
            return
        name, _ = QFileDialog.getSaveFileName(self, "Export audit", "medhash-audit.csv", "CSV (*.csv)")
        if not name:
            return
        try:
            saved = self.export_csv(Path(name))
        except OSError as exc:
            self.message.show_error(exc)
            return
        self.message.show_message(f"Saved {saved.name}", "info", 4000)

    def _on_library_changed(self) -> None:
        """A different library or active model: the old list no longer applies."""
        if self.report is not None and self._audited_for() == self._audited:
            self._update_enabled()
            return
        if self._audit_job is not None:
            self._audit_job.cancel()  # its result would describe the previous library
        self.report, self.shown_case = None, None
        self.table.setRowCount(0)
        self.pane.report.clear()
        self.pane.show_text_only("Run the audit, then choose a pair")
        self._update_enabled()

    def _audited_for(self) -> tuple[Any, Any]:
        return self.state.info.library_dir, (self.state.info.model or {}).get("id")

    def _update_enabled(self) -> None:
        running = self._audit_job is not None and not self._audit_job.done
        row, count = self.current_row(), self.table.rowCount()
        self.run_button.setEnabled(self.state.is_open and not running)
        self.export_button.setEnabled(self.report is not None and not running)
        self.prev_button.setEnabled(row > 0)
        self.next_button.setEnabled(0 <= row < count - 1)
