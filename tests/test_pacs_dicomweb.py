"""DICOMweb query and retrieve against a real Orthanc with its DICOMweb plugin (started here on
127.0.0.1): QIDO-RS find by patient, date, modality and accession; WADO-RS pull into a library;
a pull cancelled half way; a server that disappears mid-transfer; `medhash pacs find|pull`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.errors import MedHashError
from medhash_app.core.library import Library
from medhash_app.core.pacs import RECEIVED_DIR
from medhash_app.core.pacs.dicomweb import PullProgress, find_studies, pull_studies
from medhash_app.core.pacs.origin import network_origin
from tests.pacs_orthanc import Orthanc, orthanc_problem

pytestmark = [pytest.mark.skipif(orthanc_problem() is not None, reason=str(orthanc_problem())),
              pytest.mark.shared_data]

# Studies with distinct SOP Instance UIDs (many of the real test files share one, and a PACS keeps one
# instance per UID): a CR c-spine study of 3 tiny images, an OT study of 3 colour images, a CT
# image, and the corrupt 12-bit JPEG hip (a study of its own here).
CSPINE = tuple(f"xray_chest/CR_cspine_MONO1_Agfa_16x16_thumb{i}.dcm" for i in (1, 2, 3))
COLOUR = ("transfer_syntax_misc/SC_rgb_jpeg_gdcm.dcm", "transfer_syntax_misc/SC_rgb_small_odd_jpeg.dcm",
          "transfer_syntax_misc/SC_ybr_full_422_uncompressed.dcm")
CORRUPT = "xray_other/CR_hip_MONO2_Fuji_RG2_JPEGExt12bit_CORRUPT.dcm"
CT = "transfer_syntax_misc/CT_small.dcm"
CSPINE_PATIENT = "77654033"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, dicom_dir: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    for rel in (*CSPINE, *COLOUR, CORRUPT, CT):
        assert server.upload(dicom_dir / rel)["Status"] == "Success"
    yield server
    server.stop()


def _study(url: str, **filters: str) -> str:
    (study,) = find_studies(url, **filters)
    return study.study_uid


def test_find_by_modality_patient_date_and_accession(pacs: Orthanc) -> None:
    assert len(find_studies(pacs.dicomweb_url)) == 4
    assert {s.patient_id for s in find_studies(pacs.dicomweb_url, modality="CR")} == {CSPINE_PATIENT, "10RG2"}
    (spine,) = find_studies(pacs.dicomweb_url, patient_id=CSPINE_PATIENT)
    assert (spine.study_date, spine.accession, spine.modalities, spine.instances) == ("20010101", "2", "CR", 3)
    assert spine.description == "XR C Spine Comp Min 4 Views"
    assert _study(pacs.dicomweb_url, accession="2") == spine.study_uid
    assert _study(pacs.dicomweb_url, date="20000101-20011231") == spine.study_uid
    assert {s.modalities for s in find_studies(pacs.dicomweb_url, date="20040101-20041231")} == {"CR", "CT"}
    assert find_studies(pacs.dicomweb_url, date="19000101") == []
    assert find_studies(pacs.dicomweb_url, accession="NO-SUCH-ACCESSION") == []


def test_find_by_patient_name_with_wildcards(pacs: Orthanc) -> None:
    """`*` and `?` reach the server as themselves (Orthanc's DICOMweb plugin 1.7 does not
    percent-decode QIDO-RS values, so %2A never matched); matching ignores case."""
    (spine,) = find_studies(pacs.dicomweb_url, patient_id=CSPINE_PATIENT)
    assert spine.patient_name == "Doe^Archibald"
    for pattern in ("Doe*", "doe*", "*ARCH*", "Doe*Archibald", "Doe?Archibald", "D?e*"):
        assert [s.study_uid for s in find_studies(pacs.dicomweb_url, patient_name=pattern)] == [spine.study_uid], pattern
    assert {s.patient_id for s in find_studies(pacs.dicomweb_url, patient_name="*", modality="CR")} == {
        CSPINE_PATIENT, "10RG2"}
    assert find_studies(pacs.dicomweb_url, patient_name="Nobody*") == []
    found = CliRunner().invoke(app, ["pacs", "find", pacs.dicomweb_url, "--name", "doe*", "--json"])
    assert found.exit_code == 0, found.output
    assert [s["study_uid"] for s in json.loads(found.stdout)["studies"]] == [spine.study_uid]


def test_pull_a_study_into_a_library(pacs: Orthanc, tmp_path: Path) -> None:
    study = _study(pacs.dicomweb_url, patient_id=CSPINE_PATIENT)
    corrupt = _study(pacs.dicomweb_url, patient_id="10RG2")
    events: list[PullProgress] = []
    with Library.open(tmp_path / "lib", create=True) as lib:
        report = pull_studies(pacs.dicomweb_url.replace("http://", "http://user:secret@"), [study, corrupt], lib,
                              progress=events.append)
        assert (report.total, report.added, len(report.failed), report.cancelled) == (4, 3, 1, False)
        assert "damaged" in report.failed[0][1]
        assert [e.done for e in events] == [0, 1, 2, 3, 4]
        cases = list(lib.iter_cases())
        assert len(cases) == 3 and all(c["modality"] == "CR" for c in cases)
        assert [e["reason"] for e in lib.ingest_errors()] == [report.failed[0][1]]
        for case in cases:
            origin = network_origin(case)
            assert origin is not None and origin.via == "dicomweb" and origin.study_uid == study
            assert origin.server == pacs.dicomweb_url  # never the user name or password
            assert case["study_instance_uid"] == lib.pseudonyms.uid(study)
        assert len(list((tmp_path / "lib" / RECEIVED_DIR).rglob("*.dcm"))) == 3
        again = pull_studies(pacs.dicomweb_url, [study, corrupt], lib)
        assert (again.added, again.duplicates, len(again.failed)) == (0, 3, 1)
        assert lib.count_cases() == 3


def test_pull_cancelled_half_way_keeps_whole_cases_only(pacs: Orthanc, tmp_path: Path) -> None:
    studies = [s.study_uid for s in find_studies(pacs.dicomweb_url)]
    cancel = threading.Event()

    def stop_after_two(event: PullProgress) -> None:
        if event.done == 2:
            cancel.set()

    with Library.open(tmp_path / "lib", create=True) as lib:
        report = pull_studies(pacs.dicomweb_url, studies, lib, progress=stop_after_two, cancel=cancel)
        assert report.cancelled and report.total == 8
        done = report.added + report.duplicates + len(report.failed)
        assert done == 2
        assert lib.count_cases() == report.added
        assert lib.cases_missing_files() == set()
        assert len(list((tmp_path / "lib" / RECEIVED_DIR).rglob("*.dcm"))) == report.added
        assert not list((tmp_path / "lib").rglob("*.tmp"))
        rest = pull_studies(pacs.dicomweb_url, studies, lib)
        assert not rest.cancelled and rest.added + report.added == 7 and rest.duplicates == report.added


def test_server_that_disappears_mid_transfer_gives_one_clear_error(tmp_path: Path, dicom_dir: Path) -> None:
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        for rel in COLOUR:
            server.upload(dicom_dir / rel)
        study = _study(server.dicomweb_url)

        def vanish(event: PullProgress) -> None:
            if event.done == 1:
                server.kill()

        with Library.open(tmp_path / "lib", create=True) as lib:
            with pytest.raises(MedHashError) as caught:
                pull_studies(server.dicomweb_url, [study], lib, progress=vanish)
            assert lib.count_cases() == 1  # the instance that arrived before is a whole case
            assert len(list((tmp_path / "lib" / RECEIVED_DIR).rglob("*.dcm"))) == 1
    finally:
        server.kill()
    message = str(caught.value)
    assert "\n" not in message and "connection to the server failed while sending instance 2 of 3" in message
    assert "run the same pull again" in message


def test_cli_find_and_pull_json(pacs: Orthanc, tmp_path: Path) -> None:
    runner = CliRunner()
    found = runner.invoke(app, ["pacs", "find", pacs.dicomweb_url, "--patient", CSPINE_PATIENT, "--json"])
    assert found.exit_code == 0, found.output
    (study,) = json.loads(found.stdout)["studies"]
    assert study["accession"] == "2"
    pulled = runner.invoke(app, ["pacs", "pull", "--library", str(tmp_path / "lib"), pacs.dicomweb_url,
                                 "--study", study["study_uid"], "--json"])
    assert pulled.exit_code == 0, pulled.output
    payload = json.loads(pulled.stdout)
    assert (payload["added"], payload["total"], payload["failed"], payload["cancelled"]) == (3, 3, [], False)
    origin = runner.invoke(app, ["pacs", "origin", payload["case_ids"][0], "--library", str(tmp_path / "lib"),
                                 "--json"])
    assert origin.exit_code == 0, origin.output
    where = json.loads(origin.stdout)
    assert (where["via"], where["server"], where["study_uid"]) == ("dicomweb", pacs.dicomweb_url, study["study_uid"])
    fetched = requests.get(where["wado_url"], headers={"Accept": 'multipart/related; type="application/dicom"'},
                           timeout=30)
    assert fetched.status_code == 200 and where["sop_uid"].encode() in fetched.content  # the PACS finds it again
    unknown = runner.invoke(app, ["pacs", "origin", "0" * 32, "--library", str(tmp_path / "lib")])
    assert unknown.exit_code == 2 and "no case with this id" in unknown.output


def test_cli_unreachable_server_is_one_line(tmp_path: Path) -> None:
    from tests.pacs_orthanc import free_port

    result = CliRunner().invoke(app, ["pacs", "find", f"http://127.0.0.1:{free_port()}/dicom-web"])
    assert result.exit_code == 2
    assert "connection to the server failed" in result.output and "Traceback" not in result.output
    wrong = CliRunner().invoke(app, ["pacs", "find", "ftp://pacs/dicom-web"])
    assert wrong.exit_code == 2 and "http:// or https://" in wrong.output


# Four large radiographs, each its own study (the full-size images take seconds to decode).
BIG = ("xray_other/CR_hip_MONO2_Fuji_RG2_UNC_explicitLE.dcm", "xray_chest/DX_chest_PA_MONO1_Canon_J2K_lossless.dcm",
       "xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm", "xray_other/CR_hip_MONO2_Fuji_RG2_RLE.dcm")


def test_cli_pull_ctrl_c_stops_between_images(tmp_path: Path, dicom_dir: Path) -> None:
    """`medhash pacs pull` interrupted by Ctrl-C (SIGINT) after the first image: exit 130, every
    image that arrived is a whole case, nothing half-written; a re-run fetches the rest."""
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        studies = [server.upload(dicom_dir / rel)["ParentStudy"] for rel in BIG]
        uids = [requests.get(f"{server.url}/studies/{s}", timeout=10).json()["MainDicomTags"]["StudyInstanceUID"]
                for s in studies]
        library = tmp_path / "lib"
        command = [sys.executable, "-m", "medhash_app.cli", "pacs", "pull", "--library", str(library),
                   server.dicomweb_url, "--json"] + [arg for uid in [*uids, uids[0]] for arg in ("--study", uid)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list((library / RECEIVED_DIR).rglob("*.dcm")) and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 130, err
        report = json.loads(out)
        assert report["cancelled"] and 1 <= report["added"] < len(BIG) == report["total"]
        with Library.open(library, read_only=True) as lib:
            assert lib.count_cases() == report["added"] and lib.cases_missing_files() == set()
        assert len(list((library / RECEIVED_DIR).rglob("*.dcm"))) == report["added"]
        assert not list(library.rglob("*.tmp")) and "Traceback" not in err
        rest = CliRunner().invoke(app, ["pacs", "pull", "--library", str(library), server.dicomweb_url, "--json"]
                                  + [arg for uid in uids for arg in ("--study", uid)])
        assert json.loads(rest.stdout)["added"] == len(BIG) - report["added"]
    finally:
        server.stop()
