"""Case view: a hit's full image, report and labels side by side with the query."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from medhash_app.ui.export import export_summary
from medhash_app.ui.messages import MessageBar, describe
from medhash_app.ui.presentation import case_labels, display_text, highlighted_html, match_text, short_date
from medhash_app.ui.query_panel import load_for_viewer
from medhash_app.ui.themes import current_theme, set_role
from medhash_app.ui.viewer_panel import ViewerPanel
from medhash_app.ui.workers import JobHandle, JobRunner

if TYPE_CHECKING:
    from medhash_app.core.search.types import Hit

CaseImagePath = Callable[[dict[str, Any]], "Path | None"]


def chips_html(labels: list[str], shared: set[str]) -> str:
    theme = current_theme()
    parts = []
    for label in labels:
        on = label.lower() in shared
        bg, fg = (theme.finding_bg, theme.finding_fg) if on else (theme.button, theme.text)
        parts.append(f'<span style="background-color:{bg}; color:{fg};">&nbsp;{html.escape(label)}&nbsp;</span>')
    return " ".join(parts) or f'<span style="color:{theme.muted};">no labels</span>'


def report_html(title: str, facts_line: str, labels: list[str], report: str, findings: list[str]) -> str:
    theme = current_theme()
    body = highlighted_html(display_text(report) or "(no report)", findings, theme.finding_fg, theme.finding_bg)
    return (f"<h3 style='margin:0'>{html.escape(title)}</h3>"
            f"<p style='color:{theme.muted}; margin:2px 0 6px 0'>{html.escape(facts_line)}</p>"
            f"<p style='margin:0 0 8px 0'>{chips_html(labels, {f.lower() for f in findings})}</p>"
            f"<p style='white-space:pre-wrap'>{body}</p>")


class SidePane(QWidget):
    """One side of the comparison: an image viewer over a report browser (either may be empty)."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer_panel = ViewerPanel(title, self, with_header=False)
        self.no_image = QLabel("No image", self)
        self.no_image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        set_role(self.no_image, "muted")
        self.stack = QStackedWidget(self)
        self.stack.addWidget(self.viewer_panel)
        self.stack.addWidget(self.no_image)
        self.report = QTextBrowser(self)
        self.report.setAccessibleName(f"{title} report")
        self.report.setOpenLinks(False)
        split = QSplitter(Qt.Orientation.Vertical, self)
        split.addWidget(self.stack)
        split.addWidget(self.report)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(split)

    def show_text_only(self, message: str) -> None:
        self.no_image.setText(message)
        self.stack.setCurrentWidget(self.no_image)

    def show_image(self, img: Any, presets: dict | None, caption: str) -> None:
        self.viewer_panel.set_image(img, presets, None, caption)
        self.stack.setCurrentWidget(self.viewer_panel)


class CaseView(QWidget):
    """Query (left) and one hit (right); `load_hit` fetches the hit's image off the GUI thread."""

    hitShown = Signal(object)

    def __init__(self, runner: JobRunner, image_path: CaseImagePath, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self._image_path = image_path
        self.hit: Hit | None = None
        self.query_kind: str | None = None  # "image" or "text": the query on the left
        self._job: JobHandle | None = None
        self.query_pane = SidePane("Query", self)
        self.case_pane = SidePane("Case", self)
        self.message = MessageBar(self)
        split = QSplitter(Qt.Orientation.Horizontal, self)
        split.addWidget(self.query_pane)
        split.addWidget(self.case_pane)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.message)
        layout.addWidget(split, 1)

    def set_query(self, image: Any, presets: dict | None, text: str, findings: list[str], caption: str,
                  kind: str | None = None) -> None:
        """The query the hits answer: `kind` "image" (its decoded image, None while it loads) or "text"."""
        kind = kind or ("image" if image is not None else "text")
        if image is not None:
            self.query_pane.show_image(image, presets, caption)
        else:
            self.query_pane.show_text_only("Report query" if kind == "text" else "Loading the query image…")
        if kind == "image":
            text = ("Image query: the image's own code was compared with the library; "
                    "there is no report to show for it.")
        self.query_pane.report.setHtml(report_html("Query", caption, findings, text, findings))
        self.query_kind = kind

    def load_hit(self, hit: Hit) -> None:
        self.hit = hit
        case = hit.case
        findings = list(hit.shared_findings)
        facts = " · ".join(v for v in (case.get("modality"), case.get("view"), short_date(case.get("study_date")),
                                       f"Hamming {hit.distance}", f"{match_text(hit)} of in-domain matches",
                                       f"matched by {hit.matched}") if v)
        self.case_pane.report.setHtml(report_html(f"Rank {hit.rank}", facts, case_labels(case),
                                                  case.get("report") or "", findings))
        self._load_image(case)
        self.hitShown.emit(hit)

    def load_case(self, case: dict[str, Any], title: str = "Case") -> None:
        """One library case on its own (the case browser): no query, no match facts."""
        self.query_pane.hide()
        self.hit = None
        self.case = case
        facts = " · ".join(v for v in (case.get("modality"), case.get("view"), case.get("laterality"),
                                       short_date(case.get("study_date")), case.get("split")) if v)
        self.case_pane.report.setHtml(report_html(title, facts, case_labels(case), case.get("report") or "", []))
        self._load_image(case)

    def _load_image(self, case: dict[str, Any]) -> None:
        """Load the case's image off the GUI thread (cancelling an earlier load), or say it is missing."""
        self.case_pane.show_text_only("Loading image…")
        if self._job is not None:
            self._job.cancel()
        path = self._image_path(case)
        if path is None:
            self.case_pane.show_text_only(_missing_image_text(case))
            return
        job = self.runner.start("load case", lambda _p, _c: load_for_viewer(path))
        job.succeeded.connect(lambda value, p=path: self._on_loaded(p, value))
        job.failed.connect(self._on_failed)
        self._job = job

    def _on_loaded(self, path: Path, value: tuple[Any, dict, dict]) -> None:
        img, presets, _facts = value
        self.case_pane.show_image(img, presets, path.name)

    def _on_failed(self, exc: BaseException) -> None:
        self.case_pane.show_text_only(describe(exc))

    def report_text(self) -> str:
        return (self.hit.case.get("report") or "") if self.hit else ""


class CaseDialog(QDialog):
    """Non-modal window around CaseView with previous/next, copy report and summary export."""

    def __init__(self, runner: JobRunner, image_path: CaseImagePath, hits: Callable[[], list[Hit]],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Case view — MedHash")
        self.setAccessibleName("Case view")
        self._hits = hits
        self.view = CaseView(runner, image_path, self)
        self.prev_button = QPushButton("◀ Previous", self)
        self.next_button = QPushButton("Next ▶", self)
        self.copy_button = QPushButton("Copy report", self)
        self.export_button = QPushButton("Export summary…", self)
        close = QPushButton("Close", self)
        for button, tip in ((self.prev_button, "Previous hit (Page Up)"), (self.next_button, "Next hit (Page Down)"),
                            (self.copy_button, "Copy the case's report (Ctrl+Shift+C)"),
                            (self.export_button, "Save this comparison as PNG or PDF (Ctrl+P)"),
                            (close, "Close (Esc)")):
            button.setToolTip(tip)
            button.setAccessibleName(button.text().strip("◀▶ "))
        self.prev_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        self.copy_button.clicked.connect(self.copy_report)
        self.export_button.clicked.connect(self._choose_export)
        close.clicked.connect(self.close)
        QShortcut(QKeySequence(Qt.Key.Key_PageUp), self, lambda: self.step(-1))
        QShortcut(QKeySequence(Qt.Key.Key_PageDown), self, lambda: self.step(1))
        QShortcut(QKeySequence("Ctrl+Shift+C"), self, self.copy_report)
        QShortcut(QKeySequence("Ctrl+P"), self, self._choose_export)
        buttons = QHBoxLayout()
        for w in (self.prev_button, self.next_button):
            buttons.addWidget(w)
        buttons.addStretch(1)
        for w in (self.copy_button, self.export_button, close):
            buttons.addWidget(w)
        layout = QVBoxLayout(self)
        layout.addWidget(self.view, 1)
        layout.addLayout(buttons)
        self.resize(1280, 800)

    def show_hit(self, hit: Hit) -> None:
        self.view.load_hit(hit)
        ranks = [h.rank for h in self._hits()]
        self.prev_button.setEnabled(bool(ranks) and hit.rank > ranks[0])
        self.next_button.setEnabled(bool(ranks) and hit.rank < ranks[-1])

    def step(self, delta: int) -> None:
        hits = self._hits()
        if not hits or self.view.hit is None:
            return
        position = next((i for i, h in enumerate(hits) if h is self.view.hit), 0) + delta
        if 0 <= position < len(hits):
            self.show_hit(hits[position])

    def copy_report(self) -> None:
        QGuiApplication.clipboard().setText(self.view.report_text())
        self.view.message.show_message("Report copied to the clipboard", "info", 2500)

    def export_to(self, path: Path) -> Path:
        title = f"MedHash case comparison — rank {self.view.hit.rank}" if self.view.hit else "MedHash"
        return export_summary(self.view, path, title)

    def _choose_export(self) -> None:
        name, _ = QFileDialog.getSaveFileName(self, "Export summary", "medhash-case.pdf",
                                              "PDF (*.pdf);;PNG image (*.png)")
        if not name:
            return
        try:
            saved = self.export_to(Path(name))
        except OSError as exc:
            self.view.message.show_error(exc)
            return
        self.view.message.show_message(f"Saved {saved.name}", "info", 4000)


def _missing_image_text(case: dict[str, Any]) -> str:
    """Why no image is shown: an archive case shares only its de-identified thumbnail (docs/archive.md)."""
    if "archive_case_id" in case:
        return (f"Shared archive case {case.get('case_key') or case['archive_case_id']}: the archive holds only its "
                "de-identified thumbnail (in the results list); the full image stays with the site that published it.")
    return "The image of this case is not available"
