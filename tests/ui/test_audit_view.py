"""Data audit view: run the audit from the window, browse the suspicious pairs case by case."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PySide6.QtWidgets import QAbstractButton

from medhash_app.core.audit import audit_library


def test_audit_needs_an_open_library(window) -> None:
    view = window.audit_tab
    assert not view.run_button.isEnabled()
    assert view.run() is None
    assert "library" in view.message.text().lower()
    unnamed = [b.text() for b in view.findChildren(QAbstractButton)
               if not (b.accessibleName() or b.text()) and not b.objectName().startswith("qt_")]
    assert unnamed == []


@pytest.mark.shared_data
def test_run_audit_and_browse_pairs(qtbot, open_library, window, demo_library: Path, tmp_path: Path) -> None:
    open_library(window, demo_library)
    view = window.audit_tab
    window.tabs.setCurrentWidget(view)
    view.top_spin.setValue(12)
    with qtbot.waitSignal(view.auditFinished, timeout=30_000):
        view.run_button.click()
    expected = audit_library(window.state.session.library, top=12)

    ids = view.case_ids()
    assert ids == [r.case_id for r in expected.rows] and len(ids) == 12
    scores = [float(view.table.item(r, 1).text()) for r in range(view.table.rowCount())]
    assert scores == sorted(scores, reverse=True)
    assert [view.table.item(r, 0).text() for r in range(3)] == ["1", "2", "3"]

    with qtbot.waitSignal(view.caseShown, timeout=20_000) as shown:
        view.table.selectRow(1)
    assert shown.args == [ids[1]]
    case = window.state.session.library.get_case(ids[1])
    text = view.pane.report.toPlainText()
    assert " ".join(case["report"].split()) in " ".join(text.split())  # the full report, not the excerpt
    assert all(label in text for label in case["labels"])
    qtbot.waitUntil(lambda: view.pane.viewer_panel.viewer.has_image(), timeout=20_000)
    assert view.pane.stack.currentWidget() is view.pane.viewer_panel

    with qtbot.waitSignal(view.caseShown, timeout=20_000) as shown:
        view.next_button.click()
    assert view.current_row() == 2 and shown.args == [ids[2]]
    assert view.prev_button.isEnabled()

    out = view.export_csv(tmp_path / "audit.csv")
    with out.open(encoding="utf-8") as handle:
        assert [row["case_id"] for row in csv.DictReader(handle)] == ids

