"""Classic DICOM query and retrieve (C-FIND, C-GET) for a PACS without DICOMweb, against a real
Orthanc: find by patient, modality, date and accession; pull into a library with each image in the
transfer syntax it is stored in (a JPEG 2000 image Orthanc 1.10 could not convert arrives as is);
the corrupt image refused with the same reason as from disk; cancel; a PACS that disappears."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.errors import MedHashError
from medhash_app.core.imaging import load_image
from medhash_app.core.library import Library
from medhash_app.core.pacs import RECEIVED_DIR
from medhash_app.core.pacs.origin import network_origin
from medhash_app.core.pacs.remote import find_studies, pull_studies
from medhash_app.core.pacs.studies import PullProgress
from tests.pacs_orthanc import Orthanc, orthanc_problem

pytestmark = [pytest.mark.skipif(orthanc_problem() is not None, reason=str(orthanc_problem())),
              pytest.mark.shared_data]

AET = "MEDHASH_SCU"
CSPINE = tuple(f"xray_chest/CR_cspine_MONO1_Agfa_16x16_thumb{i}.dcm" for i in (1, 2, 3))
CORRUPT = "xray_other/CR_hip_MONO2_Fuji_RG2_JPEGExt12bit_CORRUPT.dcm"
J2K = "xray_chest/DX_chest_PA_MONO1_Canon_J2K_lossless.dcm"  # Orthanc 1.10 cannot convert JPEG 2000
ENHANCED_MR = "transfer_syntax_misc/emri_small_jpeg_2k_lossless.dcm"  # not an image kind C-GET asks for


def _orthanc(folder: Path, dicom_dir: Path, files: tuple[str, ...]) -> Orthanc:
    server = Orthanc(folder, {"medhash": {"aet": AET, "port": 1}}).start()  # C-GET needs no port of ours
    for rel in files:
        assert server.upload(dicom_dir / rel)["Status"] == "Success"
    return server


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, dicom_dir: Path) -> Iterator[str]:
    server = _orthanc(tmp_path_factory.mktemp("orthanc"), dicom_dir, (*CSPINE, CORRUPT, J2K, ENHANCED_MR))
    yield f"dicom://ORTHANC@127.0.0.1:{server.dicom_port}"
    server.stop()


def test_c_find_by_patient_modality_date_and_accession(pacs: str) -> None:
    assert len(find_studies(pacs, calling_aet=AET)) == 4
    (spine,) = find_studies(pacs, calling_aet=AET, patient_id="77654033")
    assert (spine.study_date, spine.accession, spine.modalities, spine.instances) == ("20010101", "2", "CR", 3)
    assert [s.study_uid for s in find_studies(pacs, calling_aet=AET, accession="2")] == [spine.study_uid]
    assert [s.study_uid for s in find_studies(pacs, calling_aet=AET, date="20010101-20011231")] == [spine.study_uid]
    assert {s.patient_id for s in find_studies(pacs, calling_aet=AET, modality="CR")} == {"77654033", "10RG2"}
    assert find_studies(pacs, calling_aet=AET, accession="NO-SUCH") == []


def test_c_get_pulls_images_as_stored_and_refuses_the_corrupt_one(pacs: str, dicom_dir: Path,
                                                                   tmp_path: Path) -> None:
    studies = [s.study_uid for s in find_studies(pacs, calling_aet=AET)]
    events: list[PullProgress] = []
    with Library.open(tmp_path / "lib", create=True) as lib:
        report = pull_studies(pacs, studies, lib, calling_aet=AET, progress=events.append)
        assert (report.total, report.added, report.cancelled) == (6, 4, False)
        with pytest.raises(MedHashError) as from_disk:
            load_image(dicom_dir / CORRUPT)
        reasons = sorted(reason for _, reason in report.failed)
        assert reasons[0] == from_disk.value.reason  # refused here, with the reason an import from disk gives
        assert reasons[1].startswith("the PACS could not send 1 instance(s)")  # the Enhanced MR image
        assert events[-1].done == 5  # images that came: 4 cases + the corrupt one
        cases = list(lib.iter_cases())
        assert len(cases) == 4 and lib.cases_missing_files() == set()
        syntaxes = {str(dcmread(c["source_path"], stop_before_pixels=True).file_meta.TransferSyntaxUID) for c in cases}
        assert str(dcmread(dicom_dir / J2K, stop_before_pixels=True).file_meta.TransferSyntaxUID) in syntaxes
        origin = network_origin(cases[0])
        assert origin is not None and origin.via == "dicom-get" and origin.server == pacs
    assert len(list((tmp_path / "lib" / RECEIVED_DIR).rglob("*.dcm"))) == 4


def test_c_get_cancelled_after_the_first_image(pacs: str, tmp_path: Path) -> None:
    (spine,) = find_studies(pacs, calling_aet=AET, patient_id="77654033")
    cancel = threading.Event()

    def stop(event: PullProgress) -> None:
        if event.done == 1:
            cancel.set()

    with Library.open(tmp_path / "lib", create=True) as lib:
        report = pull_studies(pacs, [spine.study_uid], lib, calling_aet=AET, progress=stop, cancel=cancel)
        assert report.cancelled and report.added == lib.count_cases() < 3
        assert lib.cases_missing_files() == set()
    assert not list((tmp_path / "lib").rglob("*.tmp"))


def test_pacs_that_disappears_during_c_get_is_one_clear_error(dicom_dir: Path, tmp_path: Path) -> None:
    server = _orthanc(tmp_path / "orthanc", dicom_dir, CSPINE)
    address = f"dicom://ORTHANC@127.0.0.1:{server.dicom_port}"
    try:
        (spine,) = find_studies(address, calling_aet=AET)

        def vanish(event: PullProgress) -> None:
            if event.done == 1:
                server.kill()

        with Library.open(tmp_path / "lib", create=True) as lib:
            with pytest.raises(MedHashError) as caught:
                pull_studies(address, [spine.study_uid], lib, calling_aet=AET, progress=vanish)
            assert lib.count_cases() == 1 and lib.cases_missing_files() == set()
    finally:
        server.kill()
    message = str(caught.value)
    assert "\n" not in message and "connection to the PACS was lost after 1 of 3" in message


def test_cli_over_dicom_and_an_ae_title_the_pacs_does_not_know(pacs: str, tmp_path: Path) -> None:
    runner = CliRunner()
    found = runner.invoke(app, ["pacs", "find", pacs, "--aet", AET, "--patient", "77654033", "--json"])
    assert found.exit_code == 0, found.output
    (study,) = json.loads(found.stdout)["studies"]
    pulled = runner.invoke(app, ["pacs", "pull", "--library", str(tmp_path / "lib"), pacs, "--aet", AET,
                                 "--study", study["study_uid"], "--json"])
    assert pulled.exit_code == 0 and json.loads(pulled.stdout)["added"] == 3
    stranger = runner.invoke(app, ["pacs", "find", pacs, "--aet", "STRANGER"])
    assert stranger.exit_code == 2 and "refused the association" in stranger.output
    malformed = runner.invoke(app, ["pacs", "find", "dicom://no-port-here"])
    assert malformed.exit_code == 2 and "dicom://AE_TITLE@host:port" in malformed.output
