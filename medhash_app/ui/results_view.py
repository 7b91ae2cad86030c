"""Ranked list (table) and grid views over one ResultsModel, with painting delegates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QAbstractTextDocumentLayout,
    QColor,
    QFont,
    QImage,
    QLinearGradient,
    QPainter,
    QPalette,
    QPen,
    QTextDocument,
)
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QListView,
    QStackedWidget,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QWidget,
)

from medhash_app.ui.presentation import card_lines, excerpt, highlighted_html
from medhash_app.ui.results_model import COL, FindingsRole, HitRole, LabelsRole, ResultsModel, ThumbRole
from medhash_app.ui.themes import current_theme

if TYPE_CHECKING:
    from medhash_app.core.search.types import Hit

ROW_HEIGHT = 84
THUMB = 76
CARD = QSize(184, 284)  # thumbnail, rank + distance, match, facts, chips
_Index = QModelIndex | QPersistentModelIndex


def _paint_background(painter: QPainter, option: QStyleOptionViewItem) -> None:
    if option.state & QStyle.StateFlag.State_Selected:
        painter.fillRect(option.rect, option.palette.highlight())


def _text_colour(option: QStyleOptionViewItem) -> QColor:
    selected = bool(option.state & QStyle.StateFlag.State_Selected)
    return option.palette.color(QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text)


def _fade_bottom(painter: QPainter, option: QStyleOptionViewItem, height: int = 18) -> None:
    """Fade the last line of text that does not fit, instead of cutting it mid-line."""
    rect = option.rect
    background = option.palette.color(QPalette.ColorRole.Highlight) if option.state & QStyle.StateFlag.State_Selected \
        else option.palette.color(QPalette.ColorRole.AlternateBase if option.features &
                                  QStyleOptionViewItem.ViewItemFeature.Alternate else QPalette.ColorRole.Base)
    gradient = QLinearGradient(0, rect.bottom() - height, 0, rect.bottom())
    clear = QColor(background)
    clear.setAlpha(0)
    gradient.setColorAt(0.0, clear)
    gradient.setColorAt(0.85, background)
    painter.fillRect(QRect(rect.left(), rect.bottom() - height, rect.width(), height + 1), gradient)


def paint_thumb(painter: QPainter, rect: QRect, image: QImage | None) -> None:
    """Draw a thumbnail fitted and centred in `rect`, or a quiet placeholder while it loads."""
    theme = current_theme()
    painter.fillRect(rect, QColor(theme.viewer_bg))
    if image is None or image.isNull():
        painter.setPen(QPen(QColor(theme.border)))
        painter.drawRect(rect.adjusted(0, 0, -1, -1))
        return
    scaled = image.size().scaled(rect.size(), Qt.AspectRatioMode.KeepAspectRatio)
    x = rect.x() + (rect.width() - scaled.width()) // 2
    y = rect.y() + (rect.height() - scaled.height()) // 2
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
    painter.drawImage(QRect(x, y, scaled.width(), scaled.height()), image)


def paint_chips(painter: QPainter, rect: QRect, labels: list[str], shared: set[str], font: QFont) -> None:
    """Rounded label chips, wrapping within `rect`; findings shared with the query are filled."""
    theme = current_theme()
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    small = QFont(font)
    small.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
    painter.setFont(small)
    fm = painter.fontMetrics()
    x, y, h = rect.x(), rect.y(), fm.height() + 4
    for label in labels:
        w = fm.horizontalAdvance(label) + 14
        if x + w > rect.right() and x > rect.x():
            x, y = rect.x(), y + h + 3
        if y + h > rect.bottom() + 1:
            break
        chip = QRectF(x, y, w, h)
        is_shared = label.lower() in shared
        painter.setPen(QPen(QColor(theme.finding_bg if is_shared else theme.border)))
        painter.setBrush(QColor(theme.finding_bg) if is_shared else QColor(theme.button))
        painter.drawRoundedRect(chip, h / 2, h / 2)
        painter.setPen(QColor(theme.finding_fg if is_shared else theme.text))
        painter.drawText(chip, Qt.AlignmentFlag.AlignCenter, label)
        x += w + 4
    painter.restore()


class ThumbDelegate(QStyledItemDelegate):
    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        _paint_background(painter, option)
        paint_thumb(painter, option.rect.adjusted(4, 4, -4, -4), index.data(ThumbRole))

    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        return QSize(THUMB + 8, ROW_HEIGHT)


class ReportDelegate(QStyledItemDelegate):
    """Report excerpt as rich text, with mentions of the shared findings highlighted."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        _paint_background(painter, option)
        hit: Hit | None = index.data(HitRole)
        if hit is None:
            return
        theme = current_theme()
        findings = list(hit.shared_findings)
        text = excerpt(hit.case.get("report") or "", findings)
        doc = QTextDocument()
        doc.setDefaultFont(option.font)
        doc.setDocumentMargin(4)
        doc.setHtml(highlighted_html(text, findings, theme.finding_fg, theme.finding_bg) or
                    "<i>(no report)</i>")
        doc.setTextWidth(option.rect.width())
        painter.save()
        painter.setClipRect(option.rect)
        painter.translate(option.rect.topLeft())
        ctx = QAbstractTextDocumentLayout.PaintContext()
        ctx.palette.setColor(QPalette.ColorRole.Text, _text_colour(option))
        doc.documentLayout().draw(painter, ctx)
        painter.restore()
        if doc.size().height() > option.rect.height():
            _fade_bottom(painter, option)


class ChipsDelegate(QStyledItemDelegate):
    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        _paint_background(painter, option)
        shared = {f.lower() for f in (index.data(FindingsRole) or [])}
        paint_chips(painter, option.rect.adjusted(4, 6, -4, -4), index.data(LabelsRole) or [], shared,
                    option.font)


class CardDelegate(QStyledItemDelegate):
    """Grid card: thumbnail, rank, calibrated match, facts and distance, label chips."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: _Index) -> None:
        theme = current_theme()
        hit: Hit | None = index.data(HitRole)
        rect = option.rect.adjusted(4, 4, -4, -4)
        painter.save()
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.setPen(QPen(QColor(theme.highlight if selected else theme.border), 2 if selected else 1))
        painter.setBrush(QColor(theme.alt_base))
        painter.drawRoundedRect(QRectF(rect), 6, 6)
        painter.restore()
        if hit is None:
            return
        thumb_rect = QRect(rect.x() + 6, rect.y() + 6, rect.width() - 12, rect.width() - 12)
        paint_thumb(painter, thumb_rect, index.data(ThumbRole))
        painter.save()
        painter.setPen(QColor(theme.text))
        bold = QFont(option.font)
        bold.setBold(True)
        painter.setFont(bold)
        line = QRect(rect.x() + 8, thumb_rect.bottom() + 4, rect.width() - 16, painter.fontMetrics().height())
        painter.drawText(line, Qt.AlignmentFlag.AlignLeft, f"#{hit.rank}")
        painter.setFont(option.font)
        distance, match, details = card_lines(hit)
        painter.drawText(line, Qt.AlignmentFlag.AlignRight, distance)
        match_line = line.translated(0, line.height() + 1)
        painter.drawText(match_line, Qt.AlignmentFlag.AlignLeft, match)
        detail_line = match_line.translated(0, line.height() + 1)
        painter.setPen(QColor(theme.muted))
        painter.drawText(detail_line, Qt.AlignmentFlag.AlignLeft, details)
        painter.restore()
        chips = QRect(rect.x() + 6, detail_line.bottom() + 4, rect.width() - 12,
                      rect.bottom() - detail_line.bottom() - 8)
        shared = {f.lower() for f in hit.shared_findings}
        paint_chips(painter, chips, index.data(LabelsRole) or [], shared, option.font)

    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        return CARD


WIDEST_CELL = {"similarity": "closer than 100 %", "date": "2099-12-31", "distance": "1024"}


class ResultsView(QStackedWidget):
    """Holds the list and grid views; emits `hitActivated(Hit)` and `currentHitChanged(Hit)`."""

    hitActivated = Signal(object)
    currentHitChanged = Signal(object)

    def __init__(self, model: ResultsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.table = self._make_table(model)
        self.grid = self._make_grid(model)
        self.addWidget(self.table)
        self.addWidget(self.grid)
        for view in (self.table, self.grid):
            view.doubleClicked.connect(self._activate)
            view.activated.connect(self._activate)
        self.table.selectionModel().currentRowChanged.connect(self._current)
        self.grid.selectionModel().currentChanged.connect(self._current)

    @property
    def mode(self) -> str:
        return "grid" if self.currentWidget() is self.grid else "list"

    def set_mode(self, mode: str) -> None:
        self.setCurrentWidget(self.grid if mode == "grid" else self.table)

    def current_view(self) -> QAbstractItemView:
        return self.grid if self.mode == "grid" else self.table

    def current_hit(self) -> Hit | None:
        index = self.current_view().currentIndex()
        return self.model.hit(index.row()) if index.isValid() else None

    def _activate(self, index: QModelIndex) -> None:
        hit = self.model.hit(index.row())
        if hit is not None:
            self.hitActivated.emit(hit)

    def _current(self, index: QModelIndex, _previous: QModelIndex) -> None:
        hit = self.model.hit(index.row()) if index.isValid() else None
        if hit is not None:
            self.currentHitChanged.emit(hit)

    def _make_table(self, model: ResultsModel) -> QTableView:
        table = QTableView(self)
        table.setModel(model)
        table.setAccessibleName("Search results list")
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        table.setAlternatingRowColors(True)
        table.setShowGrid(False)
        table.setWordWrap(True)
        table.verticalHeader().setVisible(False)
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        table.verticalHeader().setDefaultSectionSize(ROW_HEIGHT)
        table.setItemDelegateForColumn(COL["image"], ThumbDelegate(table))
        table.setItemDelegateForColumn(COL["report"], ReportDelegate(table))
        table.setItemDelegateForColumn(COL["labels"], ChipsDelegate(table))
        header = table.horizontalHeader()
        header.setHighlightSections(False)
        widths = {"rank": 36, "image": THUMB + 8, "distance": 64, "similarity": 72, "labels": 140,
                  "modality": 64, "view": 48, "date": 84}
        for name, width in widths.items():  # never narrower than the header or the widest usual cell
            cell = table.fontMetrics().horizontalAdvance(WIDEST_CELL.get(name, "")) + 16
            header.resizeSection(COL[name], max(width, header.sectionSizeHint(COL[name]), cell))
        header.setSectionResizeMode(COL["report"], QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(30)
        return table

    def _make_grid(self, model: ResultsModel) -> QListView:
        grid = QListView(self)
        grid.setModel(model)
        grid.setModelColumn(COL["image"])
        grid.setAccessibleName("Search results grid")
        grid.setViewMode(QListView.ViewMode.IconMode)
        grid.setResizeMode(QListView.ResizeMode.Adjust)
        grid.setMovement(QListView.Movement.Static)
        grid.setUniformItemSizes(True)
        grid.setGridSize(CARD + QSize(6, 6))
        grid.setSpacing(4)
        grid.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        grid.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        grid.setItemDelegate(CardDelegate(grid))
        return grid
