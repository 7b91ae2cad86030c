"""Save what is on screen: the ranked list as CSV, and a one-page summary as PNG or PDF."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QMarginsF, QPointF, QRectF, QSizeF, Qt
from PySide6.QtGui import QFont, QPageLayout, QPageSize, QPainter, QPdfWriter, QPixmap
from PySide6.QtWidgets import QWidget

from medhash_app.ui.presentation import case_labels

if TYPE_CHECKING:
    from medhash_app.core.search.types import SearchResult

CSV_COLUMNS = ("rank", "case_id", "matched", "distance", "similarity", "shared_findings", "labels",
               "modality", "view", "study_date", "source_path", "report")


def export_csv(result: SearchResult, path: Path) -> int:
    """Write one row per hit (rank order) with the columns above; returns the number of rows."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for hit in result.hits:
            case = hit.case
            writer.writerow([
                hit.rank, case.get("id"), hit.matched, hit.distance, f"{hit.similarity:.4f}",
                "; ".join(hit.shared_findings), "; ".join(case_labels(case)), case.get("modality") or "",
                case.get("view") or "", case.get("study_date") or "", case.get("source_path") or "",
                case.get("report") or "",
            ])
    return len(result.hits)


def export_summary(widget: QWidget, path: Path, title: str) -> Path:
    """A one-page picture of `widget` with a title line: PNG (QWidget.grab) or PDF (QPdfWriter)."""
    pixmap = widget.grab()
    if path.suffix.lower() == ".pdf":
        _write_pdf(pixmap, path, title)
    else:
        if not path.suffix:
            path = path.with_suffix(".png")
        if not pixmap.save(str(path)):
            raise OSError(f"could not write {path.name}")
    return path


def _write_pdf(pixmap: QPixmap, path: Path, title: str) -> None:
    writer = QPdfWriter(str(path))
    writer.setTitle(title)
    writer.setCreator("MedHash")
    landscape = pixmap.width() >= pixmap.height()
    writer.setPageLayout(QPageLayout(QPageSize(QPageSize.PageSizeId.A4),
                                     QPageLayout.Orientation.Landscape if landscape
                                     else QPageLayout.Orientation.Portrait, QMarginsF(12, 12, 12, 12)))
    writer.setResolution(150)
    painter = QPainter(writer)
    if not painter.isActive():
        raise OSError(f"could not write {path.name}")
    page = QRectF(writer.pageLayout().paintRectPixels(writer.resolution()))
    page.moveTo(0, 0)
    font = QFont()
    font.setPointSize(11)
    font.setBold(True)
    painter.setFont(font)
    line = painter.fontMetrics().height()
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    painter.drawText(QRectF(0, 0, page.width(), line * 1.5), Qt.AlignmentFlag.AlignLeft, title)
    painter.drawText(QRectF(0, 0, page.width(), line * 1.5), Qt.AlignmentFlag.AlignRight, stamp)
    area = QRectF(0, line * 2, page.width(), page.height() - line * 2)
    size = QSizeF(pixmap.size()).scaled(area.size(), Qt.AspectRatioMode.KeepAspectRatio)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
    painter.drawPixmap(QRectF(QPointF(area.x(), area.y()), size), pixmap, QRectF(pixmap.rect()))
    painter.end()
