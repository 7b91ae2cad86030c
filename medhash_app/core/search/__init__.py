"""Ranked cross-modal matches for a query image or report.

The query/result types import without torch (the UI needs them at start-up); the service, which
loads models, is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medhash_app.core.search.types import Hit, SearchFilters, SearchQuery, SearchResult

if TYPE_CHECKING:
    from medhash_app.core.search.service import EncoderPool, SearchService

__all__ = ["EncoderPool", "Hit", "SearchFilters", "SearchQuery", "SearchResult", "SearchService"]


def __getattr__(name: str) -> Any:
    if name in ("EncoderPool", "SearchService"):
        from medhash_app.core.search import service

        return getattr(service, name)
    raise AttributeError(name)
