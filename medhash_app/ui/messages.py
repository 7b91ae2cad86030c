"""Plain-words problem reporting: an inline message bar for user problems, dialogs for bugs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QMessageBox, QToolButton, QWidget

from medhash_app.core.errors import MedHashError

# Core messages name the `medhash` command that fixes a problem; the window names its own tab or
# button instead (the CLI wording stays right for the CLI).
_WINDOW_WORDING: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(a), b) for a, b in (
    (r"run `medhash train[^`]*` or choose one with `medhash models --activate[^`]*`",
     "train one in the Trainer tab, or select one under Library › Manage › Models and press Make active"),
    (r"run `medhash train[^`]*`", "train one in the Trainer tab"),
    (r"compute them with `medhash encode[^`]*`", "compute them with Re-encode library in the Library tab"),
    (r"run `medhash encode[^`]*`", "use Re-encode library in the Library tab"),
    (r"`medhash encode[^`]*`", "Re-encode library (Library tab)"),
    (r"\(medhash ingest --allow-outside FOLDER\)",
     "(import that folder itself, or move the files into the folder being imported)"),
    (r"`medhash demo[^`]*`", "File › Open demo library"),
))


def for_the_window(text: str) -> str:
    """A core message with its `medhash …` command hints replaced by the tab or menu that does it."""
    for pattern, replacement in _WINDOW_WORDING:
        text = pattern.sub(replacement, text)
    return text


def describe(exc: BaseException) -> str:
    """One or two sentences a radiologist can act on; never a traceback."""
    if isinstance(exc, MedHashError):
        item = Path(exc.item).name if exc.item and ("/" in exc.item or "\\" in exc.item) else exc.item
        reason = for_the_window(exc.reason)
        return f"{item}: {reason}" if item else reason
    if isinstance(exc, MemoryError):
        return "The computer ran out of memory for this task. Close other programs or use smaller inputs."
    if isinstance(exc, PermissionError):
        return f"MedHash may not read or write {Path(exc.filename or '').name or 'this file'}."
    if isinstance(exc, FileNotFoundError):
        return f"{Path(exc.filename or '').name or 'A file'} was not found."
    if isinstance(exc, OSError):
        return f"The operating system refused: {exc.strerror or exc}."
    return f"Unexpected problem ({type(exc).__name__}). Details were written to the log."


class MessageBar(QFrame):
    """A one-line banner at the top of a tab: info, warning or error, with a close button."""

    COLOURS: ClassVar[dict[str, str]] = {"info": "#2f6fb3", "warning": "#b7791f", "error": "#c53030"}

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageBar")
        self.label = QLabel(self)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setAccessibleName("Message")
        close = QToolButton(self)
        close.setText("✕")
        close.setAccessibleName("Dismiss message")
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 4, 4, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(close)
        self.kind = "info"
        self._timer = QTimer(self, singleShot=True)
        self._timer.timeout.connect(self.hide)
        self.hide()

    def show_message(self, text: str, kind: str = "info", timeout_ms: int = 0) -> None:
        self.kind = kind
        colour = self.COLOURS.get(kind, self.COLOURS["info"])
        self.setStyleSheet(f"#messageBar {{ background: {colour}; border-radius: 3px; }}"
                           f"#messageBar QLabel, #messageBar QToolButton {{ color: white; }}")
        self.label.setText(for_the_window(text))
        self.show()
        if timeout_ms:
            self._timer.start(timeout_ms)
        else:
            self._timer.stop()

    def show_error(self, exc: BaseException) -> None:
        self.show_message(describe(exc), "error" if not isinstance(exc, MedHashError) else "warning")

    def text(self) -> str:
        return "" if self.isHidden() else self.label.text()


def error_dialog(parent: QWidget | None, title: str, exc: BaseException, details: str = "") -> None:
    box = QMessageBox(QMessageBox.Icon.Warning, title, describe(exc), QMessageBox.StandardButton.Ok, parent)
    if details:
        box.setDetailedText(details)
    box.open()
