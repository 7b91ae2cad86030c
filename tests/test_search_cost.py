"""A window search lists k = 200 rows: its cost must not grow with k beyond the rows themselves.

The rows of all hits come from SQLite in one query and each matched modality's closeness reference
is looked up once (it used to be looked up per hit: ~800 SQL statements per k = 200 search, 30 ms at
100 k cases; benchmarks/results/ui_query.md); the query image is rendered to the model input once,
for the encoder and the image-statistics check alike."""

from __future__ import annotations

from pathlib import Path

import pytest

import medhash_app.core.encoder.service as encoder_service
import medhash_app.core.search.service as search_service
from medhash_app.core.search import SearchQuery
from medhash_app.core.session import MedHashSession


@pytest.fixture
def session(tiny_library: Path):
    with MedHashSession(tiny_library, device="cpu") as s:
        yield s


def _statements(session: MedHashSession, query: SearchQuery) -> tuple[int, int]:
    """(SQL statements run by one warm search, hits)."""
    session.search(query)  # warm: codes, index and references in memory
    seen: list[str] = []
    session.library.db.conn.set_trace_callback(seen.append)
    try:
        hits = len(session.search(query).hits)
    finally:
        session.library.db.conn.set_trace_callback(None)
    return len(seen), hits


def test_sql_statements_per_search_do_not_grow_with_k(session: MedHashSession) -> None:
    path = Path(next(c for c in session.library.iter_cases() if c["domain"] == "chest")["source_path"])
    few, few_hits = _statements(session, SearchQuery(image_path=path, k=2))
    many, many_hits = _statements(session, SearchQuery(image_path=path, k=20))
    assert many_hits > few_hits >= 2
    assert many == few  # a per-hit lookup would add (many_hits - few_hits) statements or more
    text_few, _ = _statements(session, SearchQuery(text="Cardiomegaly. Small left effusion.", k=2))
    text_many, _ = _statements(session, SearchQuery(text="Cardiomegaly. Small left effusion.", k=20))
    assert text_many == text_few


def test_the_query_image_is_rendered_to_the_model_input_once(session: MedHashSession,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(next(c for c in session.library.iter_cases() if c["domain"] == "chest")["source_path"])
    session.search(SearchQuery(image_path=path, k=5))
    calls: list[object] = []
    real = search_service.model_image
    for module in (search_service, encoder_service):  # every place a search could render it
        monkeypatch.setattr(module, "model_image", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    result = session.search(SearchQuery(image_path=path, k=5))
    assert len(calls) == 1 and result.out_of_domain is not None  # the statistics check ran on that render
