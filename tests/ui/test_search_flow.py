"""Search tab end to end on a real library: drop a DICOM, type a report, filter, cancel, case view."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import QApplication

from medhash_app.ui.results_model import COL, ThumbRole

pytestmark = [pytest.mark.shared_data]

QUERY_DICOM = "xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm"


def drop_files(widget, paths: list[Path]) -> None:
    """What the OS does on a drag and drop: enter, then drop, with file URLs in the mime data."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QPoint(widget.width() // 2, widget.height() // 2)
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    drop = QDropEvent(pos.toPointF(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, drop)


@pytest.fixture
def ready(qtbot, open_library, window, demo_library: Path):
    open_library(window, demo_library)
    tab = window.search_tab
    qtbot.waitUntil(lambda: tab.filters.label.count() > 1, timeout=10_000)  # filter options loaded
    return window


def test_drop_dicom_shows_ranked_reports(qtbot, ready, dicom_dir: Path) -> None:
    tab = ready.search_tab
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        drop_files(ready, [dicom_dir / QUERY_DICOM])
    result, elapsed_ms = blocker.args
    assert tab.query.mode == "image"
    qtbot.waitUntil(tab.query.viewer_panel.viewer.has_image, timeout=20_000)
    assert result.query_kind == "image" and len(result.hits) > 10
    assert [h.rank for h in result.hits] == list(range(1, len(result.hits) + 1))
    distances = [h.distance for h in result.hits]
    assert distances == sorted(distances)
    assert all(h.matched == "text" and h.case.get("report") for h in result.hits)
    assert tab.model.rowCount() == len(result.hits)
    qtbot.waitUntil(lambda: tab.results.table.visualRect(tab.model.index(0, COL["report"])).height() > 0)
    assert f"{elapsed_ms:.0f} ms" in tab.summary.text()
    assert "ms" in ready.search_time.text() and ready.model_label.text().startswith("Model:")
    assert "cases" in ready.library_label.text()


def test_typed_report_finds_images_with_ctrl_enter(qtbot, ready) -> None:
    tab = ready.search_tab
    tab.filters.set_target("images")
    ready.activateWindow()
    qtbot.waitActive(ready)
    tab.query.report_edit.setFocus()
    qtbot.keyClicks(tab.query.report_edit, "Cardiomegaly with a small left pleural effusion.")
    assert tab.query.mode == "text"
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        qtbot.keyClick(tab.query.report_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    result = blocker.args[0]
    assert result.query_kind == "text" and result.hits
    assert all(h.matched == "image" for h in result.hits)
    # thumbnails of the visible rows arrive from the loader thread
    qtbot.waitUntil(lambda: tab.model.data(tab.model.index(0, COL["image"]), ThumbRole) is not None,
                    timeout=10_000)


def test_filters_restrict_hits(qtbot, ready) -> None:
    tab = ready.search_tab
    tab.query.set_mode("text")
    tab.query.report_edit.setPlainText("moderate non proliferative retinopathy")
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000):
        tab.search()
    label = tab.filters.label.itemText(1)
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        tab.filters.label.setCurrentIndex(1)  # debounced re-search
    hits = blocker.args[0].hits
    assert hits and all(label in h.case["labels"] for h in hits)
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        tab.filters.clear()
        tab.filters.keyword.setText("retinopathy")
    hits = blocker.args[0].hits
    assert hits and all("retinopathy" in h.case["report"].lower() for h in hits)


def test_new_search_cancels_the_previous_one(qtbot, ready, dicom_dir: Path) -> None:
    tab = ready.search_tab
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000):
        tab.open_paths([dicom_dir / QUERY_DICOM])
    finished: list[object] = []
    tab.searchFinished.connect(lambda result, _ms: finished.append(result))
    first = tab.search()
    tab.query.set_mode("text")
    tab.query.report_edit.setPlainText("pneumothorax")
    second = tab.search()
    with qtbot.waitSignal(second.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: first.done, timeout=60_000)
    assert first.is_cancelled and not second.is_cancelled
    assert [r.query_kind for r in finished] == ["text"]
    assert tab.result.query_kind == "text"


def test_case_view_side_by_side_copy_and_export(qtbot, ready, dicom_dir: Path, tmp_path: Path) -> None:
    tab = ready.search_tab
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000):
        tab.open_paths([dicom_dir / QUERY_DICOM])
    qtbot.waitUntil(lambda: tab.query.image is not None, timeout=20_000)  # decoded for the viewer
    hit = tab.model.hit(0)
    dialog = tab.open_case(hit)
    qtbot.waitUntil(lambda: dialog.view.case_pane.viewer_panel.viewer.has_image(), timeout=20_000)
    assert dialog.view.query_pane.viewer_panel.viewer.image is tab.query.image
    assert hit.case["report"].split()[0] in dialog.view.case_pane.report.toPlainText()
    dialog.copy_report()
    assert QGuiApplication.clipboard().text() == hit.case["report"]
    dialog.step(1)
    assert dialog.view.hit.rank == 2
    png = dialog.export_to(tmp_path / "case.png")
    pdf = dialog.export_to(tmp_path / "case.pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 10_000
    summary = tab.export_summary(tmp_path / "summary.pdf")
    assert summary.read_bytes()[:5] == b"%PDF-"
    dialog.close()
