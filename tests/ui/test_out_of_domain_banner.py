"""The search tab says plainly, above the results, when a query is unlike every case of the library
(a real library, a real trained tiny model, a real screenshot-like PNG; core/search/ood.py)."""

from __future__ import annotations

from pathlib import Path

from medhash_app.ui.results_model import COL
from tests.test_out_of_domain import screenshot_png


def test_screenshot_query_shows_out_of_domain_banner_and_in_domain_query_clears_it(
        qtbot, open_library, window, tiny_library: Path, tmp_path: Path) -> None:
    open_library(window, tiny_library)
    tab = window.search_tab
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        tab.query.load_file(screenshot_png(tmp_path / "screen.png"))
    result, _ = blocker.args
    assert result.out_of_domain is True
    assert tab.message.text().startswith("Out of domain:") and tab.message.kind == "warning"
    assert "unlike every case in this library" in tab.message.text()
    assert tab.model.data(tab.model.index(0, COL["similarity"])).startswith("closer than ")
    case = next(c for c in window.state.session.library.iter_cases() if c["domain"] == "fundus")
    with qtbot.waitSignal(tab.searchFinished, timeout=60_000) as blocker:
        tab.query.load_file(Path(case["source_path"]))
    assert blocker.args[0].out_of_domain is False
    assert not tab.message.text().startswith("Out of domain:")
