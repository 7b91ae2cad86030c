"""Query and retrieve over classic DICOM (DIMSE) for a PACS without DICOMweb: C-FIND at study
level and C-GET, addressed as `dicom://PACS_AET@host:port`.

Why C-GET rather than C-MOVE: the images come back on the same association, so the PACS needs no
entry for this workstation and no port is opened here. Every instance the PACS sends is stored by
core/pacs/received.py (whole case or nothing) before it is acknowledged; a cancel aborts the
association between two instances.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import uid as uids
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom import sop_class as sop

from medhash_app.core.errors import LibraryError, MedHashError
from medhash_app.core.ingest.decode import Decoder
from medhash_app.core.library import Library
from medhash_app.core.pacs.errors import PacsError
from medhash_app.core.pacs.listener import STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES, status_dataset
from medhash_app.core.pacs.received import Received, ReceivedStore
from medhash_app.core.pacs.studies import PullProgress, PullReport, StudyMatch, emit_progress

SCHEME = "dicom://"
_ADDRESS = re.compile(r"^dicom://(?P<aet>[^@/]{1,16})@(?P<host>[^:/@]+):(?P<port>\d{1,5})/?$")
_PENDING = (0xFF00, 0xFF01)
TIMEOUT_S = 30
# C-GET brings images back on this association, in a presentation context the PACS accepted, and
# it accepts one transfer syntax per context: a context per compressed syntax lets it send each
# image as stored instead of converting it (which fails for codecs it lacks, or hides a corrupt
# image behind a conversion). 12 image classes x 10 contexts + the C-GET context stays under
# the 128 contexts an association may propose.
GET_STORAGE_CLASSES = (
    sop.ComputedRadiographyImageStorage, sop.DigitalXRayImageStorageForPresentation,
    sop.DigitalXRayImageStorageForProcessing, sop.SecondaryCaptureImageStorage, sop.VLPhotographicImageStorage,
    sop.OphthalmicPhotography8BitImageStorage, sop.OphthalmicPhotography16BitImageStorage, sop.CTImageStorage,
    sop.MRImageStorage, sop.UltrasoundImageStorage, sop.UltrasoundMultiFrameImageStorage,
    sop.NuclearMedicineImageStorage,
)
_UNCOMPRESSED = [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian, uids.DeflatedExplicitVRLittleEndian,
                 uids.ExplicitVRBigEndian]
_COMPRESSED = (uids.JPEGBaseline8Bit, uids.JPEGExtended12Bit, uids.JPEGLossless, uids.JPEGLosslessSV1,
               uids.JPEGLSLossless, uids.JPEGLSNearLossless, uids.JPEG2000Lossless, uids.JPEG2000,
               uids.RLELossless)


@dataclass(frozen=True)
class DimsePeer:
    aet: str
    host: str
    port: int
    calling_aet: str = "MEDHASH"

    @property
    def address(self) -> str:
        return f"{SCHEME}{self.aet}@{self.host}:{self.port}"


def parse_peer(address: str, calling_aet: str = "MEDHASH") -> DimsePeer:
    found = _ADDRESS.match(address.strip())
    if not found or not 0 < int(found["port"]) < 65536:
        raise PacsError(address, "a DICOM peer is written dicom://AE_TITLE@host:port, e.g. dicom://PACS@pacs:104")
    return DimsePeer(found["aet"], found["host"], int(found["port"]), calling_aet)


def _associate(peer: DimsePeer, contexts: Sequence[Any], roles: list[Any] | None = None,
               handlers: list[Any] | None = None) -> Any:
    ae = AE(ae_title=peer.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for context in contexts:
        if isinstance(context, tuple):  # (abstract syntax, transfer syntaxes)
            ae.add_requested_context(*context)
        else:
            ae.add_requested_context(context)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.aet, ext_neg=roles or None, evt_handlers=handlers)
    if not assoc.is_established:
        why = "refused the association (is this workstation's AE title " \
              f"{peer.calling_aet} allowed there?)" if assoc.is_rejected else "could not be reached"
        raise PacsError(peer.address, f"the PACS {why}")
    return assoc


def find_studies(address: str, *, patient_id: str | None = None, patient_name: str | None = None,
                 date: str | None = None, modality: str | None = None, accession: str | None = None,
                 limit: int = 100, calling_aet: str = "MEDHASH") -> list[StudyMatch]:
    """C-FIND (Study Root, STUDY level) with the same filters as the DICOMweb search."""
    peer = parse_peer(address, calling_aet)
    query = _study_query(PatientID=patient_id, PatientName=patient_name, StudyDate=date,
                         ModalitiesInStudy=modality, AccessionNumber=accession)
    assoc = _associate(peer, [sop.StudyRootQueryRetrieveInformationModelFind])
    found: list[StudyMatch] = []
    try:
        for status, identifier in assoc.send_c_find(query, sop.StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise PacsError(peer.address, "the connection to the PACS was lost during the study query")
            if status.Status in _PENDING and identifier is not None and len(found) < limit:
                found.append(_match(identifier))
            elif status.Status not in _PENDING and status.Status != 0:
                raise PacsError(peer.address, f"the PACS answered the study query with status 0x{status.Status:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return found


def _study_query(**filters: str | None) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "StudyDate", "PatientName", "PatientID", "AccessionNumber",
                    "ModalitiesInStudy", "StudyDescription", "NumberOfStudyRelatedInstances"):
        setattr(query, keyword, filters.get(keyword) or "")
    return query


def _match(identifier: Dataset) -> StudyMatch:
    count = identifier.get("NumberOfStudyRelatedInstances")
    modalities = identifier.get("ModalitiesInStudy") or ""
    return StudyMatch(study_uid=str(identifier.get("StudyInstanceUID") or ""),
                      study_date=str(identifier.get("StudyDate") or ""),
                      patient_name=str(identifier.get("PatientName") or ""),
                      patient_id=str(identifier.get("PatientID") or ""),
                      accession=str(identifier.get("AccessionNumber") or ""),
                      modalities=modalities if isinstance(modalities, str) else "\\".join(modalities),
                      description=str(identifier.get("StudyDescription") or ""),
                      instances=int(count) if count not in (None, "") else None)


class _GetSession:
    """The C-STORE side of a C-GET: every instance through the ReceivedStore, counted."""

    def __init__(self, store: ReceivedStore, report: PullReport, progress: Callable[[PullProgress], None] | None,
                 cancel: threading.Event | None) -> None:
        self.store, self.report, self.progress, self.cancel = store, report, progress, cancel
        self.done = 0
        self.library_error: LibraryError | None = None

    def on_store(self, event: Any) -> Dataset:
        if self.cancel is not None and self.cancel.is_set():
            return status_dataset(STATUS_OUT_OF_RESOURCES, "the user cancelled the retrieve")
        try:
            outcome = self.store.store(event.encoded_dataset(include_meta=True),
                                       {"via": "dicom-get", "server": self.report.server})
        except LibraryError as exc:
            self.library_error = exc
            return status_dataset(STATUS_OUT_OF_RESOURCES, exc.reason)
        except MedHashError as exc:
            outcome = Received("failed", None, exc.reason)
        self.done += 1
        label = f"instance {self.done} of {self.report.total or '?'}"
        if outcome.status == "failed":
            self.report.failed.append((label, outcome.reason or "refused"))
        else:
            self.report.added += outcome.status == "added"
            self.report.duplicates += outcome.status == "duplicate"
            self.report.case_ids.append(outcome.case_id or "")
        emit_progress(self.progress, self.report, self.done)
        return status_dataset(0 if outcome.ok else STATUS_CANNOT_UNDERSTAND, outcome.reason)


def pull_studies(address: str, study_uids: Sequence[str], library: Library, *,
                 progress: Callable[[PullProgress], None] | None = None, cancel: threading.Event | None = None,
                 workers: int = 1, calling_aet: str = "MEDHASH") -> PullReport:
    """C-GET every study into `library`; the same report, progress and cancel as the DICOMweb pull."""
    peer = parse_peer(address, calling_aet)
    study_uids = list(dict.fromkeys(study_uids))
    report = PullReport(server=peer.address, studies=len(study_uids))
    report.total = sum(_instances_of(peer, uid) for uid in study_uids)
    with Decoder(workers) as decoder:
        session = _GetSession(ReceivedStore(library, decoder), report, progress, cancel)
        emit_progress(progress, report, 0)
        contexts = [(cls, syntaxes) for cls in GET_STORAGE_CLASSES
                    for syntaxes in (_UNCOMPRESSED, *([ts] for ts in _COMPRESSED))]
        roles = [build_role(cls, scp_role=True) for cls in GET_STORAGE_CLASSES]
        assoc = _associate(peer, [sop.StudyRootQueryRetrieveInformationModelGet, *contexts], roles,
                           [(evt.EVT_C_STORE, session.on_store)])
        try:
            for uid in study_uids:
                if _get_study(assoc, peer, uid, session):
                    report.cancelled = True
                    break
        finally:
            if assoc.is_established and report.cancelled:
                assoc.abort()
            elif assoc.is_established:
                assoc.release()
    if session.library_error is not None:
        raise session.library_error
    return report


def _get_study(assoc: Any, peer: DimsePeer, uid: str, session: _GetSession) -> bool:
    """C-GET one study; True when the user cancelled. PacsError when the connection is lost. An
    instance the PACS failed to send (e.g. it could not convert it to a transfer syntax offered
    here) is reported as failed from the final status's count of failed sub-operations."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = uid
    ours_before, final = len(session.report.failed), None
    for status, _identifier in assoc.send_c_get(query, sop.StudyRootQueryRetrieveInformationModelGet):
        if session.cancel is not None and session.cancel.is_set():
            return True
        if not status:
            kept = session.report.added + session.report.duplicates
            raise PacsError(peer.address, f"the connection to the PACS was lost after {session.done} of "
                                          f"{session.report.total} instance(s); the {kept} received are in the "
                                          "library, run the same pull again to fetch the rest")
        final = status
    failed_there = int(final.get("NumberOfFailedSuboperations") or 0) if final is not None else 0
    unsent = failed_there - (len(session.report.failed) - ours_before)
    if unsent > 0:
        reason = (f"the PACS could not send {unsent} instance(s) (failed sub-operations on its side: an "
                  "object that is not one of the image kinds MedHash retrieves, or one it could not convert)")
        session.report.failed.append((f"study {uid}", reason))
    return False


def _instances_of(peer: DimsePeer, uid: str) -> int:
    """NumberOfStudyRelatedInstances of a study (0 when the PACS does not say), for the progress total."""
    assoc = _associate(peer, [sop.StudyRootQueryRetrieveInformationModelFind])
    total = 0
    try:
        for status, identifier in assoc.send_c_find(_study_query(StudyInstanceUID=uid),
                                                    sop.StudyRootQueryRetrieveInformationModelFind):
            if status and status.Status in _PENDING and identifier is not None:
                total += int(identifier.get("NumberOfStudyRelatedInstances") or 0)
    finally:
        if assoc.is_established:
            assoc.release()
    return total
