"""What sources hand to the pipeline, and what the pipeline hands back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# IngestItem.metadata keys the pipeline maps onto case columns; anything else belongs in "extra".
# "withheld" lists the identifying columns a source read but did not keep (names only, never values);
# "row" is a manifest row's number (for messages).
METADATA_KEYS = frozenset({"domain", "view", "laterality", "age", "sex", "patient_id", "study_id",
                           "study_date", "split", "frame", "extra", "withheld", "row"})


@dataclass(frozen=True)
class IngestItem:
    """One image a source found. `labels` None means "the dataset gives none" (the labeler reads
    the report); `problem` marks an entry the source already knows is unusable (logged as failed)."""

    path: Path
    report: str | None = None
    labels: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


@dataclass
class IngestReport:
    """Outcome of one `ingest` call; `failed` holds (path, reason) for every file not added.
    `notices` are sentences the user should read (identifying columns not stored, another key);
    `decoder_warnings` counts the decoders' warnings written to `log_file` instead of the terminal."""

    added: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    batch_id: str = ""
    repaired: int = 0
    cancelled: bool = False
    total: int = 0
    notices: list[str] = field(default_factory=list)
    decoder_warnings: int = 0
    log_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (`failed` as a list of {"path", "reason"})."""
        out = asdict(self)
        out["failed"] = [{"path": p, "reason": r} for p, r in self.failed]
        return out


@dataclass(frozen=True)
class IngestProgress:
    """A progress event (at most ~10 per second, plus a final one)."""

    done: int
    total: int
    added: int
    skipped: int
    failed: int
    files_per_s: float
