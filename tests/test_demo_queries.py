"""The demo's own example queries look right (issue: "Right apical pneumothorax." pulled fundus
photographs and was called out of domain): a report query clearly worded like one library domain's
reports searches that domain only (core/search/lexical.py domain_of), unless the user chose domains;
none of the example queries is called out of domain. Real two-domain library, trained tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medhash_app.core.demo.generator import DEMO_QUERY_LABELS
from medhash_app.core.library import CaseFilter
from medhash_app.core.search import SearchQuery
from medhash_app.core.session import MedHashSession

FUNDUS_LABELS = {"N", "D", "G", "C", "A", "H", "M", "O"}


def _domain(labels: tuple[str, ...]) -> str:
    return "fundus" if set(labels) <= FUNDUS_LABELS else "chest"


@pytest.fixture
def session(tiny_library: Path):
    with MedHashSession(tiny_library, device="cpu") as s:
        yield s


@pytest.mark.parametrize("text", list(DEMO_QUERY_LABELS))
def test_example_query_searches_its_own_domain_and_is_in_domain(session: MedHashSession, text: str) -> None:
    want = _domain(DEMO_QUERY_LABELS[text])
    result = session.search(SearchQuery(text=text, k=5))
    assert result.query_domain == want
    assert [h.case["domain"] for h in result.hits] == [want] * 5
    assert result.out_of_domain is False, result.out_of_domain_reason


def test_a_typed_report_of_several_sentences_is_judged_sentence_by_sentence(session: MedHashSession) -> None:
    """Each sentence matches a different library report's sentence; as a whole it matches none well."""
    text = "Enlarged cardiac silhouette. Small bilateral pleural effusions. No pneumothorax."
    result = session.search(SearchQuery(text=text, k=5))
    assert result.out_of_domain is False and result.query_domain == "chest"
    ref = session.searcher._lexical()
    assert ref is not None and ref.is_typical(ref.score(text))


def test_users_domain_choice_wins_and_mixed_text_is_not_restricted(session: MedHashSession) -> None:
    chosen = session.search(SearchQuery(text="Right apical pneumothorax.", k=5, filters=CaseFilter(domain=["fundus"])))
    assert chosen.query_domain is None and {h.case["domain"] for h in chosen.hits} == {"fundus"}
    mixed = session.search(SearchQuery(text="cataract. Right apical pneumothorax.", k=20))
    assert mixed.query_domain is None  # its nearest reports are of both domains: no restriction


def test_cli_json_says_which_domain_was_searched(tiny_library: Path) -> None:
    from medhash_app.cli import app

    out = CliRunner().invoke(app, ["search", "--library", str(tiny_library), "--text", "Right apical pneumothorax.",
                                   "--device", "cpu", "--json", "-k", "5"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["query_domain"] == "chest" and {h["modality"] for h in data["hits"]} != set()
    assert data["out_of_domain"] is False
