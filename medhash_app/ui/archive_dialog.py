"""File → Open archive…: which shared archive to search (a libpq service name or a postgresql:// URL,
never a password: those live in ~/.pgpass or a service file, docs/archive.md) and whether this
workstation keeps a local mirror of its codes."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QStandardPaths
from PySide6.QtWidgets import QCheckBox, QDialog, QDialogButtonBox, QLabel, QLineEdit, QVBoxLayout, QWidget

from medhash_app.ui.themes import set_role

HELP = ("A libpq service name (e.g. <b>radiology</b>) or a <b>postgresql://host/database</b> URL. "
        "Do not type a password here: MedHash refuses one. Put it in ~/.pgpass or a service file "
        "(see docs/archive.md), or use certificate or Kerberos sign-in.")


def default_mirror_folder() -> Path:
    """The per-user data folder's archive-mirror subfolder (one file per archive and code set)."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppLocalDataLocation)
    return Path(base or Path.home() / ".local/share/MedHash") / "archive-mirror"


class OpenArchiveDialog(QDialog):
    """Asks for the target; `target()` and `mirror_folder()` after it is accepted."""

    def __init__(self, last_target: str = "", keep_mirror: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open archive")
        self.target_edit = QLineEdit(last_target, self)
        self.target_edit.setPlaceholderText("radiology   or   postgresql://archive.hospital.local/medhash")
        self.target_edit.setAccessibleName("Archive service name or URL")
        self.target_edit.setMinimumWidth(460)
        help_label = QLabel(HELP, self)
        help_label.setWordWrap(True)
        set_role(help_label, "muted")
        self.mirror_check = QCheckBox("Keep a local mirror of the archive's codes on this workstation "
                                      "(faster exact searches)", self)
        self.mirror_check.setChecked(keep_mirror)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Archive:", self))
        layout.addWidget(self.target_edit)
        layout.addWidget(help_label)
        layout.addWidget(self.mirror_check)
        layout.addWidget(buttons)

    def target(self) -> str:
        return self.target_edit.text().strip()

    def mirror_folder(self) -> Path | None:
        return default_mirror_folder() if self.mirror_check.isChecked() else None
