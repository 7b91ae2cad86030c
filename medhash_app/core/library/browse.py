"""Browsing the cases of a library page by page (the Library tab's case browser; no Qt).

One page is one `LIMIT/OFFSET` query over `cases` with the same `CaseFilter` the search uses, so
a 100 k-case library costs one indexed count and one page of rows per view, never a full read.
Thumbnails are not read here: `thumbnail_bytes` reads one when a view shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medhash_app.core.library.cases import _decode_case
from medhash_app.core.library.filters import CaseFilter, filter_sql

# sort key -> SQL order (ties broken by database order, so pages never overlap or skip a case)
SORTS: dict[str, str] = {
    "added": "seq",
    "study_date": "study_date IS NULL, study_date",
    "modality": "modality IS NULL, modality",
    "view": "view IS NULL, view",
    "domain": "domain",
}
SORT_TITLES: dict[str, str] = {"added": "Import order", "study_date": "Study date", "modality": "Modality",
                               "view": "View", "domain": "Domain"}
BROWSE_COLUMNS = ("seq", "id", "source_path", "labels", "domain", "modality", "view", "laterality",
                  "study_date", "age", "sex", "split", "thumb_path", "input_path", "report", "extra")


@dataclass
class CasePage:
    cases: list[dict[str, Any]]
    total: int  # matching cases in the whole library
    page: int  # 0-based
    page_size: int
    sort: str = "added"
    descending: bool = False
    filters: CaseFilter | None = field(default=None, repr=False)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def browse_cases(library: Any, filters: CaseFilter | None = None, *, sort: str = "added",
                 descending: bool = False, page: int = 0, page_size: int = 200) -> CasePage:
    """One page of matching cases, sorted by `sort` (a key of SORTS). A page past the end is
    clamped to the last page."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {sorted(SORTS)}, not {sort!r}")
    page_size = max(1, int(page_size))
    where, params = filter_sql(filters)
    total = int(library._scalar(f"SELECT count(*) FROM cases WHERE {where}", params))
    page = min(max(0, int(page)), max(0, (total - 1) // page_size))
    direction = " DESC" if descending else ""
    order = ", ".join(part + direction for part in SORTS[sort].split(", "))
    if sort != "added":
        order += ", seq"
    rows = library._rows(f"SELECT {', '.join(BROWSE_COLUMNS)} FROM cases WHERE {where} "
                         f"ORDER BY {order} LIMIT ? OFFSET ?", [*params, page_size, page * page_size])
    return CasePage([_decode_case(r) for r in rows], total, page, page_size, sort, descending, filters)


def thumbnail_bytes(library: Any, case: dict[str, Any]) -> bytes | None:
    """The stored thumbnail of one case (a small PNG/JPEG), or None when it has none."""
    rel = case.get("thumb_path")
    if not rel:
        return None
    path = library.path_of(rel)
    return path.read_bytes() if path.is_file() else None
