"""A titled section that folds away. (superqt's QCollapsible draws its arrow into a pixmap with
the palette of the moment, so it stays in the old colours after a theme switch; this one uses a
QToolButton arrow, which the style repaints with the current palette.)"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QSizePolicy, QToolButton, QVBoxLayout, QWidget


class Collapsible(QWidget):
    """Header button + content; `toggled(bool)` when opened or closed."""

    toggled = Signal(bool)

    def __init__(self, title: str, parent: QWidget | None = None, expanded: bool = False) -> None:
        super().__init__(parent)
        self.button = QToolButton(self)
        self.button.setText(title)
        self.button.setAccessibleName(title)
        self.button.setCheckable(True)
        self.button.setAutoRaise(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.button.toggled.connect(self.set_expanded)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(2)
        self._layout.addWidget(self.button)
        self._widgets: list[QWidget] = []
        self.set_expanded(expanded)

    def addWidget(self, widget: QWidget) -> None:
        self._widgets.append(widget)
        self._layout.addWidget(widget)
        widget.setVisible(self.is_expanded())

    def is_expanded(self) -> bool:
        return self.button.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        if self.button.isChecked() != expanded:
            self.button.setChecked(expanded)  # re-enters through toggled
            return
        self.button.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        for widget in self._widgets:
            widget.setVisible(expanded)
        self.toggled.emit(expanded)
