"""Render packaging/linux/medhash.svg to the PNG sizes the hicolor icon theme wants (run once; PNGs are committed).

A build-time helper, kept in the UI package because Qt is imported only there.

    QT_QPA_PLATFORM=offscreen python -m medhash_app.ui.render_icon     # from the repository root
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

HERE = Path(__file__).resolve().parents[2] / "packaging" / "linux"
SIZES = (48, 128, 256)


def main() -> None:
    app = QGuiApplication([])  # noqa: F841  (QPainter on images needs a GUI application)
    renderer = QSvgRenderer(str(HERE / "medhash.svg"))
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        renderer.render(painter)
        painter.end()
        image.save(str(HERE / f"medhash-{size}.png"))


if __name__ == "__main__":
    main()
