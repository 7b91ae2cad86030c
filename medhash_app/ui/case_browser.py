"""Library tab's case browser: a thumbnail grid or a list of one page of cases at a time, sorted
and filtered like the search results; double-click opens the case view.

The rows come from core.library.browse (one SQL page per view); thumbnails are read by the
background ThumbnailLoader only for the rows a view paints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListView,
    QStackedWidget,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from medhash_app.core.library.browse import SORT_TITLES, CasePage, browse_cases, thumbnail_bytes
from medhash_app.ui.case_view import CaseView
from medhash_app.ui.filter_bar import FilterBar, FilterOptions, read_filter_options
from medhash_app.ui.presentation import case_labels, short_date
from medhash_app.ui.session_state import SessionState
from medhash_app.ui.themes import set_role, style_toggle
from medhash_app.ui.thumbnails import ThumbnailLoader
from medhash_app.ui.workers import JobHandle, JobRunner

PAGE_SIZE = 200
THUMB = 128
COLUMNS = ("Image", "File", "Modality", "View", "Side", "Date", "Labels", "Split", "Report")


class CasePageModel(QAbstractTableModel):
    """One page of cases; asks the loader for a thumbnail the first time a row is painted."""

    def __init__(self, loader: ThumbnailLoader, parent: Any = None) -> None:
        super().__init__(parent)
        self.loader = loader
        self.cases: list[dict[str, Any]] = []
        self._thumbs: dict[str, QIcon] = {}
        self._asked: set[str] = set()
        self._row_of: dict[str, int] = {}
        self.captions = True  # grid: a caption under each thumbnail
        loader.loaded.connect(self._on_thumb)

    def set_cases(self, cases: list[dict[str, Any]]) -> None:
        self.beginResetModel()
        self.loader.clear()
        self.cases = cases
        self._thumbs.clear()
        self._asked.clear()
        self._row_of = {str(c["id"]): r for r, c in enumerate(cases)}
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self.cases)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        case = self.cases[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DecorationRole and col == 0:
            return self._thumb(case)
        if role == Qt.ItemDataRole.SizeHintRole and col == 0:  # the grid cell, before its thumbnail arrives
            return QSize(THUMB + 16, THUMB + 36)
        if role == Qt.ItemDataRole.TextAlignmentRole and col == 0:
            return int(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        if role == Qt.ItemDataRole.UserRole:
            return case
        if role == Qt.ItemDataRole.ToolTipRole:
            return "\n".join(v for v in (Path(case.get("source_path") or "").name, ", ".join(case_labels(case)),
                                         (case.get("report") or "")[:300]) if v)
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if col == 0 and not self.captions:  # the list shows the facts in their own columns
            return None
        if col == 0:  # the grid's caption: what the case shows, else its file name
            facts = [case.get("modality"), case.get("view"), case.get("laterality"), short_date(case.get("study_date"))]
            caption = " · ".join(str(v) for v in [*facts, ", ".join(case_labels(case))] if v)
            return caption or Path(case.get("source_path") or "").name or "case"
        return [None, Path(case.get("source_path") or "").name, case.get("modality"), case.get("view"),
                case.get("laterality"), short_date(case.get("study_date")), ", ".join(case_labels(case)),
                case.get("split"), " ".join((case.get("report") or "").split())[:200]][col]

    def _thumb(self, case: dict[str, Any]) -> QIcon | None:
        case_id = str(case["id"])
        if case_id in self._thumbs:
            return self._thumbs[case_id]
        if case_id not in self._asked:
            self._asked.add(case_id)
            self.loader.request(case)
        return None

    def _on_thumb(self, case_id: str, image: QImage) -> None:
        row = self._row_of.get(case_id)
        if row is None:
            return
        self._thumbs[case_id] = QIcon(QPixmap.fromImage(image).scaled(  # an icon: each view scales it
            THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))
        index = self.index(row, 0)
        self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])


class CaseBrowser(QWidget):
    """Filter bar, sort and page controls over a grid (thumbnails) or a list (one row per case)."""

    pageShown = Signal(object)  # the CasePage now on screen

    def __init__(self, state: SessionState, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state, self.runner = state, runner
        self.page: CasePage | None = None
        self._page_index = 0
        self._job: JobHandle | None = None
        self.case_dialog: QDialog | None = None
        self.loader = ThumbnailLoader(self._read_thumb, self)
        self.model = CasePageModel(self.loader, self)
        self.filters = FilterBar(self)
        self.filters.set_search_controls_visible(False)
        self.filters.changed.connect(self.first_page)
        self.filters.viewModeChanged.connect(self.set_view_mode)
        self.sort = QComboBox(self)
        self.sort.setAccessibleName("Sort cases by")
        for key, title in SORT_TITLES.items():
            self.sort.addItem(title, key)
        self.sort.currentIndexChanged.connect(self.first_page)
        self.descending = QToolButton(self)
        self.descending.setCheckable(True)
        self.descending.setText("Descending")
        self.descending.setAccessibleName("Sort descending")
        style_toggle(self.descending)
        self.descending.toggled.connect(self.first_page)
        self.prev_button = QToolButton(self)
        self.prev_button.setText("◀ Previous")
        self.prev_button.setAccessibleName("Previous page")
        self.prev_button.clicked.connect(lambda: self.show_page(self._page_index - 1))
        self.next_button = QToolButton(self)
        self.next_button.setText("Next ▶")
        self.next_button.setAccessibleName("Next page")
        self.next_button.clicked.connect(lambda: self.show_page(self._page_index + 1))
        self.page_label = QLabel("", self)
        set_role(self.page_label, "muted")
        self.page_label.setAccessibleName("Page")

        self.grid = QListView(self)
        self.grid.setAccessibleName("Case thumbnails")
        self.grid.setViewMode(QListView.ViewMode.IconMode)
        self.grid.setResizeMode(QListView.ResizeMode.Adjust)
        self.grid.setMovement(QListView.Movement.Static)
        self.grid.setUniformItemSizes(True)
        self.grid.setIconSize(QSize(THUMB, THUMB))
        self.grid.setGridSize(QSize(THUMB + 24, THUMB + 44))
        self.grid.setSpacing(4)
        self.grid.setWordWrap(True)
        self.grid.setModel(self.model)
        self.table = QTableView(self)
        self.table.setAccessibleName("Case list")
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(52)
        self.table.setIconSize(QSize(48, 48))
        self.table.setAlternatingRowColors(True)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        for column, width in ((0, 60), (1, 220), (2, 80), (3, 60), (4, 50), (5, 90), (6, 200), (7, 60)):
            self.table.setColumnWidth(column, width)
        for view in (self.grid, self.table):
            view.doubleClicked.connect(self._on_double_click)
            view.activated.connect(self._on_double_click)
        self.stack = QStackedWidget(self)
        self.stack.addWidget(self.table)
        self.stack.addWidget(self.grid)
        self.empty = QLabel("", self)
        set_role(self.empty, "muted")

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Sort by", self))
        controls.addWidget(self.sort)
        controls.addWidget(self.descending)
        controls.addStretch(1)
        controls.addWidget(self.prev_button)
        controls.addWidget(self.page_label)
        controls.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.filters)
        layout.addLayout(controls)
        layout.addWidget(self.empty)
        layout.addWidget(self.stack, 1)
        self.set_view_mode("grid")
        state.changed.connect(self._on_session_changed)
        self._on_session_changed()

    # -- data ---------------------------------------------------------------------------------
    def _on_session_changed(self) -> None:
        session = self.state.session
        if session is None:
            self.model.set_cases([])
            self.page = None
            self._update_controls()
            return
        self.filters.set_options(FilterOptions(), [])
        job = self.runner.start("browse filter options", lambda _p, _c: read_filter_options(session.library))
        job.succeeded.connect(lambda options: self.filters.set_options(options, []))
        self.show_page(0)

    def first_page(self, *_: Any) -> None:
        self.show_page(0)

    def show_page(self, page: int) -> JobHandle | None:
        session = self.state.session
        if session is None:
            return None
        flt, sort, desc = self.filters.case_filter(), self.sort.currentData(), self.descending.isChecked()
        if self._job is not None and not self._job.done:
            self._job.cancel()
        job = self.runner.start("browse cases", lambda _p, _c: browse_cases(
            session.library, flt, sort=sort, descending=desc, page=page, page_size=PAGE_SIZE))
        job.succeeded.connect(self._on_page)
        job.failed.connect(lambda exc: self.empty.setText(f"The cases could not be read: {exc}"))
        self._job = job
        return job

    def _on_page(self, page: CasePage) -> None:
        self.page, self._page_index = page, page.page
        self.model.set_cases(page.cases)
        self.grid.scrollToTop()
        self.table.scrollToTop()
        self._update_controls()
        self.pageShown.emit(page)

    def _update_controls(self) -> None:
        page = self.page
        if page is None:
            self.page_label.setText("")
            self.empty.setText("Open a library to browse its cases.")
            self.empty.show()
        else:
            first = page.page * page.page_size + 1 if page.total else 0
            last = page.page * page.page_size + len(page.cases)
            self.page_label.setText(f"{first:,}–{last:,} of {page.total:,} cases · page {page.page + 1} of "
                                    f"{page.pages:,}")
            self.empty.setText("No case matches these filters." if page.total == 0 else "")
            self.empty.setVisible(page.total == 0)
        self.prev_button.setEnabled(page is not None and page.page > 0)
        self.next_button.setEnabled(page is not None and page.page + 1 < page.pages)

    def _read_thumb(self, case: dict[str, Any]) -> bytes | None:
        session = self.state.session
        return thumbnail_bytes(session.library, case) if session is not None else None

    # -- views --------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return "grid" if self.stack.currentWidget() is self.grid else "list"

    def set_view_mode(self, mode: str) -> None:
        self.model.beginResetModel()
        self.model.captions = mode == "grid"
        self.model.endResetModel()
        self.stack.setCurrentWidget(self.grid if mode == "grid" else self.table)
        self.filters.set_view_mode(mode)

    def _on_double_click(self, index: QModelIndex) -> None:
        case = self.model.data(index, Qt.ItemDataRole.UserRole)
        if case is not None:
            self.open_case(case)

    def open_case(self, case: dict[str, Any]) -> CaseView:
        session = self.state.session
        if self.case_dialog is None:
            dialog = QDialog(self)
            dialog.setWindowTitle("Case — MedHash")
            dialog.setAccessibleName("Case view")
            dialog.view = CaseView(self.runner, lambda c: (self.state.session.library.image_file(c)
                                                          if self.state.session is not None else None), dialog)
            layout = QVBoxLayout(dialog)
            layout.addWidget(dialog.view)
            dialog.resize(900, 800)
            self.case_dialog = dialog
        view: CaseView = self.case_dialog.view
        name = Path(case.get("source_path") or "").name or "Case"
        view.load_case(case, title=name)
        self.case_dialog.setWindowTitle(f"{name} — MedHash")
        self.case_dialog.show()
        self.case_dialog.raise_()
        del session
        return view

    def shutdown(self) -> None:
        self.loader.stop()
