"""Render packaging/linux/medhash.svg to the PNG sizes the hicolor icon theme wants (run once; PNGs are committed).

    QT_QPA_PLATFORM=offscreen python packaging/render_icon.py
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

HERE = Path(__file__).resolve().parent / "linux"
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
