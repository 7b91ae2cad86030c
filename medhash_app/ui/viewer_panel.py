"""The viewer with its toolbar (presets, invert, zoom, fit) and the collapsible DICOM header."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from medhash_app.ui.collapsible import Collapsible
from medhash_app.ui.themes import set_role
from medhash_app.ui.viewer import ImageViewer, Window

MASK = "••••••"
# Header facts that can identify a patient: shown masked until the user asks.
IDENTIFYING_FACTS = ("patient_name", "patient_id", "patient_birth_date", "patient_key",
                     "accession_number", "institution_name", "referring_physician",
                     "sop_instance_uid", "study_instance_uid")
FACT_LABELS = {
    "modality": "Modality", "view": "View", "laterality": "Laterality", "body_part": "Body part",
    "study_date": "Study date", "age": "Age", "sex": "Sex", "manufacturer": "Manufacturer",
    "photometric": "Photometric", "transfer_syntax": "Transfer syntax", "rows": "Rows",
    "cols": "Columns", "bits_stored": "Bits stored", "frames": "Frames",
    "patient_name": "Patient name", "patient_id": "Patient ID", "patient_birth_date": "Birth date",
    "patient_key": "Patient key", "accession_number": "Accession no.",
    "institution_name": "Institution", "referring_physician": "Referring physician",
    "sop_instance_uid": "SOP Instance UID", "study_instance_uid": "Study Instance UID",
}


class HeaderPanel(QWidget):
    """Key/value table of header facts; identifying rows read "••••••" until Reveal is pressed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._facts: dict[str, Any] = {}
        self._revealed = False
        self.table = QTableWidget(0, 2, self)
        self.table.setHorizontalHeaderLabels(["Field", "Value"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setAccessibleName("DICOM header")
        self.reveal_button = QPushButton("Reveal identifiers", self)
        self.reveal_button.setCheckable(True)
        self.reveal_button.setAccessibleName("Reveal patient identifiers")
        self.reveal_button.setToolTip("Patient identifiers are hidden; click to show them for this image")
        self.reveal_button.toggled.connect(self.set_revealed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.table)
        layout.addWidget(self.reveal_button, 0, Qt.AlignmentFlag.AlignRight)

    def set_facts(self, facts: dict[str, Any] | None) -> None:
        """Show new facts; identifiers are hidden again for every new image."""
        self._facts = {k: v for k, v in (facts or {}).items() if v not in (None, "", [])}
        self.reveal_button.blockSignals(True)
        self.reveal_button.setChecked(False)
        self.reveal_button.blockSignals(False)
        self._revealed = False
        self.reveal_button.setEnabled(any(k in self._facts for k in IDENTIFYING_FACTS))
        self._fill()

    def set_revealed(self, revealed: bool) -> None:
        self._revealed = revealed
        self.reveal_button.setText("Hide identifiers" if revealed else "Reveal identifiers")
        self._fill()

    def shown_value(self, key: str) -> str | None:
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).data(Qt.ItemDataRole.UserRole) == key:
                return self.table.item(row, 1).text()
        return None

    def _fill(self) -> None:
        keys = [k for k in FACT_LABELS if k in self._facts] + \
               [k for k in self._facts if k not in FACT_LABELS]
        self.table.setRowCount(len(keys))
        for row, key in enumerate(keys):
            name = QTableWidgetItem(FACT_LABELS.get(key, key.replace("_", " ").capitalize()))
            name.setData(Qt.ItemDataRole.UserRole, key)
            hidden = key in IDENTIFYING_FACTS and not self._revealed
            value = QTableWidgetItem(MASK if hidden else str(self._facts[key]))
            self.table.setItem(row, 0, name)
            self.table.setItem(row, 1, value)


class ViewerPanel(QWidget):
    """ImageViewer + toolbar; `title` names the pane ("Query", "Case") for screen readers."""

    presetChosen = Signal(str)

    def __init__(self, title: str, parent: QWidget | None = None, with_header: bool = True) -> None:
        super().__init__(parent)
        self.viewer = ImageViewer(self)
        self.viewer.setAccessibleName(f"{title} image")
        self.preset_combo = QComboBox(self)
        self.preset_combo.setAccessibleName(f"{title} window preset")
        self.preset_combo.setToolTip("Window presets (keys 1-9 in the viewer); right-drag for free W/L")
        self.preset_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.preset_combo.setMinimumContentsLength(5)
        self.preset_combo.activated.connect(self._on_preset)
        self.invert_button = self._tool("Invert", "Invert grey levels (I)", checkable=True)
        self.invert_button.toggled.connect(self.viewer.set_inverted)
        self.viewer.invertChanged.connect(self._sync_invert)
        self.fit_button = self._tool("Fit", "Fit the image to the pane (F, double-click)")
        self.fit_button.clicked.connect(self.viewer.fit)
        self.zoom_in = self._tool("+", "Zoom in (wheel up)")
        self.zoom_in.setAccessibleName(f"{title} zoom in")
        self.zoom_in.clicked.connect(lambda: self.viewer.zoom_by(1.25))
        self.zoom_out = self._tool("−", "Zoom out (wheel down)")
        self.zoom_out.setAccessibleName(f"{title} zoom out")
        self.zoom_out.clicked.connect(lambda: self.viewer.zoom_by(0.8))
        self.reset_button = self._tool("Reset", "Back to the file's own window/level (R)")
        self.reset_button.setAccessibleName("Reset window and level")
        self.reset_button.clicked.connect(self.viewer.reset_window)
        self.caption = QLabel("", self)
        set_role(self.caption, "muted")
        self.caption.setMinimumWidth(20)
        self.caption.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        bar = QHBoxLayout()
        bar.setContentsMargins(0, 0, 0, 0)
        heading = QLabel(title, self)
        set_role(heading, "heading")
        bar.addWidget(heading)
        bar.addWidget(self.caption, 1)
        for w in (self.preset_combo, self.invert_button, self.reset_button, self.zoom_out, self.zoom_in,
                  self.fit_button):
            bar.addWidget(w)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(bar)
        layout.addWidget(self.viewer, 1)
        self.header: HeaderPanel | None = None
        if with_header:
            self.header = HeaderPanel(self)
            self.header_box = Collapsible("Image header", self)
            self.header_box.addWidget(self.header)
            self.header_box.setAccessibleName(f"{title} image header")
            layout.addWidget(self.header_box)
        self._update_enabled()

    def _tool(self, text: str, tip: str, checkable: bool = False) -> QToolButton:
        button = QToolButton(self)
        button.setText(text)
        button.setToolTip(tip)
        button.setAccessibleName(text)
        button.setCheckable(checkable)
        return button

    def set_image(self, img: Any, presets: dict[str, Window] | None = None,
                  facts: dict[str, Any] | None = None, caption: str = "") -> None:
        self.viewer.set_image(img, presets)
        self.caption.setText(caption)
        self.preset_combo.clear()
        self.preset_combo.addItem("Presets…")
        for name in self.viewer.presets:
            self.preset_combo.addItem(name)
        if self.header is not None:
            self.header.set_facts(facts)
        self._sync_invert(False)
        self._update_enabled()

    def clear(self, message: str = "") -> None:
        self.viewer.clear(message)
        self.caption.setText("")
        self.preset_combo.clear()
        if self.header is not None:
            self.header.set_facts(None)
        self._update_enabled()

    def _on_preset(self, index: int) -> None:
        if index <= 0:
            return
        name = self.preset_combo.itemText(index)
        self.viewer.apply_preset(name)
        self.presetChosen.emit(name)

    def _sync_invert(self, inverted: bool) -> None:
        self.invert_button.blockSignals(True)
        self.invert_button.setChecked(inverted)
        self.invert_button.blockSignals(False)

    def _update_enabled(self) -> None:
        has = self.viewer.has_image()
        grey = has and not self.viewer.is_color
        self.preset_combo.setEnabled(grey and self.preset_combo.count() > 1)
        self.reset_button.setEnabled(grey)
        for w in (self.invert_button, self.fit_button, self.zoom_in, self.zoom_out):
            w.setEnabled(has)
