"""Results a radiologist can trust: a result list always belongs to the query shown beside it and
says which one; a typed report finds images by default; a folder with a file list imports as a
folder; the last library is reopened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from medhash_app.ui.settings import AppSettings

QUERY_DICOM = "xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm"
REPORT = "Cardiomegaly with a small left pleural effusion."


@pytest.fixture
def ready(qtbot, open_library, window, demo_library: Path):
    open_library(window, demo_library)
    tab = window.search_tab
    qtbot.waitUntil(lambda: tab.filters.label.count() > 1, timeout=10_000)  # filter options loaded
    return window


def _search_image(qtbot, tab, path: Path):
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        tab.open_paths([path])
    return blocker.args[0]


@pytest.mark.shared_data
def test_switching_query_kind_reruns_or_clears_the_list(qtbot, ready, dicom_dir: Path) -> None:
    tab = ready.search_tab
    result = _search_image(qtbot, tab, dicom_dir / QUERY_DICOM)
    assert result.query_kind == "image" and tab.model.rowCount() > 0
    assert tab.summary.text().startswith(f"Image query {Path(QUERY_DICOM).name}: ")
    # "Report query" with nothing typed: the image's list does not stay beside an empty report box
    tab.query.text_button.click()
    assert tab.query.mode == "text"
    assert tab.model.rowCount() == 0 and tab.result is None and not tab.csv_button.isEnabled()
    assert tab.summary.text().startswith("Report query: ")
    tab.query.report_edit.setPlainText(REPORT)
    # back to "Image query": its search runs again for the image shown
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        tab.query.image_button.click()
    assert blocker.args[0].query_kind == "image" and tab.result_query.mode == "image"
    # and to "Report query" with a report typed: the report's search runs
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        tab.query.text_button.click()
    assert blocker.args[0].query_kind == "text"
    assert tab.summary.text().startswith(f"Report query “{REPORT[:40]}…”: ")


@pytest.mark.shared_data
def test_case_view_shows_the_query_the_results_answer(qtbot, ready) -> None:
    tab = ready.search_tab
    tab.query.set_mode("text")
    tab.query.report_edit.setPlainText(REPORT)
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000):
        tab.search()
    tab.query.report_edit.setPlainText("something else, not searched yet")
    dialog = tab.open_case(tab.model.hit(0))
    assert dialog.view.query_kind == "text"
    query_side = dialog.view.query_pane.report.toPlainText()
    assert REPORT in query_side and "Image query" not in query_side and "something else" not in query_side
    dialog.close()


@pytest.mark.shared_data
def test_a_failed_search_clears_the_earlier_list(qtbot, ready, dicom_dir: Path, tmp_path: Path) -> None:
    tab = ready.search_tab
    _search_image(qtbot, tab, dicom_dir / QUERY_DICOM)
    assert tab.model.rowCount() > 0
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with qtbot.waitSignal(tab.searchFailed, timeout=60_000):
        tab.open_paths([broken])
    assert tab.model.rowCount() == 0 and tab.result is None and tab.result_query is None
    assert "search failed" in tab.summary.text() and "broken.png" in tab.summary.text()
    assert not tab.csv_button.isEnabled() and not tab.pdf_button.isEnabled()


@pytest.mark.shared_data
def test_a_typed_report_finds_images_by_default(qtbot, ready, settings: AppSettings, dicom_dir: Path) -> None:
    tab = ready.search_tab
    result = _search_image(qtbot, tab, dicom_dir / QUERY_DICOM)
    assert tab.filters.target_value() == "reports" and all(h.matched == "text" for h in result.hits)
    ready.activateWindow()
    qtbot.waitActive(ready)
    tab.query.report_edit.setFocus()
    qtbot.keyClicks(tab.query.report_edit, REPORT)
    assert tab.query.mode == "text" and tab.filters.target_value() == "images"
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        qtbot.keyClick(tab.query.report_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    result = blocker.args[0]
    assert result.query_kind == "text" and result.hits and all(h.matched == "image" for h in result.hits)
    assert tab.summary.text().split(": ", 1)[1].split()[1] == "images"
    assert settings.search_target("text") == "images" and settings.search_target("image") == "reports"


def test_target_choices_are_remembered_per_query_kind(tmp_path: Path) -> None:
    settings = AppSettings.from_ini(tmp_path / "s.ini")
    assert (settings.search_target("image"), settings.search_target("text")) == ("reports", "images")
    settings.qs.setValue("search/target", "reports")  # what earlier versions saved for every query
    assert settings.search_target("text") == "images"
    settings.set_search_target("both", "text")
    assert (settings.search_target("image"), settings.search_target("text")) == ("reports", "both")


def test_a_folder_with_a_file_list_imports_as_a_folder(qtbot, open_library, window, tmp_path: Path) -> None:
    source = tmp_path / "incoming"
    source.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8)).save(source / f"{i}.png")
    (source / "manifest.tsv").write_text("file\tbytes\n" + "".join(f"{i}.png\t1\n" for i in range(3)))
    open_library(window, tmp_path / "library", create=True)
    tab = window.library_tab
    with qtbot.waitSignal(tab.importFinished, timeout=120_000) as blocker:
        tab.import_paths([source])
    assert blocker.args[0] is not None and blocker.args[0].added == 3
    assert tab.problems.rowCount() == 0 and "image' column" not in tab.message.text()


def test_the_last_library_is_reopened_after_close_and_quit(qtbot, open_library, window, settings: AppSettings,
                                                          tmp_path: Path) -> None:
    library = tmp_path / "library"
    open_library(window, library, create=True)
    window.close()  # the close event shuts down
    window.shutdown()  # and so does QApplication.aboutToQuit
    reread = AppSettings.from_ini(Path(settings.qs.fileName()))
    assert reread.last_library() == library  # the second shutdown used to save an empty value
