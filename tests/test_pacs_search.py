"""A study on the PACS as a search query: `medhash pacs search` fetches its first image (WADO-RS
from a real Orthanc) and ranks the library's cases exactly as searching with the same image from
disk does, without adding anything to the library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.library import Library
from medhash_app.core.pacs import RECEIVED_DIR
from tests.pacs_orthanc import Orthanc, orthanc_problem

pytestmark = [pytest.mark.skipif(orthanc_problem() is not None, reason=str(orthanc_problem())),
              pytest.mark.shared_data]

CHEST = "xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm"


def test_search_with_a_pacs_study_without_importing_it(tiny_library: Path, dicom_dir: Path, tmp_path: Path) -> None:
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        study_id = server.upload(dicom_dir / CHEST)["ParentStudy"]
        uid = requests.get(f"{server.url}/studies/{study_id}", timeout=10).json()["MainDicomTags"]["StudyInstanceUID"]
        with Library.open(tiny_library, read_only=True) as lib:
            before = lib.count_cases()
        runner = CliRunner()
        remote = runner.invoke(app, ["pacs", "search", "--library", str(tiny_library), server.dicomweb_url,
                                     "--study", uid, "-k", "5", "--json"])
        assert remote.exit_code == 0, remote.output
        local = runner.invoke(app, ["search", "--library", str(tiny_library), "--image", str(dicom_dir / CHEST),
                                    "-k", "5", "--json"])
        assert local.exit_code == 0, local.output
    finally:
        server.stop()
    hits = [(h["case_id"], h["distance"]) for h in json.loads(remote.stdout)["hits"]]
    assert len(hits) == 5
    assert hits == [(h["case_id"], h["distance"]) for h in json.loads(local.stdout)["hits"]]
    with Library.open(tiny_library, read_only=True) as lib:
        assert lib.count_cases() == before
    assert not (tiny_library / RECEIVED_DIR).exists()
