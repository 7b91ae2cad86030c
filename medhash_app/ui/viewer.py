"""Image viewer for radiographs and fundus photos: window/level, presets, invert, zoom, pan, fit.

Mouse (as in RadiAnt/Weasis): right or middle drag changes window/level (horizontal = width,
vertical = level), left drag pans, the wheel zooms around the cursor, double-click fits.
Keys when focused: F fit, I invert, R reset window, +/- zoom, 1..9 presets.
Pixels come from `core.imaging.render(img, window, invert)`, the same path ingest and search use;
the viewer only holds the user's window and view transform.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QImage, QMouseEvent, QPainter, QPixmap, QWheelEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

from medhash_app.ui.themes import current_theme

Window = tuple[float, float]  # (center, width)
RenderFn = Callable[[Any, Window | None, bool | None], np.ndarray]

MIN_ZOOM, MAX_ZOOM = 0.02, 40.0
WL_PIXELS_FOR_FULL_RANGE = 600.0  # dragging this many pixels sweeps the whole value range


def _default_render(img: Any, window: Window | None, invert: bool | None) -> np.ndarray:
    from medhash_app.core.imaging import render

    return render(img, window=window, invert=invert)


def array_to_qimage(arr: np.ndarray) -> QImage:
    """uint8 HxW (grey) or HxWx3 (RGB) -> QImage that owns a copy of the pixels."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    h, w = arr.shape[:2]
    if arr.ndim == 2:
        image = QImage(arr.data, w, h, arr.strides[0], QImage.Format.Format_Grayscale8)
    elif arr.ndim == 3 and arr.shape[2] == 3:
        image = QImage(arr.data, w, h, arr.strides[0], QImage.Format.Format_RGB888)
    else:
        raise ValueError(f"cannot display an array of shape {arr.shape}")
    return image.copy()  # detach from the numpy buffer


def value_range(img: Any) -> tuple[float, float]:
    """Robust (1st, 99th percentile) range of a grey image's values, for W/L drag sensitivity."""
    pixels = np.asarray(getattr(img, "pixels", img))
    if pixels.size == 0:
        return 0.0, 1.0
    step = max(1, int(np.sqrt(pixels.size / 250_000)))  # sample ~250k values, fast on big images
    sample = pixels[::step, ::step].astype(np.float32, copy=False)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    full_lo, full_hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        lo, hi = full_lo, full_hi if full_hi > full_lo else full_lo + 1.0
    return float(lo), float(hi)


class ImageViewer(QWidget):
    """Paints one image; emits `windowChanged(center, width)` when the user changes W/L."""

    windowChanged = Signal(float, float)
    invertChanged = Signal(bool)
    viewChanged = Signal()

    def __init__(self, parent: QWidget | None = None, render_fn: RenderFn | None = None) -> None:
        super().__init__(parent)
        self._render_fn = render_fn or _default_render
        self._img: Any = None
        self._presets: dict[str, Window] = {}
        self._window: Window | None = None  # None: the file's own VOI LUT / window
        self._initial_window: Window | None = None
        self._user_invert = False
        self._range = (0.0, 1.0)
        self._rendered: np.ndarray | None = None
        self._pixmap: QPixmap | None = None
        self._dirty = False
        self._scale = 1.0
        self._offset = QPointF(0, 0)
        self._fit_mode = True
        self._drag_button: Qt.MouseButton | None = None
        self._drag_origin = QPointF()
        self._drag_window: Window = (0.0, 1.0)
        self._drag_offset = QPointF()
        self._message = "Drop a DICOM, PNG or JPEG file here"
        self.disabled_message = ""
        self._render_timer = QTimer(self, singleShot=True, interval=0)
        self._render_timer.timeout.connect(self._render_now)
        self.setMouseTracking(False)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 160)
        self.setAccessibleName("Image viewer")
        self.setAccessibleDescription(
            "Right or middle drag: window and level. Left drag: pan. Wheel: zoom. Double-click: fit.")

    # -- public API ---------------------------------------------------------------------------
    def sizeHint(self) -> QSize:
        return QSize(520, 520)

    def set_image(self, img: Any, presets: dict[str, Window] | None = None) -> None:
        """Show a LoadedImage (or anything `render_fn` accepts) fitted, at its own window."""
        self._img = img
        self._presets = dict(presets or {})
        self._user_invert = False
        self._window = None
        self._range = (0.0, 255.0) if self.is_color else value_range(img)
        default = getattr(img, "default_window", None)
        lo, hi = self._range
        self._initial_window = tuple(default) if default else ((lo + hi) / 2, max(hi - lo, 1.0))
        self._fit_mode = True
        self._render_now()
        self.viewChanged.emit()

    def clear(self, message: str = "") -> None:
        self._img = None
        self._rendered = None
        self._pixmap = None
        self._presets = {}
        self._message = message
        self.update()
        self.viewChanged.emit()

    def has_image(self) -> bool:
        return self._img is not None

    @property
    def image(self) -> Any:
        return self._img

    @property
    def is_color(self) -> bool:
        return bool(getattr(self._img, "is_color", False))

    @property
    def presets(self) -> dict[str, Window]:
        return dict(self._presets)

    @property
    def window(self) -> Window | None:
        """The window the user chose, or None while the file's own display settings apply."""
        return self._window

    @property
    def effective_window(self) -> Window:
        return self._window or self._initial_window or (0.5, 1.0)

    @property
    def inverted(self) -> bool:
        return self._user_invert

    @property
    def zoom(self) -> float:
        return self._scale

    @property
    def offset(self) -> QPointF:
        return QPointF(self._offset)

    def rendered(self) -> np.ndarray | None:
        """The last rendered uint8 pixels (what is on screen before scaling)."""
        if self._dirty:
            self._render_now()
        return self._rendered

    def set_window(self, center: float, width: float) -> None:
        if self._img is None or self.is_color:
            return
        width = max(float(width), 1e-3)
        new = (float(center), width)
        if new == self._window:
            return
        self._window = new
        self._schedule_render()
        self.windowChanged.emit(*new)

    def reset_window(self) -> None:
        if self._img is None:
            return
        self._window = None
        self._schedule_render()
        self.windowChanged.emit(*self.effective_window)

    def apply_preset(self, name: str) -> None:
        if name not in self._presets:
            raise KeyError(name)
        self.set_window(*self._presets[name])

    def set_inverted(self, inverted: bool) -> None:
        if inverted == self._user_invert:
            return
        self._user_invert = inverted
        self._schedule_render()
        self.invertChanged.emit(inverted)

    def toggle_invert(self) -> None:
        self.set_inverted(not self._user_invert)

    def fit(self) -> None:
        self._fit_mode = True
        self._apply_fit()
        self.update()
        self.viewChanged.emit()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        if self._img is None:
            return
        anchor = anchor if anchor is not None else QPointF(self.width() / 2, self.height() / 2)
        new_scale = min(MAX_ZOOM, max(MIN_ZOOM, self._scale * factor))
        factor = new_scale / self._scale
        self._offset = anchor - (anchor - self._offset) * factor
        self._scale = new_scale
        self._fit_mode = False
        self.update()
        self.viewChanged.emit()

    def pan_by(self, dx: float, dy: float) -> None:
        self._offset += QPointF(dx, dy)
        self._fit_mode = False
        self.update()
        self.viewChanged.emit()

    def image_to_widget(self, x: float, y: float) -> QPointF:
        return self._offset + QPointF(x, y) * self._scale

    # -- rendering ----------------------------------------------------------------------------
    def _effective_invert(self) -> bool | None:
        """None lets render() apply MONOCHROME1 once; the user's invert flips that."""
        if not self._user_invert:
            return None
        return not bool(getattr(self._img, "invert", False))

    def _schedule_render(self) -> None:
        self._dirty = True
        if not self._render_timer.isActive():
            self._render_timer.start()

    def _render_now(self) -> None:
        self._dirty = False
        if self._img is None:
            return
        arr = self._render_fn(self._img, self._window, self._effective_invert())
        self._rendered = arr
        self._pixmap = QPixmap.fromImage(array_to_qimage(arr))
        if self._fit_mode:
            self._apply_fit()
        self.update()

    def _apply_fit(self) -> None:
        if self._pixmap is None:
            return
        iw, ih = self._pixmap.width(), self._pixmap.height()
        if iw == 0 or ih == 0:
            return
        scale = min(self.width() / iw, self.height() / ih)
        self._scale = max(MIN_ZOOM, scale)
        self._offset = QPointF((self.width() - iw * self._scale) / 2, (self.height() - ih * self._scale) / 2)

    def resizeEvent(self, event) -> None:
        if self._fit_mode:
            self._apply_fit()
        super().resizeEvent(event)

    def paintEvent(self, event) -> None:
        theme = current_theme()
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(theme.viewer_bg))
        if self._pixmap is None:
            p.setPen(QColor("#8a939c"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._message)
            p.end()
            return
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self._scale < 4)
        target = QRectF(self._offset.x(), self._offset.y(),
                        self._pixmap.width() * self._scale, self._pixmap.height() * self._scale)
        if not self.isEnabled():
            p.setOpacity(0.25)  # parked: e.g. the query is the typed report, not this image
        p.drawPixmap(target, self._pixmap, QRectF(self._pixmap.rect()))
        p.setOpacity(1.0)
        if self.isEnabled():
            self._paint_overlay(p)
        elif self.disabled_message:
            p.setPen(QColor("#e6e8eb"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.disabled_message)
        p.end()

    def _paint_overlay(self, p: QPainter) -> None:
        """Corner annotations, as radiologists expect: W/L and zoom top-left, size bottom-left."""
        font = QFont(self.font())
        font.setPointSizeF(max(7.5, font.pointSizeF() * 0.9))
        p.setFont(font)
        lines_top = []
        if not self.is_color:
            c, w = self.effective_window
            lines_top.append(f"W {w:.0f}  L {c:.0f}" + ("" if self._window else "  (file)"))
        lines_top.append(f"Zoom {self._scale * 100:.0f}%" + ("  inverted" if self._user_invert else ""))
        h = p.fontMetrics().height()
        for i, text in enumerate(lines_top):
            self._shadow_text(p, 8, 6 + h * (i + 1) - 3, text)
        if self._rendered is not None:
            rows, cols = self._rendered.shape[:2]
            self._shadow_text(p, 8, self.height() - 8, f"{cols} × {rows}")

    @staticmethod
    def _shadow_text(p: QPainter, x: int, y: int, text: str) -> None:
        p.setPen(QColor(0, 0, 0, 200))
        p.drawText(x + 1, y + 1, text)
        p.setPen(QColor("#f0e68c"))
        p.drawText(x, y, text)

    # -- mouse and keys -----------------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if self._img is None:
            return super().mousePressEvent(event)
        self._drag_button = event.button()
        self._drag_origin = event.position()
        self._drag_window = self.effective_window
        self._drag_offset = QPointF(self._offset)
        if self._is_wl_button(event.button()):
            self.setCursor(Qt.CursorShape.SizeAllCursor)
        elif event.button() == Qt.MouseButton.LeftButton:
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag_button is None:
            return super().mouseMoveEvent(event)
        delta = event.position() - self._drag_origin
        if self._is_wl_button(self._drag_button) and not self.is_color:
            lo, hi = self._range
            per_pixel = max(hi - lo, 1.0) / WL_PIXELS_FOR_FULL_RANGE
            center, width = self._drag_window
            self.set_window(center + delta.y() * per_pixel, max(1.0, width + delta.x() * per_pixel))
        elif self._drag_button == Qt.MouseButton.LeftButton:
            self._offset = self._drag_offset + delta
            self._fit_mode = False
            self.update()
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._drag_button = None
        self.unsetCursor()
        self.viewChanged.emit()
        event.accept()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self.fit()
        event.accept()

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(1.15 ** steps, event.position())
        event.accept()

    def keyPressEvent(self, event) -> None:
        key = event.key()
        names = list(self._presets)
        if key == Qt.Key.Key_F:
            self.fit()
        elif key == Qt.Key.Key_I:
            self.toggle_invert()
        elif key == Qt.Key.Key_R:
            self.reset_window()
        elif key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(1.25)
        elif key == Qt.Key.Key_Minus:
            self.zoom_by(0.8)
        elif Qt.Key.Key_1 <= key <= Qt.Key.Key_9 and key - Qt.Key.Key_1 < len(names):
            self.apply_preset(names[key - Qt.Key.Key_1])
        else:
            super().keyPressEvent(event)

    @staticmethod
    def _is_wl_button(button: Qt.MouseButton) -> bool:
        return button in (Qt.MouseButton.RightButton, Qt.MouseButton.MiddleButton)
