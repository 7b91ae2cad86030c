"""One entry for query and retrieve, whichever way the PACS speaks: `http(s)://…` is a DICOMweb
root (core/pacs/dicomweb.py), `dicom://AET@host:port` a classic DICOM peer (core/pacs/dimse.py:
C-FIND and C-GET). The CLI and the window call these."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from medhash_app.core.library import Library
from medhash_app.core.pacs import dicomweb, dimse
from medhash_app.core.pacs.errors import PacsError
from medhash_app.core.pacs.studies import PullProgress, PullReport, StudyMatch


def is_dimse(address: str) -> bool:
    return address.strip().lower().startswith(dimse.SCHEME)


def find_studies(address: str, *, calling_aet: str = "MEDHASH", **filters: str | int | None) -> list[StudyMatch]:
    """Studies matching `filters` (patient_id, patient_name, date, modality, accession, limit)."""
    if is_dimse(address):
        return dimse.find_studies(address, calling_aet=calling_aet, **filters)  # type: ignore[arg-type]
    return dicomweb.find_studies(address, **filters)  # type: ignore[arg-type]


def pull_studies(address: str, study_uids: Sequence[str], library: Library, *,
                 progress: Callable[[PullProgress], None] | None = None, cancel: threading.Event | None = None,
                 workers: int = 1, calling_aet: str = "MEDHASH") -> PullReport:
    if is_dimse(address):
        return dimse.pull_studies(address, study_uids, library, progress=progress, cancel=cancel, workers=workers,
                                  calling_aet=calling_aet)
    return dicomweb.pull_studies(address, study_uids, library, progress=progress, cancel=cancel, workers=workers)


def fetch_for_query(address: str, study_uid: str, folder: Path) -> Path:
    if is_dimse(address):
        raise PacsError(address, "searching with a study without importing it needs the PACS's DICOMweb "
                                 "address (http://…); over DICOM, pull the study instead")
    return dicomweb.fetch_for_query(address, study_uid, folder)
