"""Case filters shared by the library listing and search: one dataclass, one SQL builder."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

FilterValue = str | Sequence[str] | None


@dataclass(frozen=True)
class CaseFilter:
    """Conditions combined with AND; a sequence value means "any of"; None, "" or an empty
    sequence means no condition (nothing picked in a filter widget).

    `labels` matches cases having at least one of the labels; `date_from`/`date_to` are inclusive
    ISO dates compared with `study_date`; `keyword` is a full-text query over reports.
    """

    labels: Sequence[str] | None = None
    modality: FilterValue = None
    view: FilterValue = None
    domain: FilterValue = None
    split: FilterValue = None
    date_from: str | dt.date | None = None
    date_to: str | dt.date | None = None
    keyword: str | None = None


def fts_query(text: str) -> str:
    """Turn user text into a safe FTS5 query: every token double-quoted, so AND/OR/NOT, `*`,
    `:`, `-`, parentheses and stray quotes are searched as words, never parsed as syntax."""
    tokens = re.findall(r"\w+", text, flags=re.UNICODE)
    return " ".join('"' + token.replace('"', '""') + '"' for token in tokens)


def _values(value: FilterValue) -> list[str]:
    values = [value] if isinstance(value, str) else list(value or [])
    return [v for v in values if v]


def _in(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join('?' * len(values))})"


def filter_sql(flt: CaseFilter | None) -> tuple[str, list[object]]:
    """WHERE clause and parameters over `cases` (keyword via the FTS index); "1" when nothing filters."""
    if flt is None:
        return "1", []
    clauses: list[str] = []
    params: list[object] = []
    for column in ("modality", "view", "domain", "split"):
        if values := _values(getattr(flt, column)):
            clauses.append(_in(column, values))
            params += values
    if labels := _values(flt.labels):
        clauses.append(f"seq IN (SELECT seq FROM case_labels WHERE {_in('label', labels)})")  # schema 3
        params += labels
    if flt.date_from:
        clauses.append("study_date >= ?")
        params.append(str(flt.date_from))
    if flt.date_to:
        clauses.append("study_date <= ?")
        params.append(str(flt.date_to))
    match = fts_query(flt.keyword or "")
    if match:  # a keyword without any word characters filters nothing
        clauses.append("seq IN (SELECT rowid FROM cases_fts WHERE cases_fts MATCH ?)")
        params.append(match)
    return (" AND ".join(clauses) or "1"), params
