"""Table model over a SearchResult's hits, with lazy thumbnails and incremental paging.

Thousands of hits stay smooth because the model exposes rows in pages (`canFetchMore`), views
ask for pictures only for painted rows, and pictures come from a `ThumbnailLoader` thread.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtGui import QImage

from medhash_app.ui.presentation import case_labels, match_text, short_date
from medhash_app.ui.thumbnails import ThumbnailLoader

if TYPE_CHECKING:
    from medhash_app.core.search.types import Hit, SearchResult

PAGE = 250
THUMB_CACHE = 3000

HitRole = Qt.ItemDataRole.UserRole + 1
LabelsRole = Qt.ItemDataRole.UserRole + 2
ThumbRole = Qt.ItemDataRole.UserRole + 3
FindingsRole = Qt.ItemDataRole.UserRole + 4

COLUMNS = ("rank", "image", "report", "distance", "similarity", "labels", "modality", "view", "date")
HEADERS = {"rank": "#", "image": "Image", "report": "Report", "distance": "Hamming",
           "similarity": "Match (vs in-domain)", "labels": "Labels", "modality": "Modality", "view": "View",
           "date": "Date"}
COL = {name: i for i, name in enumerate(COLUMNS)}
_AnyIndex = QModelIndex | QPersistentModelIndex


class ResultsModel(QAbstractTableModel):
    """Rows are hits in rank order; `hit(row)` gives the `Hit`, ThumbRole a QImage or None."""

    def __init__(self, loader: ThumbnailLoader | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._hits: list[Hit] = []
        self._shown = 0
        self.result: SearchResult | None = None
        self._thumbs: OrderedDict[str, QImage] = OrderedDict()
        self._missing: set[str] = set()
        self._rows_by_id: dict[str, list[int]] = {}
        self.loader = loader
        if loader is not None:
            loader.loaded.connect(self._on_thumb)
            loader.missing.connect(self._missing.add)

    # -- content ------------------------------------------------------------------------------
    def set_result(self, result: SearchResult | None) -> None:
        self.beginResetModel()
        self.result = result
        self._hits = list(result.hits) if result else []
        self._shown = min(PAGE, len(self._hits))
        self._rows_by_id = {}
        for row, hit in enumerate(self._hits):
            self._rows_by_id.setdefault(str(hit.case.get("id")), []).append(row)
        self._missing.clear()
        if self.loader is not None:
            self.loader.clear()
        self.endResetModel()

    def hit(self, row: int) -> Hit | None:
        return self._hits[row] if 0 <= row < self._shown else None

    def all_hits(self) -> list[Hit]:
        return list(self._hits)

    def total(self) -> int:
        return len(self._hits)

    # -- Qt model API -------------------------------------------------------------------------
    def rowCount(self, parent: _AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else self._shown

    def columnCount(self, parent: _AnyIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def canFetchMore(self, parent: _AnyIndex = QModelIndex()) -> bool:  # noqa: B008
        return not parent.isValid() and self._shown < len(self._hits)

    def fetchMore(self, parent: _AnyIndex = QModelIndex()) -> None:  # noqa: B008
        if parent.isValid():
            return
        extra = min(PAGE, len(self._hits) - self._shown)
        if extra <= 0:
            return
        self.beginInsertRows(QModelIndex(), self._shown, self._shown + extra - 1)
        self._shown += extra
        self.endInsertRows()

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return HEADERS[COLUMNS[section]]
        return None

    def data(self, index: _AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        hit = self.hit(index.row()) if index.isValid() else None
        if hit is None:
            return None
        column = COLUMNS[index.column()]
        if role == HitRole:
            return hit
        if role == ThumbRole or (role == Qt.ItemDataRole.DecorationRole and column == "image"):
            return self.thumbnail(hit)
        if role == LabelsRole:
            return case_labels(hit.case)
        if role == FindingsRole:
            return list(hit.shared_findings)
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(hit, column)
        if role == Qt.ItemDataRole.ToolTipRole and column == "report":
            return (hit.case.get("report") or "")[:1200]
        if role == Qt.ItemDataRole.TextAlignmentRole and column in ("rank", "distance", "similarity"):
            return int(Qt.AlignmentFlag.AlignCenter)
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return f"Rank {hit.rank}, {match_text(hit)} of in-domain matches, " \
                   f"labels {', '.join(case_labels(hit.case)) or 'none'}"
        return None

    def _display(self, hit: Hit, column: str) -> str:
        case = hit.case
        values = {
            "rank": str(hit.rank), "image": "", "report": case.get("report") or "",
            "distance": str(hit.distance), "similarity": match_text(hit),
            "labels": ", ".join(case_labels(case)), "modality": case.get("modality") or "",
            "view": case.get("view") or "", "date": short_date(case.get("study_date")),
        }
        return values[column]

    # -- thumbnails ---------------------------------------------------------------------------
    def thumbnail(self, hit: Hit) -> QImage | None:
        case_id = str(hit.case.get("id"))
        image = self._thumbs.get(case_id)
        if image is not None:
            self._thumbs.move_to_end(case_id)
            return image
        if self.loader is not None and case_id not in self._missing:
            self.loader.request(hit.case)
        return None

    def _on_thumb(self, case_id: str, image: QImage) -> None:
        self._thumbs[case_id] = image
        while len(self._thumbs) > THUMB_CACHE:
            self._thumbs.popitem(last=False)
        for row in self._rows_by_id.get(case_id, []):
            if row < self._shown:
                first = self.index(row, 0)
                self.dataChanged.emit(first, self.index(row, len(COLUMNS) - 1),
                                      [Qt.ItemDataRole.DecorationRole, ThumbRole])
