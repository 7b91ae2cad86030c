"""The search tab's archive row: which shared archive the searches go to, exact or approximate (HNSW)
with the recall measured for it, and who answered the last search (the local mirror or the server).

It holds the open `ArchiveClient` (core/archive/workstation.py) and runs its calls on the job runner;
no database code lives here. Hidden while searches go to the local library.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, QWidget

from medhash_app.ui.themes import set_role
from medhash_app.ui.workers import JobHandle, JobRunner

if TYPE_CHECKING:
    from medhash_app.core.archive.workstation import ArchiveAnswer, ArchiveClient, ArchiveInfo
    from medhash_app.core.search.types import SearchQuery

ANSWERED = {"mirror": "this workstation's mirror", "server": "the archive server",
            "server (mirror stale or absent)": "the archive server (the mirror is stale or absent)",
            "server (filters or approximate)": "the archive server (filtered or approximate search)"}


def answered_text(answered_by: str) -> str:
    """`last_answer` in words; 'A + B' when the two target modalities were answered differently."""
    return " and ".join(ANSWERED.get(part, part) for part in answered_by.split(" + "))


def recall_text(info: ArchiveInfo | None, ef_search: int) -> str:
    """The recall measured for the ef_search nearest at or below the chosen one, per code kind."""
    if info is None or not info.recall:
        return "recall not measured (medhash archive index)"
    parts = []
    for modality in ("text", "image"):
        rows = [r for r in info.recall if r["modality"] == modality and r["ef_search"] <= ef_search]
        if rows:
            best = max(rows, key=lambda r: (r["bits"], r["ef_search"]))
            what = "reports" if modality == "text" else "images"
            parts.append(f"{what} {best['recall']:.2f} (ef {best['ef_search']}, {best['bits']} bits)")
    return ("measured recall@10: " + ", ".join(parts)) if parts else f"no recall measured at ef ≤ {ef_search}"


class ArchiveBar(QWidget):
    """Open/close an archive, choose exact or HNSW, show who answered; `client` is None when closed."""

    opened = Signal(object)  # ArchiveInfo
    closed = Signal()
    failed = Signal(object)  # the exception (an ArchiveError: one line)
    modeChanged = Signal()

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.client: ArchiveClient | None = None
        self.info: ArchiveInfo | None = None
        self.name_label = QLabel(self)
        self.name_label.setAccessibleName("Archive searched")
        self.approximate = QCheckBox("Approximate (HNSW)", self)
        self.approximate.setToolTip("Search the server's HNSW index: faster on large archives, may miss hits; "
                                    "the recall measured for it is shown beside")
        self.ef_search = QSpinBox(self, minimum=10, maximum=5000, singleStep=50, value=200, prefix="ef ")
        self.ef_search.setAccessibleName("HNSW ef_search")
        self.recall_label = QLabel(self)
        self.recall_label.setAccessibleName("Measured HNSW recall")
        set_role(self.recall_label, "muted")
        self.answered_label = QLabel(self)
        self.answered_label.setAccessibleName("Answered by")
        self.mirror_button = QPushButton("Refresh mirror", self)
        self.mirror_button.setToolTip("Download the archive's codes to this workstation (only what changed), so "
                                      "exact searches are answered locally while they are current")
        self.close_button = QPushButton("Search local library", self)
        self.close_button.setToolTip("Close the archive; searches go to the open library again")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.name_label, self.approximate, self.ef_search, self.recall_label):
            layout.addWidget(widget)
        layout.addStretch(1)
        for widget in (self.answered_label, self.mirror_button, self.close_button):
            layout.addWidget(widget)
        self.approximate.toggled.connect(self._on_mode)
        self.ef_search.valueChanged.connect(self._on_mode)
        self.mirror_button.clicked.connect(self.refresh_mirror)
        self.close_button.clicked.connect(self.close_archive)
        self._session: Any = None
        self.hide()

    # -- opening ------------------------------------------------------------------------------
    def open_archive(self, target: str, mirror_folder: Path | None, session: Any) -> JobHandle | None:
        """Connect off the GUI thread; `opened` or `failed` tells how it went (the old archive stays until then)."""
        from medhash_app.core.archive.workstation import ArchiveClient
        from medhash_app.core.errors import MedHashError

        try:
            client = ArchiveClient(target, mirror_folder)  # refuses a password or a malformed target at once
        except MedHashError as exc:
            self.failed.emit(exc)
            return None
        self._session = session
        job = self.runner.start("open archive", lambda _p, _c: client.open(session))
        job.succeeded.connect(lambda info, c=client: self._on_opened(c, info))
        job.failed.connect(lambda exc, c=client: self._on_open_failed(c, exc))
        return job

    def _on_opened(self, client: ArchiveClient, info: ArchiveInfo) -> None:
        old, self.client, self.info = self.client, client, info
        if old is not None and old is not client:
            self.runner.start("close archive", lambda _p, _c: old.close())
        own_model = self._session is None  # no library: say which of the archive's models encodes
        self.name_label.setText(f"Archive {info.label} · {info.cases:,} cases"
                                + (f" · model {info.model_id}" if own_model else ""))
        self.name_label.setToolTip(f"Queries are encoded by {info.encoded_by}")
        self.close_button.setText("Close archive" if own_model else "Search local library")
        self.close_button.setToolTip("Close the archive" if own_model else
                                     "Close the archive; searches go to the open library again")
        self.mirror_button.setVisible(client.mirror_folder is not None)
        self.answered_label.setText("")
        self._update_recall()
        self.show()
        self.opened.emit(info)

    def _on_open_failed(self, client: ArchiveClient, exc: BaseException) -> None:
        self.runner.start("close archive", lambda _p, _c: client.close())
        self.failed.emit(exc)

    def close_archive(self) -> None:
        client, self.client, self.info = self.client, None, None
        if client is not None:
            self.runner.start("close archive", lambda _p, _c: client.close())
        self.hide()
        self.closed.emit()

    # -- searching ----------------------------------------------------------------------------
    def search_job(self, session: Any, query: SearchQuery) -> Any:
        """The job function for one archive search with the current mode (runs on a worker thread)."""
        client, approximate, ef = self.client, self.approximate.isChecked(), self.ef_search.value()
        assert client is not None
        return lambda _p, _c: client.search(session, query, approximate=approximate, ef_search=ef)

    def show_answer(self, answer: ArchiveAnswer) -> str:
        """Show who answered (and the recall of an approximate search); returns the words shown."""
        words = f"answered by {answered_text(answer.answered_by)}"
        if answer.mode == "hnsw":
            words += " · HNSW"
        self.answered_label.setText(words[0].upper() + words[1:])
        return words

    def refresh_mirror(self) -> JobHandle | None:
        client, session = self.client, self._session  # no session: the archive's own model
        if client is None:
            return None
        self.mirror_button.setEnabled(False)
        self.answered_label.setText("Refreshing the mirror…")
        job = self.runner.start("refresh archive mirror", lambda _p, _c: client.refresh_mirror(session))
        job.succeeded.connect(lambda n: self.answered_label.setText(f"Mirror holds {n:,} codes"))
        job.failed.connect(self.failed.emit)
        job.finished.connect(lambda: self.mirror_button.setEnabled(True))
        return job

    def set_session(self, session: Any) -> None:
        """A library opened or closed while an archive is open changes the model that encodes the
        queries (the library's, or the archive's own): open the archive again to say which."""
        changed = session is not self._session
        self._session = session
        if changed and self.client is not None:
            self.open_archive(self.client.target, self.client.mirror_folder, session)

    def _on_mode(self) -> None:
        self.ef_search.setEnabled(self.approximate.isChecked())
        self._update_recall()
        self.modeChanged.emit()

    def _update_recall(self) -> None:
        self.ef_search.setEnabled(self.approximate.isChecked())
        self.recall_label.setText(recall_text(self.info, self.ef_search.value()))

    def shutdown(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()
