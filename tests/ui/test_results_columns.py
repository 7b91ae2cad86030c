"""The results table's column headers and usual cells are never clipped (the screenshot showed
"h (vs in-dor" for "Match (vs in-domain)": the column was a fixed 72 px)."""

from __future__ import annotations

from medhash_app.ui.presentation import match_text
from medhash_app.ui.results_model import COL, COLUMNS, HEADERS, ResultsModel
from medhash_app.ui.results_view import ResultsView
from tests.ui.test_results import make_result


def test_every_fixed_column_fits_its_header_and_widest_usual_cell(qtbot) -> None:
    model = ResultsModel()
    view = ResultsView(model)
    qtbot.addWidget(view)
    view.resize(1400, 800)
    view.show()
    model.set_result(make_result(5))
    header = view.table.horizontalHeader()
    metrics = header.fontMetrics()
    for name in COLUMNS:
        if name in ("report", "image"):  # report stretches; image is the thumbnail
            continue
        assert header.sectionSize(COL[name]) >= metrics.horizontalAdvance(HEADERS[name]) + 8, name
    widest = view.table.fontMetrics().horizontalAdvance(match_text(type("H", (), {"closer_than": 1.0})()))
    assert header.sectionSize(COL["similarity"]) >= widest + 8
