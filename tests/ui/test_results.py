"""Results model and views: paging, lazy thumbnails for visible rows only, highlighting, export."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

from medhash_app.core.search.types import Hit, SearchResult
from medhash_app.ui.export import export_csv
from medhash_app.ui.presentation import excerpt, highlight_spans, highlighted_html
from medhash_app.ui.results_model import COL, PAGE, HitRole, ResultsModel, ThumbRole
from medhash_app.ui.results_view import ResultsView
from medhash_app.ui.thumbnails import ThumbnailLoader

REPORT = ("Heart size is normal. There is a small right pleural effusion. No pneumothorax. "
          "Mild cardiomegaly is unchanged compared with the prior study.")


def make_result(n: int) -> SearchResult:
    hits = [Hit(rank=i + 1, case={"id": f"case{i:05d}", "report": REPORT, "labels": ["Pleural Effusion",
                                                                                    "Cardiomegaly"],
                                  "modality": "DX", "view": "PA", "study_date": f"2020-01-0{1 + i % 9}"},
                matched="text", distance=i % 17, similarity=1 - (i % 17) / 32,
                shared_findings=["Pleural Effusion"], closer_than=1 - (i % 17) / 32) for i in range(n)]
    return SearchResult(hits=hits, bits=32, model_id="1", device="cpu", encode_ms=5.0, search_ms=1.0,
                        total_ms=6.0, query_kind="image", query_findings=["Pleural Effusion"])


@pytest.fixture
def thumb_bytes(dicom_dir: Path) -> bytes:
    from medhash_app.core.imaging import load_image, thumbnail_jpeg

    return thumbnail_jpeg(load_image(dicom_dir / "xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm"))


def test_highlighting_finds_shared_findings_in_free_text() -> None:
    spans = highlight_spans(REPORT, ["Pleural Effusion", "Cardiomegaly"])
    words = [REPORT[a:b].lower() for a, b in spans]
    assert "pleural effusion" in words and "cardiomegaly" in words
    html = highlighted_html("a < b; effusion", ["Pleural Effusion"], "#fff", "#000")
    assert "&lt;" in html and ">effusion</span>" in html
    short = excerpt(" ".join(["Normal sentence here."] * 30 + ["Large effusion on the left."]),
                    ["Pleural Effusion"], limit=80)
    assert short.startswith("Large effusion") and len(short) <= 82


def test_model_pages_thousands_of_hits(qtbot) -> None:
    model = ResultsModel()
    model.set_result(make_result(5000))
    assert model.total() == 5000
    assert model.rowCount() == PAGE
    assert model.canFetchMore()
    model.fetchMore()
    assert model.rowCount() == 2 * PAGE
    index = model.index(3, COL["similarity"])
    assert model.data(index) == "closer than 91 %"  # calibrated share of in-domain matches, not 1 - d/bits
    assert model.data(index, HitRole).rank == 4


def test_only_visible_rows_request_thumbnails_and_they_arrive(qtbot, thumb_bytes: bytes) -> None:
    fetched: list[str] = []

    def fetch(case):
        fetched.append(case["id"])
        return thumb_bytes

    loader = ThumbnailLoader(fetch)
    model = ResultsModel(loader)
    view = ResultsView(model)
    view.resize(1000, 600)
    qtbot.addWidget(view)
    view.show()
    qtbot.waitExposed(view)
    model.set_result(make_result(5000))
    qtbot.waitUntil(lambda: model.data(model.index(0, COL["image"]), ThumbRole) is not None, timeout=5000)
    visible = view.table.viewport().height() // view.table.verticalHeader().defaultSectionSize() + 2
    assert 1 <= len(set(loader.requested)) <= visible
    image = model.data(model.index(0, COL["image"]), ThumbRole)
    assert isinstance(image, QImage) and not image.isNull() and max(image.width(), image.height()) <= 160
    # scrolling to the end pages more rows in and asks only for the newly visible thumbnails
    before = len(set(loader.requested))
    view.table.scrollToBottom()
    qtbot.waitUntil(lambda: model.rowCount() > PAGE, timeout=3000)
    qtbot.waitUntil(lambda: len(set(loader.requested)) > before, timeout=3000)
    assert len(set(loader.requested)) <= 2 * visible + 2
    loader.stop()


def test_grid_toggle_shows_the_same_hits(qtbot) -> None:
    model = ResultsModel()
    view = ResultsView(model)
    qtbot.addWidget(view)
    model.set_result(make_result(30))
    view.set_mode("grid")
    assert view.mode == "grid" and view.currentWidget() is view.grid
    activated: list[Hit] = []
    view.hitActivated.connect(activated.append)
    view.grid.doubleClicked.emit(model.index(2, COL["image"]))
    assert activated[0].rank == 3
    view.set_mode("list")
    assert view.currentWidget() is view.table


def test_csv_export_has_one_row_per_hit_in_rank_order(tmp_path: Path) -> None:
    result = make_result(12)
    path = tmp_path / "hits.csv"
    assert export_csv(result, path) == 12
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [int(r["rank"]) for r in rows] == list(range(1, 13))
    assert rows[0]["labels"] == "Pleural Effusion; Cardiomegaly"
    assert rows[0]["report"] == REPORT


def test_list_view_sizes_report_column_to_be_readable(qtbot) -> None:
    model = ResultsModel()
    view = ResultsView(model)
    view.resize(1000, 500)
    qtbot.addWidget(view)
    view.show()
    model.set_result(make_result(3))
    assert view.table.columnWidth(COL["report"]) >= 250
    assert view.table.verticalHeader().defaultSectionSize() >= 76
    assert model.data(model.index(0, COL["rank"]), Qt.ItemDataRole.TextAlignmentRole)
