"""File → PACS…: start and stop the DICOM listener from the window (its status shown), receive an
instance a real Orthanc sends, then find and pull a study over DICOMweb into the open library; the
network work runs in workers while the GUI thread stays free."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from tests.pacs_orthanc import Orthanc, free_port, orthanc_problem

pytestmark = [pytest.mark.skipif(orthanc_problem() is not None, reason=str(orthanc_problem())),
              pytest.mark.shared_data]

CSPINE = tuple(f"xray_chest/CR_cspine_MONO1_Agfa_16x16_thumb{i}.dcm" for i in (1, 2, 3))
CT = "transfer_syntax_misc/CT_small.dcm"


def test_listen_receive_find_and_pull_from_the_window(qtbot, open_library, window, dicom_dir: Path,
                                                      tmp_path: Path) -> None:
    open_library(window, tmp_path / "library", create=True)
    dialog = window.show_pacs()
    port = free_port()
    dialog.aet_edit.setText("MEDHASH_UI")
    dialog.port_spin.setValue(port)
    dialog.accept_edit.setText("ORTHANC")
    orthanc = Orthanc(tmp_path / "orthanc", {"medhash": {"aet": "MEDHASH_UI", "port": port}}).start()
    try:
        ids = [orthanc.upload(dicom_dir / rel)["ID"] for rel in (CT, *CSPINE)]
        qtbot.mouseClick(dialog.listen_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: dialog.listener is not None, timeout=30_000)
        assert f"on 127.0.0.1:{port}" in dialog.listen_status.text()
        assert dialog.listen_button.text() == "Stop receiving"
        assert orthanc.store_to("medhash", ids[0]).status_code == 200
        qtbot.waitUntil(lambda: "1 added" in dialog.listen_status.text(), timeout=10_000)

        dialog.url_edit.setText(orthanc.dicomweb_url)
        dialog.modality_edit.setText("CR")
        qtbot.mouseClick(dialog.find_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: dialog.results.rowCount() == 1, timeout=20_000)
        assert dialog.results.item(0, 2).text() == "77654033"
        dialog.results.item(0, 0).setCheckState(Qt.CheckState.Checked)
        qtbot.mouseClick(dialog.pull_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "3 added" in dialog.query_status.text() and dialog.pull_button.isEnabled(),
                        timeout=60_000)
        qtbot.waitUntil(lambda: window.state.info.case_count == 4, timeout=10_000)

        dialog.modality_edit.setText("CT")  # the study becomes the search query; nothing is imported
        qtbot.mouseClick(dialog.find_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: dialog.results.rowCount() == 1 and dialog.studies[0].modalities == "CT",
                        timeout=20_000)
        dialog.results.setCurrentCell(0, 1)
        qtbot.mouseClick(dialog.search_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: window.search_tab.query.image_path is not None, timeout=20_000)
        query = window.search_tab.query.image_path
        assert window.tabs.currentWidget() is window.search_tab
        assert query.is_file() and not query.is_relative_to(tmp_path / "library")
        assert window.state.info.case_count == 4

        qtbot.mouseClick(dialog.listen_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: dialog.listen_status.text() == "Not receiving.", timeout=20_000)
        assert dialog.listener is None
        assert orthanc.echo("medhash").status_code != 200  # the port is closed again
    finally:
        orthanc.stop()
