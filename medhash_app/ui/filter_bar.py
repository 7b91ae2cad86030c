"""Search choices above the results: target, code length, and the filters (labels, modality,
view, date range, keyword). Produces the `SearchFilters` the core applies; filters nothing itself."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QRangeSlider, QSearchableComboBox

from medhash_app.ui.themes import set_role, style_toggle

if TYPE_CHECKING:
    from medhash_app.core.library import CaseFilter
    from medhash_app.core.search.types import SearchFilters

TARGETS = (("reports", "Reports"), ("images", "Images"), ("both", "Reports and images"))
ANY = "Any"
AUTO_BITS = "Auto (longest)"


@dataclass
class FilterOptions:
    """Values present in the library, offered in the filter widgets."""

    labels: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    date_min: str | None = None
    date_max: str | None = None


def read_filter_options(library: Any) -> FilterOptions:
    """Distinct labels/modalities/views and the date span of a library (worker thread)."""
    if hasattr(library, "facets"):
        facets = library.facets()
        return FilterOptions(**{k: facets.get(k) for k in FilterOptions.__dataclass_fields__ if k in facets})
    db = library.db

    def distinct(column: str) -> list[str]:
        rows = db.query(f"SELECT DISTINCT {column} AS v FROM cases WHERE {column} IS NOT NULL "
                        f"AND {column} != '' ORDER BY v")
        return [str(r["v"]) for r in rows]

    labels = [r["v"] for r in db.query(
        "SELECT DISTINCT j.value AS v FROM cases, json_each(cases.labels) AS j ORDER BY v")]
    span = next(iter(db.query("SELECT min(study_date) AS lo, max(study_date) AS hi FROM cases "
                              "WHERE study_date IS NOT NULL AND study_date != ''")), {})
    return FilterOptions(labels=[str(v) for v in labels], modalities=distinct("modality"),
                         views=distinct("view"), date_min=span.get("lo"), date_max=span.get("hi"))


def _to_ordinal(value: str) -> int:
    return dt.date.fromisoformat(value[:10]).toordinal()


class FilterBar(QWidget):
    """Emits `changed` (debounced) whenever a choice changes; `filters()` reads them."""

    changed = Signal()
    viewModeChanged = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._date_span: tuple[int, int] | None = None
        self._debounce = QTimer(self, singleShot=True, interval=350)
        self._debounce.timeout.connect(self.changed.emit)
        self.target = self._combo("Search in", [label for _, label in TARGETS])
        for i, (value, _) in enumerate(TARGETS):
            self.target.setItemData(i, value)
        self.bits = self._combo("Code length", ["Auto"])
        self.bits.setMinimumContentsLength(len(AUTO_BITS))  # "Auto (longest" was cut off at 7 characters
        self.k = QSpinBox(self)
        self.k.setRange(10, 100_000)
        self.k.setSingleStep(50)
        self.k.setValue(200)
        self.k.setAccessibleName("Number of results")
        self.k.setToolTip("How many ranked cases to return")
        self.k.valueChanged.connect(self._poke)
        self.label = QSearchableComboBox(self)
        self.label.setAccessibleName("Label filter")
        self.label.setToolTip("Only cases with this label")
        self.label.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.label.setMinimumContentsLength(8)
        self.label.addItem(f"{ANY} label")
        self.label.currentIndexChanged.connect(self._poke)
        self.modality = self._combo("Modality filter", [f"{ANY} modality"])
        self.view = self._combo("View filter", [f"{ANY} view"])
        self.dates = QRangeSlider(Qt.Orientation.Horizontal, self)
        self.dates.setAccessibleName("Study date range")
        self.dates.setMinimumWidth(90)
        self.dates.valueChanged.connect(self._on_dates)
        self.dates_label = QLabel("No study dates", self)
        set_role(self.dates_label, "muted")
        self.keyword = QLineEdit(self)
        self.keyword.setPlaceholderText("Keyword in report")
        self.keyword.setAccessibleName("Keyword filter")
        self.keyword.setClearButtonEnabled(True)
        self.keyword.setMinimumWidth(110)
        self.keyword.textChanged.connect(self._poke)
        self.clear_button = QToolButton(self)
        self.clear_button.setText("Clear filters")
        self.clear_button.setAccessibleName("Clear filters")
        self.clear_button.clicked.connect(self.clear)
        self.list_button = QToolButton(self)
        self.list_button.setText("List")
        self.grid_button = QToolButton(self)
        self.grid_button.setText("Grid")
        for button, mode in ((self.list_button, "list"), (self.grid_button, "grid")):
            button.setCheckable(True)
            button.setAutoExclusive(True)
            style_toggle(button)
            button.setAccessibleName(f"Show results as {mode}")
            button.setToolTip(f"Show results as a {mode} (Ctrl+G toggles)")
            button.clicked.connect(lambda _=False, m=mode: self.viewModeChanged.emit(m))
        self.list_button.setChecked(True)
        self._build_layout()
        self.set_options(FilterOptions(), [])

    def _combo(self, name: str, items: list[str]) -> QComboBox:
        combo = QComboBox(self)
        combo.setAccessibleName(name)
        combo.setToolTip(name)
        combo.addItems(items)
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(7)
        combo.currentIndexChanged.connect(self._poke)
        return combo

    def _build_layout(self) -> None:
        row1 = QHBoxLayout()
        row1.setContentsMargins(0, 0, 0, 0)
        self._search_controls: list[QWidget] = []
        for caption, widget in (("Find", self.target), ("Bits", self.bits), ("Show", self.k)):
            label = QLabel(caption, self)
            row1.addWidget(label)
            row1.addWidget(widget)
            self._search_controls += [label, widget]
        self.row1 = row1
        row1.addStretch(1)
        row1.addWidget(self.list_button)
        row1.addWidget(self.grid_button)
        row2 = QHBoxLayout()
        row2.setContentsMargins(0, 0, 0, 0)
        row2.addWidget(self.label)
        row2.addWidget(self.modality)
        row2.addWidget(self.view)
        row2.addWidget(self.dates, 1)
        row2.addWidget(self.dates_label)
        row2.addWidget(self.keyword, 1)
        row2.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(row1)
        layout.addLayout(row2)

    # -- options ------------------------------------------------------------------------------
    def set_options(self, options: FilterOptions, bits: list[int]) -> None:
        """Refill the choices from the library, keeping the user's selections where still valid."""
        self.blockSignals(True)
        self._refill(self.label, f"{ANY} label", options.labels)
        self._refill(self.modality, f"{ANY} modality", options.modalities)
        self._refill(self.view, f"{ANY} view", options.views)
        current_bits = self.bits.currentData()
        self.bits.blockSignals(True)
        self.bits.clear()
        self.bits.addItem(AUTO_BITS, None)
        for b in bits:
            self.bits.addItem(f"{b} bits", b)
        index = self.bits.findData(current_bits)
        self.bits.setCurrentIndex(max(index, 0))
        self.bits.blockSignals(False)
        self._date_span = None
        if options.date_min and options.date_max:
            lo, hi = _to_ordinal(options.date_min), _to_ordinal(options.date_max)
            self._date_span = (lo, hi)
            self.dates.blockSignals(True)
            self.dates.setRange(lo, max(hi, lo + 1))
            self.dates.setValue((lo, max(hi, lo + 1)))
            self.dates.blockSignals(False)
        self.dates.setEnabled(self._date_span is not None)
        self.dates.setVisible(self._date_span is not None)
        self.dates_label.setVisible(self._date_span is not None)
        self._on_dates(self.dates.value(), emit=False)
        self.blockSignals(False)

    @staticmethod
    def _refill(combo: QComboBox, any_text: str, values: list[str]) -> None:
        current = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(any_text)
        combo.addItems(values)
        index = combo.findText(current)
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(False)

    # -- reading ------------------------------------------------------------------------------
    def target_value(self) -> str:
        return str(self.target.currentData() or "reports")

    def set_target(self, target: str) -> None:
        index = self.target.findData(target)
        if index >= 0:
            self.target.setCurrentIndex(index)

    def bits_value(self) -> int | None:
        return self.bits.currentData()

    def set_bits(self, bits: int | None) -> None:
        self.bits.setCurrentIndex(max(self.bits.findData(bits), 0))

    def date_range(self) -> tuple[str | None, str | None]:
        if self._date_span is None:
            return None, None
        lo, hi = (int(v) for v in self.dates.value())
        if (lo, hi) == self._date_span or (lo <= self._date_span[0] and hi >= self._date_span[1]):
            return None, None
        return dt.date.fromordinal(lo).isoformat(), dt.date.fromordinal(hi).isoformat()

    def filters(self) -> SearchFilters:
        from medhash_app.core.search.types import SearchFilters  # lazy: the search package loads torch

        date_from, date_to = self.date_range()
        return SearchFilters(
            labels=[self.label.currentText()] if self.label.currentIndex() > 0 else [],
            modality=self.modality.currentText() if self.modality.currentIndex() > 0 else None,
            view=self.view.currentText() if self.view.currentIndex() > 0 else None,
            date_from=date_from, date_to=date_to,
            keyword=self.keyword.text().strip() or None,
        )

    def case_filter(self) -> CaseFilter:
        """The same choices as `filters()`, for the library's case listing (no search package)."""
        from medhash_app.core.library import CaseFilter

        date_from, date_to = self.date_range()
        return CaseFilter(labels=[self.label.currentText()] if self.label.currentIndex() > 0 else None,
                          modality=self.modality.currentText() if self.modality.currentIndex() > 0 else None,
                          view=self.view.currentText() if self.view.currentIndex() > 0 else None,
                          date_from=date_from, date_to=date_to, keyword=self.keyword.text().strip() or None)

    def set_search_controls_visible(self, visible: bool) -> None:
        """Hide "Find", "Bits" and "Show" where the bar filters a listing, not a search."""
        for widget in self._search_controls:
            widget.setVisible(visible)

    def is_filtering(self) -> bool:
        f = self.filters()
        return bool(f.labels or f.modality or f.view or f.date_from or f.date_to or f.keyword)

    def clear(self) -> None:
        self.blockSignals(True)
        for combo in (self.label, self.modality, self.view):
            combo.setCurrentIndex(0)
        self.keyword.clear()
        if self._date_span is not None:
            self.dates.setValue(self._date_span)
        self.blockSignals(False)
        self._poke()

    def set_view_mode(self, mode: str) -> None:
        (self.grid_button if mode == "grid" else self.list_button).setChecked(True)

    def _on_dates(self, value: Any, emit: bool = True) -> None:
        if self._date_span is None:
            self.dates_label.setText("No study dates")
            return
        lo, hi = (int(v) for v in value)
        self.dates_label.setText(f"{dt.date.fromordinal(lo).isoformat()} – {dt.date.fromordinal(hi).isoformat()}")
        if emit:
            self._poke()

    def _poke(self, *_: Any) -> None:
        if not self.signalsBlocked():
            self._debounce.start()
