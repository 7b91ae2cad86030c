"""What a search asks for and what it returns; shared by the CLI, the UI and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medhash_app.core.library.filters import CaseFilter as SearchFilters

if TYPE_CHECKING:  # the UI imports this module lazily; imaging loads pydicom
    from medhash_app.core.imaging import LoadedImage

__all__ = ["Hit", "SearchFilters", "SearchQuery", "SearchResult", "Target"]

Target = Literal["reports", "images", "both"]


@dataclass
class SearchQuery:
    """An image file or a report text (exactly one), the target modality and the page size."""

    image_path: Path | None = None
    text: str | None = None
    target: Target | None = None  # None: the other modality (image -> reports, text -> images)
    k: int = 20
    bits: int | None = None  # None: the largest code length of the active model
    filters: SearchFilters = field(default_factory=SearchFilters)
    rerank: bool = False  # re-rank the Hamming shortlist by continuous embeddings
    frame: int | None = None
    # image_path already decoded (a LoadedImage, e.g. the viewer's): the search does not decode it again
    image: LoadedImage | None = None


@dataclass
class Hit:
    """One ranked match: the case row from SQLite plus how it matched."""

    rank: int
    case: dict[str, Any]
    matched: Literal["image", "text"]  # which of the case's codes matched the query
    distance: int  # Hamming distance
    similarity: float  # 1 - distance / bits
    rerank_score: float | None = None
    shared_findings: list[str] = field(default_factory=list)
    # share (0..1) of in-domain top matches farther than this hit (core/search/ood.py); None: too few codes
    closer_than: float | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    bits: int
    model_id: int
    device: str
    encode_ms: float
    search_ms: float
    total_ms: float
    query_kind: Literal["image", "text"]
    query_findings: list[str] = field(default_factory=list)
    out_of_domain: bool | None = None  # None: the library has too few codes to judge (core/search/ood.py)
    out_of_domain_reason: str | None = None
    domain_score: float | None = None  # mean Hamming distance to the K nearest library codes of the query's kind
    domain_threshold: float | None = None  # scores above it are out of domain
    # a report query clearly worded like one library domain's reports searches that domain only
    query_domain: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON shape of `medhash search --json` (documented in docs/cli.md)."""
        return {
            "query_kind": self.query_kind,
            "model_id": self.model_id,
            "bits": self.bits,
            "device": self.device,
            "timing_ms": {"encode": round(self.encode_ms, 3), "search": round(self.search_ms, 3),
                          "total": round(self.total_ms, 3)},
            "query_findings": self.query_findings,
            "out_of_domain": self.out_of_domain,
            "out_of_domain_reason": self.out_of_domain_reason,
            "domain_score": self.domain_score,
            "domain_threshold": self.domain_threshold,
            "query_domain": self.query_domain,
            "hits": [
                {
                    "rank": h.rank, "case_id": h.case.get("id"), "matched": h.matched,
                    "distance": h.distance, "similarity": round(h.similarity, 4),
                    "closer_than": None if h.closer_than is None else round(h.closer_than, 4),
                    "rerank_score": None if h.rerank_score is None else round(h.rerank_score, 4),
                    "shared_findings": h.shared_findings,
                    "labels": h.case.get("labels"), "modality": h.case.get("modality"),
                    "view": h.case.get("view"), "study_date": h.case.get("study_date"),
                    "source_path": h.case.get("source_path"), "report": h.case.get("report"),
                }
                for h in self.hits
            ],
        }
