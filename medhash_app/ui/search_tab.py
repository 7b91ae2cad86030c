"""Search tab: query (image or report) on the left, filters and ranked results on the right."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QSplitter, QVBoxLayout, QWidget

from medhash_app.ui.archive_bar import ArchiveBar
from medhash_app.ui.archive_dialog import OpenArchiveDialog
from medhash_app.ui.case_view import CaseDialog
from medhash_app.ui.dropping import FILE_DIALOG_FILTER, query_candidates
from medhash_app.ui.export import export_csv, export_summary
from medhash_app.ui.filter_bar import FilterBar, FilterOptions, read_filter_options
from medhash_app.ui.messages import MessageBar, describe
from medhash_app.ui.query_panel import QueryPanel
from medhash_app.ui.results_model import ResultsModel
from medhash_app.ui.results_view import ResultsView
from medhash_app.ui.session_state import SessionState
from medhash_app.ui.settings import AppSettings
from medhash_app.ui.themes import set_role
from medhash_app.ui.thumbnails import ThumbnailLoader
from medhash_app.ui.workers import JobHandle, JobRunner

if TYPE_CHECKING:
    from medhash_app.core.archive.workstation import ArchiveAnswer, ArchiveInfo
    from medhash_app.core.search.types import Hit, SearchQuery, SearchResult


@dataclass(frozen=True)
class ShownQuery:
    """The query a result list belongs to (the panel may have moved on since it was run)."""

    mode: str  # "image" or "text"
    image_path: Path | None
    text: str
    description: str  # "Image query cxr_001.dcm" / "Report query “…”"
    target: str  # what it searched: "reports", "images" or "both"

    def same_query(self, other: ShownQuery | None) -> bool:
        return other is not None and (self.mode, self.image_path, self.text) == (other.mode, other.image_path,
                                                                                 other.text)


class SearchTab(QWidget):
    """Runs one search at a time: a new request cancels the one in flight (its result is dropped)."""

    searchFinished = Signal(object, float)  # SearchResult, wall milliseconds request -> shown
    searchFailed = Signal(object)
    statusMessage = Signal(str)

    def __init__(self, state: SessionState, runner: JobRunner, settings: AppSettings,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runner = runner
        self.settings = settings
        self.result: SearchResult | None = None
        self.result_query: ShownQuery | None = None  # the query `result` answers
        self._job: JobHandle | None = None
        self._started = 0.0
        self.case_dialog: CaseDialog | None = None

        self.query = QueryPanel(runner, self)
        self.filters = FilterBar(self)
        self.loader = ThumbnailLoader(self._read_thumb, self)
        self.model = ResultsModel(self.loader, self)
        self.results = ResultsView(self.model, self)
        self.message = MessageBar(self)
        self.archive_bar = ArchiveBar(runner, self)  # shown while searches go to a shared archive
        self.summary = QLabel("Open a library, then drop an image or type a report.", self)
        set_role(self.summary, "muted")
        self.summary.setAccessibleName("Search summary")
        self.csv_button = QPushButton("Export CSV…", self)
        self.csv_button.setAccessibleName("Export results as CSV")
        self.csv_button.setToolTip("Save the ranked list as a CSV file (Ctrl+E)")
        self.pdf_button = QPushButton("Export summary…", self)
        self.pdf_button.setAccessibleName("Export summary")
        self.pdf_button.setToolTip("Save a one-page summary as PDF or PNG (Ctrl+P)")
        self.csv_button.clicked.connect(self.choose_csv)
        self.pdf_button.clicked.connect(self.choose_summary)
        self._layout()
        self._connect()
        self.filters.set_target(settings.search_target(self.query.mode))
        self.filters.k.setValue(settings.page_size())
        self.set_view_mode(settings.results_view())
        self._update_enabled()

    def _layout(self) -> None:
        right = QWidget(self)
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(6)
        right_layout.addWidget(self.archive_bar)
        right_layout.addWidget(self.filters)
        line = QHBoxLayout()
        line.addWidget(self.summary, 1)
        line.addWidget(self.csv_button)
        line.addWidget(self.pdf_button)
        right_layout.addLayout(line)
        right_layout.addWidget(self.results, 1)
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.addWidget(self.query)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setSizes([520, 780])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.message)
        layout.addWidget(self.splitter, 1)

    def _connect(self) -> None:
        self.query.searchRequested.connect(self.search)
        self.query.modeChanged.connect(self._on_mode_changed)
        self.query.problem.connect(self.message.show_error)
        self.filters.changed.connect(self._on_filters_changed)
        self.filters.viewModeChanged.connect(self.set_view_mode)
        self.results.hitActivated.connect(self.open_case)
        self.state.changed.connect(self._on_session_changed)  # Ctrl+Enter lives on the window's action
        self.archive_bar.opened.connect(self._on_archive_opened)
        self.archive_bar.closed.connect(self._on_archive_closed)
        self.archive_bar.failed.connect(self._on_archive_failed)
        self.archive_bar.modeChanged.connect(self._on_filters_changed)

    # -- query input --------------------------------------------------------------------------
    def open_paths(self, paths: list[Path]) -> JobHandle | None:
        """Files or folders dropped or chosen: list the candidate files (off-thread when a folder
        must be walked) and make the first one the query."""
        if paths and all(p.is_file() for p in paths):
            self._on_candidates(list(paths))
            return None
        job = self.runner.start("list query files", lambda _p, _c: query_candidates(paths))
        job.succeeded.connect(self._on_candidates)
        job.failed.connect(self.message.show_error)
        return job

    def _on_candidates(self, files: list[Path]) -> None:
        if not files:
            self.message.show_message("No image files were found in what was dropped.", "warning")
            return
        self.message.hide()
        self.query.set_files(files)

    def choose_file(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Open query image", self.settings.last_dir("query"),
                                              FILE_DIALOG_FILTER)
        if name:
            self.settings.set_last_dir("query", Path(name).parent)
            self.open_paths([Path(name)])

    # -- searching ----------------------------------------------------------------------------
    def build_query(self) -> SearchQuery | None:
        from medhash_app.core.search.types import SearchQuery  # lazy: the search package loads torch

        if self.query.mode == "image":
            if self.query.image_path is None:
                return None
            base = SearchQuery(image_path=self.query.image_path, image=self.query.image)  # decoded: not again
        else:
            if not self.query.text():
                return None
            base = SearchQuery(text=self.query.text())
        base.target = self.filters.target_value()  # type: ignore[assignment]
        base.k = self.filters.k.value()
        base.bits = self.filters.bits_value()
        base.filters = self.filters.filters()
        return base

    def shown_query(self, query: SearchQuery) -> ShownQuery:
        mode = self.query.mode
        return ShownQuery(mode, self.query.image_path if mode == "image" else None,
                          self.query.text() if mode == "text" else "", self.query.describe(), str(query.target))

    def search(self) -> JobHandle | None:
        """Start a search with the current query and choices; cancels the one still running."""
        session = self.state.session
        archive = self.archive_bar.client is not None  # an archive is searched with or without a library
        if session is None and not archive:
            self.message.show_message("Open or create a library first (Library tab, or Ctrl+L), or open a "
                                      "shared archive (File → Open archive…).", "warning")
            return None
        query = self.build_query()
        if query is None:
            self.message.show_message("Give a query first: drop an image, or type a report and press "
                                      "Ctrl+Enter.", "info", 5000)
            return None
        if self._job is not None:
            self._job.cancel()
        shown = self.shown_query(query)
        if not shown.same_query(self.result_query):  # a list never stands beside another query
            self.clear_results()
        self.settings.set_search_target(query.target, shown.mode)
        self.settings.set_page_size(query.k)
        self.message.hide()
        self.summary.setText(f"{shown.description}: searching…")
        self._started = time.perf_counter()
        job = self.runner.start("archive search" if archive else "search",
                                self.archive_bar.search_job(session, query) if archive
                                else lambda _p, _c: session.search(query))
        job.succeeded.connect(lambda result, shown=shown: self._on_result(result, shown))
        job.failed.connect(lambda exc, shown=shown: self._on_failed(exc, shown))
        self._job = job
        return job

    def clear_results(self, summary: str | None = None) -> None:
        """Empty the list (and what exports it) so no result stands beside a query it does not answer."""
        self.result, self.result_query = None, None
        self.model.set_result(None)
        self.query.set_query_findings([])
        if summary is not None:
            self.summary.setText(summary)
        self._update_enabled()

    def _on_result(self, result: SearchResult | ArchiveAnswer, shown: ShownQuery) -> None:
        answered = ""
        if not hasattr(result, "hits"):  # an archive search: the result plus who answered
            answered = " · archive, " + self.archive_bar.show_answer(result)
            result = result.result
        self.result, self.result_query = result, shown
        self.model.set_result(result)
        self.query.set_query_findings(result.query_findings)
        elapsed = (time.perf_counter() - self._started) * 1000
        what = {"reports": "reports", "images": "images"}.get(shown.target, "cases")
        self.summary.setText(
            f"{shown.description}: {len(result.hits)} {what} · {result.bits}-bit codes · {elapsed:.0f} ms "
            f"(encode {result.encode_ms:.0f} ms, search {result.search_ms:.0f} ms)"
            + (" · filtered" if self.filters.is_filtering() else "") + answered)
        if result.out_of_domain:  # above the results, until the next search (core/search/ood.py)
            self.message.show_message(f"Out of domain: {result.out_of_domain_reason}", "warning")
        elif self.message.text().startswith("Out of domain:"):
            self.message.hide()
        if not result.hits:
            self.message.show_message("No case matches this query with the current filters.", "info", 6000)
        self._update_enabled()
        self.statusMessage.emit(f"Search took {elapsed:.0f} ms on {result.device}{answered}")
        self.searchFinished.emit(result, elapsed)

    def _on_failed(self, exc: BaseException, shown: ShownQuery) -> None:
        self.clear_results(f"{shown.description}: search failed.")
        self.message.show_error(exc)
        if self.archive_bar.client is not None:
            self.statusMessage.emit(f"Archive search failed: {describe(exc)}")
        self.searchFailed.emit(exc)

    # -- shared archive (core/archive/workstation.py) -----------------------------------------
    def open_archive(self, target: str, mirror_folder: Path | None) -> JobHandle | None:
        """Search a shared archive instead of the library (whose active model encodes the queries)."""
        self.statusMessage.emit("Connecting to the archive…")
        return self.archive_bar.open_archive(target, mirror_folder, self.state.session)

    def choose_archive(self) -> None:
        dialog = OpenArchiveDialog(self.settings.last_archive(), self.settings.archive_mirror(), self)
        if dialog.exec() == OpenArchiveDialog.DialogCode.Accepted and dialog.target():
            self.open_archive(dialog.target(), dialog.mirror_folder())

    def _on_archive_opened(self, info: ArchiveInfo) -> None:
        self.settings.set_last_archive(self.archive_bar.client.target, self.archive_bar.client.mirror_folder is not None)
        self.clear_results(f"Archive {info.label}: {info.cases:,} cases · queries are encoded by {info.encoded_by}")
        self.message.hide()
        if self.state.session is not None and info.model_id is None:
            self.message.show_message(f"Archive {info.label}: the library's active model was never published "
                                      "there, so its queries cannot be searched in it (medhash archive publish).",
                                      "warning")
        self.statusMessage.emit(f"Searching the archive {info.label}")

    def _on_archive_closed(self) -> None:
        self.clear_results("Searching the local library.")
        self.statusMessage.emit("Searching the local library")

    def _on_archive_failed(self, exc: BaseException) -> None:
        text = describe(exc)
        self.message.show_message(f"Archive: {text}", "warning")
        self.statusMessage.emit(f"Archive: {text}")

    def _on_mode_changed(self, mode: str) -> None:
        """Image query <-> Report query: each kind finds its own default target, and the list of the
        other query goes (the panel re-runs the search when the new mode already has a query)."""
        self.filters.target.blockSignals(True)  # not a filter change: no debounced re-search
        self.filters.set_target(self.settings.search_target(mode))
        self.filters.target.blockSignals(False)
        if self._job is not None:
            self._job.cancel()
            self._job = None
        self.clear_results(f"{self.query.describe()}: " + (
            "press Ctrl+Enter to search." if self.query.has_query() else
            "drop or open an image." if mode == "image" else "type a report and press Ctrl+Enter."))

    def _on_filters_changed(self) -> None:
        self.settings.set_search_bits(self.filters.bits_value())
        if self.result is not None and self.query.has_query():
            self.search()

    # -- results ------------------------------------------------------------------------------
    def set_view_mode(self, mode: str) -> None:
        self.results.set_mode(mode)
        self.filters.set_view_mode(mode)
        self.settings.set_results_view(mode)

    def toggle_view_mode(self) -> None:
        self.set_view_mode("grid" if self.results.mode == "list" else "list")

    def open_case(self, hit: Hit) -> CaseDialog:
        if self.case_dialog is None:
            self.case_dialog = CaseDialog(self.runner, self._case_image_path, self.model.all_hits, self)
            self.query.imageLoaded.connect(lambda _img: self._refresh_case_query())
        self._refresh_case_query()
        self.case_dialog.show_hit(hit)
        self.case_dialog.show()
        self.case_dialog.raise_()
        return self.case_dialog

    def _refresh_case_query(self) -> None:
        """Show the query the results answer on the case view's left side (again, once its image is
        decoded): not whatever the query panel holds now."""
        if self.case_dialog is None or self.result_query is None:
            return
        shown, qp = self.result_query, self.query
        image = qp.image if shown.mode == "image" and qp.image_path == shown.image_path else None
        caption = shown.image_path.name if shown.mode == "image" and shown.image_path else "Report query"
        self.case_dialog.view.set_query(image, qp.viewer_panel.viewer.presets if image is not None else None,
                                        shown.text, self.result.query_findings if self.result else [], caption,
                                        kind=shown.mode)

    def choose_csv(self) -> None:
        if self.result is None:
            return
        name, _ = QFileDialog.getSaveFileName(self, "Export results", str(Path(self.settings.last_dir("export"))
                                              / "medhash-results.csv"), "CSV (*.csv)")
        if name:
            self.settings.set_last_dir("export", Path(name).parent)
            self._report_saved(lambda: export_csv(self.result, Path(name)), Path(name))

    def choose_summary(self) -> None:
        name, _ = QFileDialog.getSaveFileName(self, "Export summary", str(Path(self.settings.last_dir("export"))
                                              / "medhash-summary.pdf"), "PDF (*.pdf);;PNG image (*.png)")
        if name:
            self.settings.set_last_dir("export", Path(name).parent)
            self._report_saved(lambda: self.export_summary(Path(name)), Path(name))

    def export_summary(self, path: Path) -> Path:
        return export_summary(self.splitter, path, "MedHash similar-case search")

    def _report_saved(self, action: Any, path: Path) -> None:
        try:
            action()
        except OSError as exc:
            self.message.show_error(exc)
            return
        self.message.show_message(f"Saved {path.name}", "info", 4000)

    # -- library ------------------------------------------------------------------------------
    def _on_session_changed(self) -> None:
        self.clear_results()
        session = self.state.session
        self.archive_bar.set_session(session)
        self._update_enabled()
        if session is None:
            self.summary.setText("Open a library, then drop an image or type a report.")
            return
        info = self.state.info
        self.summary.setText(f"{info.case_count} cases in the library · model: {info.model_name}")
        self.filters.set_options(FilterOptions(), info.model_bits)
        self.filters.set_bits(self.settings.search_bits())
        job = self.runner.start("filter options", lambda _p, _c: read_filter_options(session.library))
        job.succeeded.connect(lambda options: self.filters.set_options(options, self.state.info.model_bits))

    def _read_thumb(self, case: dict[str, Any]) -> bytes | None:
        if "archive_case_id" in case:  # an archive hit: its published thumbnail (loader thread)
            client = self.archive_bar.client
            return client.thumbnail(case["archive_case_id"]) if client is not None else None
        session = self.state.session
        rel = case.get("thumb_path")
        if session is None or not rel:
            return None
        return session.library.path_of(rel).read_bytes()

    def _case_image_path(self, case: dict[str, Any]) -> Path | None:
        session = self.state.session
        return session.library.image_file(case) if session is not None else None

    def _update_enabled(self) -> None:
        has = self.result is not None and bool(self.result.hits)
        self.csv_button.setEnabled(has)
        self.pdf_button.setEnabled(has)

    def shutdown(self) -> None:
        self.loader.stop()
        self.archive_bar.shutdown()
