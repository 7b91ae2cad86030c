"""Query and retrieve over DICOMweb (dicomweb-client): QIDO-RS finds studies by patient, date,
modality and accession; WADO-RS pulls them instance by instance into a library.

Why instance by instance: the total is known up front (a QIDO-RS instance query per study), the
progress moves per instance, and a cancel or a lost connection stops between two instances, each
of which is either a whole case or nothing (core/pacs/received.py). A pull run again skips what
already arrived (the ingest's de-duplication).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from dicomweb_client.api import DICOMwebClient

from medhash_app.core.ingest.decode import Decoder
from medhash_app.core.library import Library
from medhash_app.core.pacs.errors import PacsError
from medhash_app.core.pacs.received import ReceivedStore
from medhash_app.core.pacs.studies import PullProgress, PullReport, StudyMatch, emit_progress
from medhash_app.core.phi import redact

TIMEOUT_S = (5.0, 60.0)  # (connect, read)
RETRIES = 1
_STUDY_FIELDS = {"0020000D": "study_uid", "00080020": "study_date", "00100010": "patient_name",
                 "00100020": "patient_id", "00080050": "accession", "00080061": "modalities",
                 "00081030": "description", "00201208": "instances"}


def public_url(url: str) -> str:
    """The URL without user name or password (what may be shown and stored in a case's origin)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class _LiteralWildcardSession(requests.Session):
    """Sends the wildcards `*` and `?` in a query string as themselves, not as %2A / %3F (RFC 3986
    allows both there, so a conforming server reads the same value): Orthanc's DICOMweb plugin 1.7
    (Debian 12) matches QIDO-RS values without percent-decoding them, so an encoded wildcard never
    matched a patient name. (It cannot match `^` or a space, which must stay encoded.)"""

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        prepared = super().prepare_request(request)
        parts = urlsplit(prepared.url or "")
        if parts.query:
            query = parts.query.replace("%2A", "*").replace("%3F", "?")
            prepared.url = urlunsplit(parts._replace(query=query))
        return prepared


def connect(url: str) -> DICOMwebClient:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsError(url, "a DICOMweb server is an http:// or https:// URL, e.g. http://pacs:8042/dicom-web")
    session = _LiteralWildcardSession()
    if parts.username:
        session.auth = (parts.username, parts.password or "")
    client = DICOMwebClient(url=public_url(url), session=session, timeout=TIMEOUT_S)
    # dicomweb-client retries failed requests 5 times with exponential waits (about 30 s against a
    # server that went away); one retry after 0.5 s covers a blip and reports a dead server at once.
    client.set_http_retry_params(retry=True, max_attempts=RETRIES + 1, wait_exponential_multiplier=500)
    return client


def _network_error(url: str, exc: Exception, during: str) -> PacsError:
    """One clear line for whatever requests raised."""
    public = public_url(url)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        hint = {401: "the server wants a user name and password (http://user:password@host/...)",
                403: "the server refuses this workstation", 404: "this URL is not a DICOMweb root, or the "
                "study is not there (for Orthanc the root ends in /dicom-web)"}.get(code, "see the server's log")
        return PacsError(public, f"the server answered HTTP {code} {during}: {hint}")
    if isinstance(exc, requests.Timeout):
        return PacsError(public, f"the server did not answer in time {during}")
    return PacsError(public, f"the connection to the server failed {during} (is it running and reachable?)")


def find_studies(url: str, *, patient_id: str | None = None, patient_name: str | None = None,
                 date: str | None = None, modality: str | None = None, accession: str | None = None,
                 limit: int = 100) -> list[StudyMatch]:
    """QIDO-RS studies matching every filter given (DICOM matching: `*` wildcards in names and IDs,
    dates as YYYYMMDD or a range YYYYMMDD-YYYYMMDD)."""
    filters = {key: value for key, value in (("PatientID", patient_id), ("PatientName", patient_name),
                                             ("StudyDate", date), ("ModalitiesInStudy", modality),
                                             ("AccessionNumber", accession)) if value}
    client = connect(url)
    try:
        found = client.search_for_studies(search_filters=filters, limit=limit,
                                          fields=["StudyDescription", "NumberOfStudyRelatedInstances"])
    except requests.RequestException as exc:
        raise _network_error(url, exc, "during the study query") from exc
    except ValueError as exc:  # not JSON: a web page rather than a DICOMweb server
        raise PacsError(public_url(url), "the answer is not a DICOMweb study list (is the URL the DICOMweb root?)") from exc
    return [_study(item) for item in found]


def _value(item: dict[str, Any], tag: str) -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return None
    if len(values) > 1:
        return "\\".join(str(v) for v in values)
    value = values[0]
    return value.get("Alphabetic", "") if isinstance(value, dict) else value


def _study(item: dict[str, Any]) -> StudyMatch:
    values = {name: _value(item, tag) for tag, name in _STUDY_FIELDS.items()}
    count = values.pop("instances")
    return StudyMatch(**{k: str(v or "") for k, v in values.items()},
                      instances=int(count) if count is not None else None)


def study_instances(client: DICOMwebClient, url: str, study_uid: str) -> list[tuple[str, str, str]]:
    """(study, series, SOP instance UID) of every instance of a study, by QIDO-RS."""
    try:
        found = client.search_for_instances(study_instance_uid=study_uid, get_remaining=True)
    except requests.RequestException as exc:
        raise _network_error(url, exc, "during the instance query") from exc
    out = []
    for item in found:
        series, sop = _value(item, "0020000E"), _value(item, "00080018")
        if series and sop:
            out.append((study_uid, str(series), str(sop)))
    return out


def fetch_for_query(url: str, study_uid: str, folder: Path) -> Path:
    """The study's first image (WADO-RS), written to `folder`, to search with; no library is
    touched, so a study can be looked at against the library without importing it."""
    client = connect(url)
    instances = study_instances(client, url, study_uid)
    if not instances:
        raise PacsError(public_url(url), "the server has no images for this study")
    try:
        dataset = client.retrieve_instance(*instances[0])
    except requests.RequestException as exc:
        raise _network_error(url, exc, "while sending the query image") from exc
    path = folder / "pacs-query.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def pull_studies(url: str, study_uids: Sequence[str], library: Library, *,
                 progress: Callable[[PullProgress], None] | None = None,
                 cancel: threading.Event | None = None, workers: int = 1) -> PullReport:
    """WADO-RS every instance of `study_uids` into `library`. Stops between instances on `cancel`;
    raises PacsError (after keeping what arrived) when the server stops answering."""
    study_uids = list(dict.fromkeys(study_uids))  # a study named twice is pulled once
    client, report = connect(url), PullReport(server=public_url(url), studies=len(study_uids))
    instances = [inst for uid in study_uids for inst in study_instances(client, url, uid)]
    report.total = len(instances)
    with Decoder(workers) as decoder:
        store = ReceivedStore(library, decoder)
        emit_progress(progress, report, 0)
        for done, (study, series, sop) in enumerate(instances):
            if cancel is not None and cancel.is_set():
                report.cancelled = True
                break
            _pull_one(client, store, report, (study, series, sop), f"instance {done + 1} of {len(instances)}")
            emit_progress(progress, report, done + 1)
    return report


def _pull_one(client: DICOMwebClient, store: ReceivedStore, report: PullReport, uids: tuple[str, str, str],
              label: str) -> None:
    try:
        dataset = client.retrieve_instance(*uids)
    except requests.RequestException as exc:
        kept = f"; the {report.added + report.duplicates} instance(s) before it are in the library, run the " \
               "same pull again to fetch the rest"
        error = _network_error(report.server, exc, f"while sending {label}")
        raise PacsError(error.item, error.reason + kept) from exc
    except Exception as exc:  # noqa: BLE001 - the server's bytes are not a DICOM file: this instance fails
        report.failed.append((label, (f"the server sent something that is not a readable DICOM instance "
                                     f"({redact(exc)})")))
        return
    buffer = BytesIO()
    try:
        dataset.save_as(buffer, enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - e.g. no file meta to write: this instance fails
        report.failed.append((label, f"the instance could not be written as a DICOM file ({redact(exc)})"))
        return
    outcome = store.store(buffer.getvalue(), {"via": "dicomweb", "server": report.server})
    if outcome.status == "failed":
        report.failed.append((label, outcome.reason or "refused"))
        return
    report.added += outcome.status == "added"
    report.duplicates += outcome.status == "duplicate"
    report.case_ids.append(outcome.case_id or "")
