"""The query side of the Search tab: an image (viewer + header) or a typed report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from medhash_app.ui.messages import describe
from medhash_app.ui.themes import set_role, style_toggle
from medhash_app.ui.viewer_panel import ViewerPanel
from medhash_app.ui.workers import JobHandle, JobRunner


def load_for_viewer(path: Path) -> tuple[Any, dict, dict]:
    """Decode a file for display (worker thread): the image, its W/L presets, its header facts."""
    from medhash_app.core.imaging import load_image, window_presets

    img = load_image(path)
    facts = img.facts.to_dict()
    facts.pop("patient_key", None)  # unsalted outside a library: a pseudo-identifier with no use here
    return img, window_presets(img), facts


class QueryPanel(QWidget):
    """Holds the current query; emits `searchRequested` when a new image is loaded or on Ctrl+Enter.

    `mode` is "image" or "text": the last thing the user gave (a file, or typing) decides, and
    the two buttons on top let them switch back.
    """

    searchRequested = Signal()
    imageLoaded = Signal(object)
    modeChanged = Signal(str)
    problem = Signal(object)

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.image: Any = None
        self.image_path: Path | None = None
        self._load_job: JobHandle | None = None
        self._mode = "image"

        self.image_button = QToolButton(self)
        self.image_button.setText("Image query")
        self.text_button = QToolButton(self)
        self.text_button.setText("Report query")
        group = QButtonGroup(self)
        for button in (self.image_button, self.text_button):
            button.setCheckable(True)
            button.setAccessibleName(button.text())
            style_toggle(button)
            group.addButton(button)
        self.image_button.setChecked(True)
        self.image_button.clicked.connect(lambda: self.set_mode("image"))
        self.text_button.clicked.connect(lambda: self.set_mode("text"))
        self.open_button = QPushButton("Open file…", self)
        self.open_button.setAccessibleName("Open query file")
        self.open_button.setToolTip("Choose a DICOM, PNG or JPEG file as the query (Ctrl+O)")
        self.file_combo = QComboBox(self)
        self.file_combo.setAccessibleName("Query file")
        self.file_combo.setToolTip("Files from the dropped folder; pick another one as the query")
        self.file_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.file_combo.setMinimumContentsLength(12)
        self.file_combo.hide()
        self.file_combo.activated.connect(self._on_file_chosen)

        self.viewer_panel = ViewerPanel("Query", self)
        self.viewer_panel.viewer.clear("Drop a DICOM, PNG or JPEG file or a folder here,\n"
                                       "or open one with Ctrl+O")
        self.viewer_panel.viewer.disabled_message = "Searching with the typed report.\nClick “Image query” to use this image."
        self.report_edit = QPlainTextEdit(self)
        self.report_edit.setAccessibleName("Query report")
        self.report_edit.setPlaceholderText("Type or paste a report to find similar images…\n"
                                            "Ctrl+Enter searches.")
        self.report_edit.textChanged.connect(self._on_text_changed)
        self.search_button = QPushButton("Search", self)
        set_role(self.search_button, "primary")
        self.search_button.setAccessibleName("Search")
        self.search_button.setToolTip("Search similar cases (Ctrl+Enter)")
        self.search_button.clicked.connect(self.searchRequested.emit)
        self.findings_label = QLabel("", self)
        set_role(self.findings_label, "muted")
        self.findings_label.setWordWrap(True)

        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.image_button)
        top.addWidget(self.text_button)
        top.addStretch(1)
        top.addWidget(self.file_combo)
        top.addWidget(self.open_button)
        report_box = QWidget(self)
        report_layout = QVBoxLayout(report_box)
        report_layout.setContentsMargins(0, 0, 0, 0)
        heading = QLabel("Report", report_box)
        set_role(heading, "heading")
        report_layout.addWidget(heading)
        report_layout.addWidget(self.report_edit, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.findings_label, 1)
        bottom.addWidget(self.search_button)
        report_layout.addLayout(bottom)
        self.splitter = QSplitter(Qt.Orientation.Vertical, self)
        self.splitter.addWidget(self.viewer_panel)
        self.splitter.addWidget(report_box)
        self.splitter.setStretchFactor(0, 4)
        self.splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.splitter, 1)

    # -- state --------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str, rerun: bool = True) -> None:
        """Make the image or the typed report the query. A real change emits `modeChanged`, then
        (with `rerun`, as when a mode button is clicked) asks to search with that query when there is one."""
        (self.image_button if mode == "image" else self.text_button).setChecked(True)
        if mode == self._mode:
            return
        self._mode = mode
        self.viewer_panel.setEnabled(mode == "image")
        self.modeChanged.emit(mode)
        if rerun and self.has_query():
            self.searchRequested.emit()

    def describe(self) -> str:
        """The current query in a few words, for the line above its results."""
        if self._mode == "image":
            return f"Image query {self.image_path.name}" if self.image_path else "Image query"
        text = " ".join(self.text().split())
        return f"Report query “{text[:40]}{'…' if len(text) > 40 else ''}”" if text else "Report query"

    def text(self) -> str:
        return self.report_edit.toPlainText().strip()

    def has_query(self) -> bool:
        return self.image_path is not None if self._mode == "image" else bool(self.text())

    def set_query_findings(self, findings: list[str]) -> None:
        self.findings_label.setText("Findings in the query: " + ", ".join(findings) if findings else "")

    # -- loading ------------------------------------------------------------------------------
    def set_files(self, files: list[Path]) -> None:
        """Offer `files` as queries and load the first one."""
        self.file_combo.clear()
        for path in files:
            self.file_combo.addItem(path.name, str(path))
        self.file_combo.setVisible(len(files) > 1)
        if files:
            self.load_file(files[0])

    def load_file(self, path: Path) -> JobHandle:
        """Make `path` the query and ask for a search at once; decode it for the viewer at the
        same time on another thread (the search decodes it itself, so neither waits for the other)."""
        if self._load_job is not None:
            self._load_job.cancel()
        self.image, self.image_path = None, None
        self.set_mode("image", rerun=False)  # the search below is for the new file
        self.image_path = path
        self.viewer_panel.clear(f"Opening {path.name}…")
        job = self.runner.start("load query", lambda _p, _c: load_for_viewer(path))
        job.succeeded.connect(lambda value, p=path: self._on_loaded(p, value))
        job.failed.connect(lambda exc, p=path: self._on_load_failed(p, exc))
        self._load_job = job
        self.searchRequested.emit()
        return job

    def _on_loaded(self, path: Path, value: tuple[Any, dict, dict]) -> None:
        if path != self.image_path:
            return
        img, presets, facts = value
        self.image = img
        caption = path.name
        if getattr(img, "frame_count", 1) > 1:
            caption += f"  (frame {img.frame_index + 1} of {img.frame_count})"
        self.viewer_panel.set_image(img, presets, facts, caption)
        self.imageLoaded.emit(img)

    def _on_load_failed(self, path: Path, exc: BaseException) -> None:
        if path != self.image_path:
            return
        self.image, self.image_path = None, None
        self.viewer_panel.clear(describe(exc))
        self.problem.emit(exc)

    def _on_file_chosen(self, index: int) -> None:
        value = self.file_combo.itemData(index)
        if value:
            self.load_file(Path(value))

    def _on_text_changed(self) -> None:
        if self.report_edit.hasFocus() and self._mode != "text":
            self.set_mode("text", rerun=False)  # typing: the search waits for Ctrl+Enter
