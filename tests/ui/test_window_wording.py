"""The window points to its own tabs and buttons, not to `medhash …` commands."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QAbstractButton, QLabel

from medhash_app.core.audit import audit_library
from medhash_app.core.errors import MedHashError
from medhash_app.core.library import Library
from medhash_app.ui.messages import describe, for_the_window


def test_core_problems_name_the_tab_that_fixes_them(qtbot, window, tmp_path: Path) -> None:
    library = Library.open(tmp_path / "empty", create=True)
    try:
        audit_library(library)
    except MedHashError as exc:
        text = describe(exc)
    assert "medhash " not in text and "Trainer tab" in text
    window.search_tab.message.show_error(MedHashError(
        "model 3", "has no codes yet (image codes, 64 bits); compute them with `medhash encode --model 3`"))
    assert "Re-encode library in the Library tab" in window.search_tab.message.text()
    assert "medhash" not in for_the_window("no trained model is active in this library; run `medhash train` or "
                                           "choose one with `medhash models --activate ID`")
    texts = [w.text() for w in window.findChildren(QLabel)] + [w.text() for w in window.findChildren(QAbstractButton)]
    texts += [w.toolTip() for w in window.findChildren(QAbstractButton)]
    assert not [t for t in texts if "medhash " in t.lower() or "run `" in t.lower()]
    library.close()
