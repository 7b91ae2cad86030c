"""The results table's column headers and usual cells are never clipped (the screenshot showed
"h (vs in-dor" for "Match (vs in-domain)": the column was a fixed 72 px)."""

from __future__ import annotations

from PySide6.QtCore import QPoint, QRect
from PySide6.QtWidgets import QStyle, QStyleOptionComboBox

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


def test_full_width_commas_of_odir_reports_show_as_plain_commas(qtbot) -> None:
    """ODIR-5K writes "，" (U+FF0C) between diagnoses; the window's fonts drew it as an empty box."""
    from medhash_app.ui.case_view import report_html
    from medhash_app.ui.presentation import excerpt

    report = "moderate non proliferative retinopathy，hypertensive retinopathy"
    shown = excerpt(report, [])
    assert "，" not in shown and shown == "moderate non proliferative retinopathy,hypertensive retinopathy"
    html = report_html("Case", "", ["D", "H"], report, [])
    assert "，" not in html and "retinopathy,hypertensive" in html
    assert excerpt("5 cm² lesion", []) == "5 cm² lesion"  # only full-width forms are mapped


def test_code_length_choice_shows_its_whole_text(qtbot) -> None:
    """The Bits box read "Auto (longest" in the screenshots: it was sized for 7 characters."""
    from medhash_app.ui.filter_bar import AUTO_BITS, FilterBar

    bar = FilterBar()
    qtbot.addWidget(bar)
    bar.show()
    assert bar.bits.itemText(0).startswith("Auto")
    opt = QStyleOptionComboBox()
    bar.bits.initStyleOption(opt)
    opt.rect = QRect(QPoint(0, 0), bar.bits.sizeHint())  # the size layouts give it
    field = bar.bits.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                            QStyle.SubControl.SC_ComboBoxEditField, bar.bits)
    assert field.width() >= bar.bits.fontMetrics().horizontalAdvance(AUTO_BITS)


def test_grid_cards_show_the_calibrated_match_not_a_raw_percentage(qtbot) -> None:
    """The list said "closer than 74 %" while the grid card of the same hit said "80%" (1 - d / bits)."""
    from medhash_app.ui.presentation import card_lines

    hit = make_result(3).hits[2]
    distance, match, details = card_lines(hit)
    assert match == match_text(hit) and match.startswith("closer than ")
    assert f"{hit.similarity * 100:.0f}%" not in f"{distance} {match} {details}"
    assert distance == f"d {hit.distance}" and details.startswith("DX · PA")
