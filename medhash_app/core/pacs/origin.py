"""From a case back to the PACS: the Study / Series / SOP Instance UIDs it came with.

The library stores the Study and SOP Instance UIDs only as keyed pseudonyms (core/pseudonym.py;
docs/architecture.md, "What the library stores about patients"), so the real UIDs are read, when
asked, from the case's received file (`source_path` in the library's `received/` folder), which is
kept exactly as the PACS sent it. Going the other way, a UID from a PACS query is matched to cases
through its pseudonym.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from medhash_app.core.library import CaseFilter, Library


@dataclass(frozen=True)
class NetworkOrigin:
    """Where a case came from: `via` "dicom-store" (with `calling_aet`) or "dicomweb" (with
    `server`); the UIDs are None when the received file is gone (e.g. removed to save space)."""

    via: str
    calling_aet: str | None = None
    server: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None


def network_origin(case: dict[str, Any]) -> NetworkOrigin | None:
    """The origin of a case received from a PACS (None for a case imported from disk)."""
    pacs = (case.get("extra") or {}).get("pacs")
    if not isinstance(pacs, dict):
        return None
    uids: dict[str, str | None] = {"study_uid": None, "series_uid": None, "sop_uid": None}
    try:
        header = dcmread(case["source_path"], stop_before_pixels=True,
                         specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        uids = {"study_uid": header.get("StudyInstanceUID"), "series_uid": header.get("SeriesInstanceUID"),
                "sop_uid": header.get("SOPInstanceUID")}
    except (OSError, InvalidDicomError):
        pass
    return NetworkOrigin(via=str(pacs.get("via") or ""), calling_aet=pacs.get("calling_aet"),
                         server=pacs.get("server"), **{k: str(v) if v else None for k, v in uids.items()})


def wado_url(origin: NetworkOrigin) -> str | None:
    """The WADO-RS address of the instance on the server it was pulled from (None when unknown)."""
    if not (origin.server and origin.study_uid and origin.series_uid and origin.sop_uid):
        return None
    return f"{origin.server}/studies/{origin.study_uid}/series/{origin.series_uid}/instances/{origin.sop_uid}"


def cases_of_study(library: Library, study_uid: str) -> list[str]:
    """Ids of the cases of a study found on the PACS (matched by the UID's keyed pseudonym)."""
    key = library.pseudonyms.uid(study_uid)
    return [case["id"] for case in library.iter_cases(CaseFilter()) if case.get("study_instance_uid") == key]
