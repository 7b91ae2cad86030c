"""File → PACS…: receive studies from the PACS (start/stop the Storage SCP, its status shown) and
find and pull studies over DICOMweb, both into the open library. A thin face over core/pacs: every
network call runs in a JobRunner worker, never on the GUI thread; the listener reports each
instance from its own threads through a queued signal."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from medhash_app.core.pacs.listener import ListenerConfig, ReceiveEvent, StorageListener
from medhash_app.core.pacs.remote import fetch_for_query, find_studies, pull_studies
from medhash_app.core.pacs.studies import PullProgress, PullReport, StudyMatch
from medhash_app.ui.messages import describe
from medhash_app.ui.session_state import SessionState
from medhash_app.ui.workers import JobHandle, JobRunner

_COLUMNS = ("Date", "Patient", "Patient ID", "Accession", "Modalities", "Description", "Images")


class _Relay(QObject):
    """Carries the listener's events from pynetdicom's threads to the GUI thread (queued)."""

    received = Signal(object)


class PacsDialog(QDialog):
    """Non-modal: closing it hides it; the listener keeps running until stopped or the app quits.
    `queryImage` carries the path of a study's image fetched to search with (not imported)."""

    queryImage = Signal(object)

    def __init__(self, state: SessionState, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("PACS")
        self.state, self.runner = state, runner
        self.listener: StorageListener | None = None
        self.studies: list[StudyMatch] = []
        self.pull_job: JobHandle | None = None
        self._query_dir: tempfile.TemporaryDirectory | None = None
        self._fetches = 0
        self._relay = _Relay(self)
        self._relay.received.connect(self._on_received, Qt.ConnectionType.QueuedConnection)
        layout = QVBoxLayout(self)
        layout.addWidget(self._listener_box())
        layout.addWidget(self._query_box())
        self.resize(820, 560)

    # -- receive ------------------------------------------------------------------------------
    def _listener_box(self) -> QGroupBox:
        box = QGroupBox("Receive from the PACS (DICOM C-STORE to this workstation)", self)
        form = QFormLayout(box)
        self.aet_edit = QLineEdit("MEDHASH", box)
        self.port_spin = QSpinBox(box)
        self.port_spin.setRange(1, 65535)
        self.port_spin.setValue(11112)
        self.accept_edit = QLineEdit(box)
        self.accept_edit.setPlaceholderText("any; or AE titles separated by commas")
        self.listen_button = QPushButton("Start receiving", box)
        self.listen_button.clicked.connect(self.toggle_listener)
        self.listen_status = QLabel("Not receiving.", box)
        self.listen_status.setWordWrap(True)
        form.addRow("This node's AE title", self.aet_edit)
        form.addRow("Port (on 127.0.0.1)", self.port_spin)
        form.addRow("Accept calling AE titles", self.accept_edit)
        form.addRow(self.listen_button, self.listen_status)
        return box

    def toggle_listener(self) -> JobHandle | None:
        if self.listener is not None:
            listener, self.listener = self.listener, None
            self.listen_button.setEnabled(False)
            job = self.runner.start("stop listener", lambda _p, _c: listener.stop())
            job.finished.connect(self._show_stopped)
            return job
        session = self.state.session
        if session is None:
            self.listen_status.setText("Open or create a library first: received studies go into it.")
            return None
        titles = tuple(t.strip() for t in self.accept_edit.text().split(",") if t.strip())
        config = ListenerConfig(library=Path(session.library.folder), aet=self.aet_edit.text().strip(),
                                port=self.port_spin.value(), accept_aets=titles)
        listener = StorageListener(config, self._relay.received.emit)
        self.listen_button.setEnabled(False)
        job = self.runner.start("start listener", lambda _p, _c: listener.start() or listener)
        job.succeeded.connect(self._on_listening)
        job.failed.connect(lambda exc: self._show_stopped(describe(exc)))
        return job

    def _on_listening(self, listener: StorageListener) -> None:
        self.listener = listener
        self.listen_button.setText("Stop receiving")
        self.listen_button.setEnabled(True)
        self._show_status()

    def _show_stopped(self, why: str = "") -> None:
        self.listen_button.setText("Start receiving")
        self.listen_button.setEnabled(True)
        self.listen_status.setText(why or "Not receiving.")

    def _on_received(self, _event: ReceiveEvent) -> None:
        self._show_status()

    def _show_status(self) -> None:
        if self.listener is None:
            return
        status = self.listener.status
        text = (f"Receiving as {status.aet} on {status.address}: {status.added} added, {status.duplicates} "
                f"already there, {status.failed} refused.")
        if status.last_error:
            text += f" Last refusal: {status.last_error}"
        self.listen_status.setText(text)

    # -- find and pull --------------------------------------------------------------------------
    def _query_box(self) -> QGroupBox:
        box = QGroupBox("Find and pull studies (DICOMweb, or C-FIND / C-GET)", self)
        layout = QVBoxLayout(box)
        form = QFormLayout()
        self.url_edit = QLineEdit(box)
        self.url_edit.setPlaceholderText("http://pacs:8042/dicom-web, or dicom://PACS_AET@pacs:104")
        self.patient_edit, self.date_edit = QLineEdit(box), QLineEdit(box)
        self.modality_edit, self.accession_edit = QLineEdit(box), QLineEdit(box)
        self.date_edit.setPlaceholderText("YYYYMMDD or YYYYMMDD-YYYYMMDD")
        for label, edit in (("PACS address", self.url_edit), ("Patient ID", self.patient_edit),
                            ("Study date", self.date_edit), ("Modality", self.modality_edit),
                            ("Accession", self.accession_edit)):
            form.addRow(label, edit)
        layout.addLayout(form)
        self.find_button = QPushButton("Find", box)
        self.find_button.clicked.connect(self.find)
        layout.addWidget(self.find_button)
        self.results = QTableWidget(0, len(_COLUMNS), box)
        self.results.setHorizontalHeaderLabels(_COLUMNS)
        self.results.setAccessibleName("Studies found")
        layout.addWidget(self.results, 1)
        row = QHBoxLayout()
        self.pull_button = QPushButton("Pull checked studies", box)
        self.pull_button.clicked.connect(self.pull)
        self.cancel_button = QPushButton("Cancel", box)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_pull)
        self.progress = QProgressBar(box)
        self.search_button = QPushButton("Search with selected study", box)
        self.search_button.setToolTip("Fetch the selected study's first image and search the library with it, "
                                      "without importing it")
        self.search_button.clicked.connect(self.search_with_selected)
        row.addWidget(self.pull_button)
        row.addWidget(self.search_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress, 1)
        layout.addLayout(row)
        self.query_status = QLabel("", box)
        self.query_status.setWordWrap(True)
        layout.addWidget(self.query_status)
        return box

    def find(self) -> JobHandle:
        url = self.url_edit.text().strip()
        filters = {"patient_id": self.patient_edit.text().strip() or None,
                   "date": self.date_edit.text().strip() or None,
                   "modality": self.modality_edit.text().strip() or None,
                   "accession": self.accession_edit.text().strip() or None}
        self.find_button.setEnabled(False)
        self.query_status.setText("Searching…")
        aet = self.aet_edit.text().strip() or "MEDHASH"
        job = self.runner.start("pacs find", lambda _p, _c: find_studies(url, calling_aet=aet, **filters))
        job.succeeded.connect(self._show_studies)
        job.failed.connect(lambda exc: self.query_status.setText(describe(exc)))
        job.finished.connect(lambda: self.find_button.setEnabled(True))
        return job

    def _show_studies(self, studies: list[StudyMatch]) -> None:
        self.studies = studies
        self.results.setRowCount(len(studies))
        for row, study in enumerate(studies):
            values = (study.study_date, study.patient_name, study.patient_id, study.accession, study.modalities,
                      study.description, "" if study.instances is None else str(study.instances))
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                if column == 0:
                    item.setCheckState(Qt.CheckState.Unchecked)
                self.results.setItem(row, column, item)
        self.results.resizeColumnsToContents()
        self.query_status.setText(f"{len(studies)} studies found; check the ones to pull.")

    def checked_studies(self) -> list[str]:
        return [s.study_uid for row, s in enumerate(self.studies)
                if self.results.item(row, 0).checkState() == Qt.CheckState.Checked]

    def pull(self) -> JobHandle | None:
        session, uids, url = self.state.session, self.checked_studies(), self.url_edit.text().strip()
        if session is None or not uids:
            self.query_status.setText("Open a library and check at least one study first.")
            return None
        library, aet = session.library, self.aet_edit.text().strip() or "MEDHASH"
        self.pull_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        job = self.runner.start("pacs pull", lambda progress, cancel: pull_studies(
            url, uids, library, progress=progress, cancel=cancel, calling_aet=aet), keep_partial=True)
        job.progress.connect(self._on_progress)
        job.succeeded.connect(self._on_pulled)
        job.failed.connect(lambda exc: self.query_status.setText(f"Pull stopped: {describe(exc)}"))
        job.finished.connect(self._pull_done)
        self.pull_job = job
        return job

    def search_with_selected(self) -> JobHandle | None:
        row = self.results.currentRow()
        if not 0 <= row < len(self.studies):
            self.query_status.setText("Select a study to search with first.")
            return None
        if self._query_dir is None:
            self._query_dir = tempfile.TemporaryDirectory(prefix="medhash-pacs-query-")
        self._fetches += 1
        folder = Path(self._query_dir.name, str(self._fetches))  # a new file each time: a shown query never changes
        folder.mkdir()
        url, uid = self.url_edit.text().strip(), self.studies[row].study_uid
        self.query_status.setText("Fetching the study's first image…")
        job = self.runner.start("pacs query image", lambda _p, _c: fetch_for_query(url, uid, folder))
        job.succeeded.connect(self._on_query_image)
        job.failed.connect(lambda exc: self.query_status.setText(describe(exc)))
        return job

    def _on_query_image(self, path: Path) -> None:
        self.query_status.setText("The image is the search query now (it was not imported).")
        self.queryImage.emit(path)

    def _on_progress(self, event: PullProgress) -> None:
        self.progress.setRange(0, max(event.total, 1))
        self.progress.setValue(event.done)
        self.query_status.setText(f"{event.done} of {event.total} images: {event.added} added, "
                                  f"{event.duplicates} already there, {event.failed} refused")

    def _on_pulled(self, report: PullReport) -> None:
        text = (f"{report.added} added, {report.duplicates} already there, {len(report.failed)} refused "
                f"of {report.total} images.")
        if report.cancelled:
            text = "Pull cancelled. " + text
        if report.failed:
            text += " Refused: " + "; ".join(f"{label}: {reason}" for label, reason in report.failed[:3])
        self.query_status.setText(text)

    def cancel_pull(self) -> None:
        if self.pull_job is not None:
            self.pull_job.cancel_event.set()  # stops between two images
            self.cancel_button.setEnabled(False)

    def _pull_done(self) -> None:
        self.pull_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.state.refresh()

    def shutdown(self) -> None:
        """Stop receiving (the app is closing)."""
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        if self._query_dir is not None:
            self._query_dir.cleanup()
            self._query_dir = None

    def status(self) -> dict[str, Any]:
        return self.listener.status.to_dict() if self.listener is not None else {"running": False}
