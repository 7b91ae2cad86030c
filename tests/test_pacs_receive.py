"""The DICOM Storage SCP against a real Orthanc (started here on 127.0.0.1 with its own ports and
storage): C-ECHO, Orthanc C-STOREs the real DICOMs of ../shared/data/dicom to MedHash and they
become cases through the ingest pipeline, corrupt ones are refused with the ingest's reason and
leave nothing behind, calling AEs not accepted are turned away, and `medhash listen` runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medhash_app.core.errors import MedHashError
from medhash_app.core.imaging import load_image
from medhash_app.core.library import Library
from medhash_app.core.pacs import RECEIVED_DIR
from medhash_app.core.pacs.listener import (
    STATUS_CANNOT_UNDERSTAND,
    ListenerConfig,
    ReceiveEvent,
    StorageListener,
)
from medhash_app.core.pacs.origin import cases_of_study, network_origin
from tests.pacs_orthanc import ORTHANC_AET, Orthanc, free_port, manifest_failures, orthanc_problem, upload_all

pytestmark = pytest.mark.skipif(orthanc_problem() is not None, reason=str(orthanc_problem()))

MEDHASH_AET = "MEDHASH_TEST"


@pytest.fixture()
def listener(tmp_path: Path) -> Iterator[tuple[StorageListener, list[ReceiveEvent]]]:
    events: list[ReceiveEvent] = []
    config = ListenerConfig(library=tmp_path / "lib", aet=MEDHASH_AET, port=free_port(),
                            accept_aets=(ORTHANC_AET, "SCU_TEST"), workers=1)
    with StorageListener(config, events.append) as running:
        yield running, events


@pytest.fixture()
def orthanc(tmp_path: Path, listener: tuple[StorageListener, list[ReceiveEvent]]) -> Iterator[Orthanc]:
    port = listener[0].config.port
    server = Orthanc(tmp_path / "orthanc", {"medhash": {"aet": MEDHASH_AET, "port": port}}).start()
    yield server
    server.stop()


def _received_files(library: Path) -> list[Path]:
    return sorted((library / RECEIVED_DIR).rglob("*.dcm"))


def test_listens_on_loopback_only_and_answers_echo(listener, orthanc: Orthanc) -> None:
    running, _ = listener
    assert running.status.address == f"127.0.0.1:{running.config.port}"
    assert running.status.running
    answer = orthanc.echo("medhash")
    assert answer.status_code == 200, answer.text
    ae = AE(ae_title="SCU_TEST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", running.config.port, ae_title=MEDHASH_AET)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_calling_ae_not_accepted_is_refused(listener) -> None:
    running, events = listener
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", running.config.port, ae_title=MEDHASH_AET)
    assert assoc.is_rejected
    assert events == []


@pytest.mark.shared_data
def test_orthanc_sends_the_real_dicoms_and_they_become_cases(listener, orthanc: Orthanc, dicom_dir: Path) -> None:
    running, events = listener
    kept = upload_all(orthanc, dicom_dir)
    failing = manifest_failures(dicom_dir)
    assert len(kept) >= 30 and any(rel in failing for rel in kept.values())
    for instance, rel in kept.items():
        answer = orthanc.store_to("medhash", instance)
        if rel in failing:
            assert answer.status_code >= 400, f"{rel}: a corrupt instance was acknowledged"
        else:
            assert answer.status_code == 200, f"{rel}: {answer.text}"
    refused = [e.received.reason for e in events if not e.received.ok]
    expected = sorted(_disk_reason(dicom_dir / rel) for rel in kept.values() if rel in failing)
    assert sorted(refused) == expected  # the same reason as importing the file from disk
    library = running.config.library
    with Library.open(library, read_only=True) as lib:
        cases = list(lib.iter_cases())
        assert len(cases) == len(kept) - len(expected) == running.status.added
        assert {Path(c["source_path"]) for c in cases} == set(_received_files(library))  # no stray file
        assert not list((library / "inputs").rglob("*.tmp")) and not list(library.rglob(".*.tmp"))
        assert lib.cases_missing_files() == set()
        case = next(c for c in cases if c["modality"] == "CR" and c["domain"] == "chest")
        header = dcmread(case["source_path"], stop_before_pixels=True)
        assert case["study_instance_uid"] == lib.pseudonyms.uid(header.StudyInstanceUID)  # pseudonym, not the UID
        assert case["sop_instance_uid"] == lib.pseudonyms.uid(header.SOPInstanceUID)
        origin = network_origin(case)
        assert origin is not None and origin.via == "dicom-store" and origin.calling_aet == ORTHANC_AET
        assert (origin.study_uid, origin.series_uid, origin.sop_uid) == (
            header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID)
        assert case["id"] in cases_of_study(lib, header.StudyInstanceUID)
    again = next(i for i, rel in kept.items() if rel not in failing)
    assert orthanc.store_to("medhash", again).status_code == 200  # a second send: acknowledged, not added twice
    assert running.status.duplicates == 1 and running.status.added == len(cases)


def _disk_reason(path: Path) -> str:
    try:
        load_image(path)
    except MedHashError as exc:
        return exc.reason
    raise AssertionError(f"{path} decodes from disk")


@pytest.mark.shared_data
def test_corrupt_instance_gets_a_failure_status_with_the_reason(listener, dicom_dir: Path) -> None:
    running, events = listener
    corrupt = dicom_dir / "xray_chest" / "DX_chest_PA_MONO1_Canon_J2K_lossless_CORRUPT_COM_marker.dcm"
    dataset = dcmread(corrupt)
    ae = AE(ae_title="SCU_TEST")
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", running.config.port, ae_title=MEDHASH_AET)
    assert assoc.is_established
    status = assoc.send_c_store(dataset)
    assoc.release()
    reason = _disk_reason(corrupt)
    assert status.Status == STATUS_CANNOT_UNDERSTAND
    assert reason.startswith(str(status.ErrorComment).removesuffix("..."))
    assert [e.received.reason for e in events] == [reason]
    with Library.open(running.config.library, read_only=True) as lib:
        assert lib.count_cases() == 0
        assert [e["reason"] for e in lib.ingest_errors()] == [reason]
    assert _received_files(running.config.library) == []
    assert not list((running.config.library / "inputs").rglob("*")) or \
        all(p.is_dir() for p in (running.config.library / "inputs").rglob("*"))


def test_medhash_listen_runs_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    process = subprocess.Popen([sys.executable, "-m", "medhash_app.cli", "listen", "--library", str(tmp_path / "lib"),
                                "--port", str(port), "--aet", MEDHASH_AET, "--accept-aet", "SCU_TEST", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = json.loads(process.stdout.readline())
        assert first["event"] == "listening" and first["address"] == f"127.0.0.1:{port}"
        ae = AE(ae_title="SCU_TEST")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title=MEDHASH_AET)
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["event"] == "stopped"
    assert "Traceback" not in err


def test_port_in_use_is_one_clear_error(tmp_path: Path, listener) -> None:
    running, _ = listener
    config = ListenerConfig(library=tmp_path / "other", aet="OTHER", port=running.config.port, workers=1)
    with pytest.raises(MedHashError, match="cannot listen there"):
        StorageListener(config).start()
    time.sleep(0)  # the first listener still serves
    assert running.status.running
