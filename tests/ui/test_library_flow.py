"""Library tab: create a library, import a folder holding a corrupt file, models and indexes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.shared_data]

GOOD = ("xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm", "transfer_syntax_misc/MR_small_RLE.dcm",
        "transfer_syntax_misc/CT_small.dcm")
CORRUPT = "xray_chest/DX_chest_PA_MONO1_Canon_J2K_lossless_CORRUPT_COM_marker.dcm"


def test_import_folder_with_a_corrupt_file(qtbot, open_library, window, dicom_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "incoming"
    source.mkdir()
    for rel in (*GOOD, CORRUPT):
        shutil.copy(dicom_dir / rel, source / Path(rel).name)
    open_library(window, tmp_path / "new-library", create=True)
    tab = window.library_tab
    window.tabs.setCurrentWidget(tab)
    assert "0 cases" in tab.stats_label.text()
    with qtbot.waitSignal(tab.importFinished, timeout=120_000) as blocker:
        window.handle_drop([source])  # a drop on the Library tab imports
    report = blocker.args[0]
    assert report.added == len(GOOD)
    rows = [[tab.problems.item(r, c).text() for c in range(3)] for r in range(tab.problems.rowCount())]
    assert len(rows) == 1
    status, path, reason = rows[0]
    assert status == "failed" and Path(path).name == Path(CORRUPT).name and len(reason) > 10
    assert f"Added {len(GOOD)}" in tab.import_summary.text()
    assert "could not be imported" in tab.message.text()
    qtbot.waitUntil(lambda: window.state.info.case_count == len(GOOD), timeout=10_000)
    assert f"{len(GOOD)} cases" in window.library_label.text()
    # importing again skips what is there and fails nothing new besides the corrupt file
    with qtbot.waitSignal(tab.importFinished, timeout=120_000) as blocker:
        tab.import_paths([source])
    assert blocker.args[0].added == 0 and blocker.args[0].skipped == len(GOOD)
    # no model yet: re-encoding explains what to do instead of failing silently
    tab.encode_library()
    qtbot.waitUntil(lambda: "no trained model" in tab.message.text(), timeout=30_000)


def test_models_and_index_status_verify_and_rebuild(qtbot, open_library, window, demo_library: Path) -> None:
    open_library(window, demo_library)
    tab = window.library_tab
    qtbot.waitUntil(lambda: tab.models.rowCount() >= 1 and tab.indexes.rowCount() >= 4, timeout=20_000)
    assert tab.models.item(0, 4).text() == "●"  # the trained model is active
    states = {tab.indexes.item(r, 4).text() for r in range(tab.indexes.rowCount())}
    assert states
    tab.rebuild_button.click()
    qtbot.waitUntil(lambda: "rebuilt" in tab.message.text(), timeout=60_000)
    qtbot.waitUntil(lambda: tab.rebuild_button.isEnabled(), timeout=10_000)
    counts = [int(tab.indexes.item(r, 3).text()) for r in range(tab.indexes.rowCount())]
    assert all(c > 100 for c in counts)
