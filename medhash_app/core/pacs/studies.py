"""What query and retrieve hand back, whichever protocol (DICOMweb or DIMSE) did the work."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StudyMatch:
    """One QIDO-RS study (shown to the user on their own screen; never stored in the library)."""

    study_uid: str
    study_date: str = ""
    patient_name: str = ""
    patient_id: str = ""
    accession: str = ""
    modalities: str = ""
    description: str = ""
    instances: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PullProgress:
    done: int
    total: int
    added: int
    duplicates: int
    failed: int


@dataclass
class PullReport:
    """`failed`: (which instance, reason) per refused instance; `cancelled` when the user stopped it."""

    server: str
    studies: int = 0
    total: int = 0
    added: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    cancelled: bool = False
    case_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failed"] = [{"instance": i, "reason": r} for i, r in self.failed]
        return out


def emit_progress(progress: Callable[[PullProgress], None] | None, report: PullReport, done: int) -> None:
    if progress is not None:
        progress(PullProgress(done, report.total, report.added, report.duplicates, len(report.failed)))
