"""Library tab's case browser: pages, filters, sort, lazy thumbnails, and the case view."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from medhash_app.core.library import Library, atomic_write, thumb_rel_path
from medhash_app.core.library.browse import browse_cases

N = 450


def _png(shade: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), shade).save(buffer, "PNG")
    return buffer.getvalue()


def _make_library(root: Path) -> Path:
    folder = root / "browse-lib"
    lib = Library.open(folder, create=True)
    images = root / "images"
    images.mkdir()
    rows = []
    for i in range(N):
        case_id = f"{i:032x}"
        source = images / f"case{i:03d}.png"
        if i < 40:
            source.write_bytes(_png(40 + i))
            atomic_write(lib.path_of(thumb_rel_path(case_id)), _png(40 + i, 32))
        rows.append({"id": case_id, "source_path": str(source), "modality": "OP" if i % 3 == 0 else "CR",
                     "view": "PA", "study_date": f"2019-{1 + i % 12:02d}-01", "report": f"Report number {i}.",
                     "labels": ["cardiomegaly"] if i % 4 == 0 else [],
                     "thumb_path": thumb_rel_path(case_id) if i < 40 else None})
    lib.add_cases(rows)
    lib.close()
    return folder


def test_browse_pages_filters_sorts_and_opens_a_case(qtbot, open_library, window, tmp_path: Path) -> None:
    folder = _make_library(tmp_path)
    tab = window.library_tab
    browser = tab.browser
    window.tabs.setCurrentWidget(tab)
    tab.sections.setCurrentWidget(browser)
    with qtbot.waitSignal(browser.pageShown, timeout=30_000):
        open_library(window, folder)
    assert browser.model.rowCount() == 200 and "of 450 cases" in browser.page_label.text()
    assert "page 1 of 3" in browser.page_label.text()
    assert not browser.prev_button.isEnabled() and browser.next_button.isEnabled()
    assert browser.model.cases[0]["id"] == f"{0:032x}"  # import order
    # the grid asks for the thumbnails it paints, not the whole page
    browser.set_view_mode("grid")
    qtbot.waitUntil(lambda: len(browser.loader.requested) > 0, timeout=10_000)
    assert len(browser.loader.requested) < 200
    first = browser.model.index(0, 0)
    qtbot.waitUntil(lambda: browser.model.data(first, 1) is not None, timeout=10_000)  # DecorationRole
    with qtbot.waitSignal(browser.pageShown, timeout=10_000):
        browser.next_button.click()
    assert "page 2 of 3" in browser.page_label.text() and browser.model.cases[0]["id"] == f"{200:032x}"
    # sorted and filtered like the search: same filter bar, same CaseFilter
    with qtbot.waitSignal(browser.pageShown, timeout=10_000):
        browser.descending.setChecked(True)
    assert browser.model.cases[0]["id"] == f"{N - 1:032x}" and "page 1 of 3" in browser.page_label.text()
    qtbot.waitUntil(lambda: browser.filters.modality.count() > 1, timeout=10_000)
    with qtbot.waitSignal(browser.pageShown, timeout=10_000):
        browser.filters.modality.setCurrentText("OP")
    expected = browse_cases(Library.open(folder, read_only=True), browser.filters.case_filter(), page_size=500)
    assert expected.total == len(range(0, N, 3))
    assert f"of {expected.total} cases" in browser.page_label.text()
    assert all(c["modality"] == "OP" for c in browser.model.cases)
    # double-click opens the case view with its report and image
    browser.set_view_mode("list")
    index = browser.model.index(browser.model.cases.index(
        next(c for c in browser.model.cases if c["id"] == f"{39:032x}")), 1)
    browser.table.scrollTo(index)
    rect = browser.table.visualRect(index)
    qtbot.mouseClick(browser.table.viewport(), qtbot_left(), pos=rect.center())
    qtbot.mouseDClick(browser.table.viewport(), qtbot_left(), pos=rect.center())
    assert browser.case_dialog is not None and browser.case_dialog.isVisible()
    view = browser.case_dialog.view
    assert "Report number 39." in view.case_pane.report.toPlainText()
    qtbot.waitUntil(lambda: view.case_pane.stack.currentWidget() is view.case_pane.viewer_panel, timeout=20_000)


def qtbot_left():
    from PySide6.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_import_progress_shows_counts_and_time_left_and_reasons_in_full(qtbot, window) -> None:
    from medhash_app.core.ingest.items import IngestProgress, IngestReport

    tab = window.library_tab
    window.tabs.setCurrentWidget(tab)
    row = tab.import_progress
    row.begin("Importing 1 item(s)…")
    row._start -= 30  # 30 s in
    row.update_progress(IngestProgress(done=300, total=1500, added=280, skipped=15, failed=5, files_per_s=2.0))
    assert row.bar.maximum() == 1500 and row.bar.value() == 300  # determinate
    text = row.label.text()
    assert "300 of 1,500 files" in text and "added 280" in text and "skipped 15" in text and "failed 5" in text
    assert "about 10 min left" in text
    reason = ("the file ends after 812 of 4,096 bytes of pixel data (a truncated download or copy?); "
              "import it again from the original media. Files outside are not read unless their folder is "
              "allowed (medhash ingest --allow-outside FOLDER)")
    report = IngestReport(batch_id="x", total=2, added=1, failed=[("/data/in/broken.dcm", reason)])
    tab._on_imported(report)
    assert tab.problems.wordWrap()
    assert tab.problem_details.isVisibleTo(tab)
    details = tab.problem_details.text()
    assert "/data/in/broken.dcm" in details and "import it again from the original media" in details
    assert "medhash ingest" not in details and "Files outside are not read" in details  # the window's wording
    assert tab.problems.rowHeight(0) > tab.problems.verticalHeader().minimumSectionSize()
