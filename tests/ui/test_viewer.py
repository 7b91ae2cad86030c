"""The image viewer on real DICOM files: W/L drag, presets, invert, zoom, pan, fit, header reveal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from medhash_app.core.imaging import load_image, render, window_presets
from medhash_app.ui.viewer import ImageViewer
from medhash_app.ui.viewer_panel import MASK, ViewerPanel

pytestmark = pytest.mark.shared_data

CHEST = "xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm"
MONO1 = "xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossless.dcm"


def _mouse(widget, kind: QEvent.Type, pos: QPointF, button: Qt.MouseButton, buttons: Qt.MouseButton) -> None:
    event = QMouseEvent(kind, pos, widget.mapToGlobal(pos), button, buttons, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)


def drag(widget, start: QPointF, end: QPointF, button: Qt.MouseButton) -> None:
    """A real press-move-release sequence with the button held during the moves."""
    _mouse(widget, QEvent.Type.MouseButtonPress, start, button, button)
    steps = 8
    for i in range(1, steps + 1):
        pos = start + (end - start) * (i / steps)
        _mouse(widget, QEvent.Type.MouseMove, pos, Qt.MouseButton.NoButton, button)
    _mouse(widget, QEvent.Type.MouseButtonRelease, end, button, Qt.MouseButton.NoButton)


@pytest.fixture
def viewer(qtbot, dicom_dir: Path):
    img = load_image(dicom_dir / CHEST)
    widget = ImageViewer()
    widget.resize(500, 500)
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitExposed(widget)
    widget.set_image(img, window_presets(img))
    return widget


def test_opens_at_the_files_own_rendering(viewer: ImageViewer) -> None:
    np.testing.assert_array_equal(viewer.rendered(), render(viewer.image))
    assert viewer.window is None


@pytest.mark.parametrize("button", [Qt.MouseButton.RightButton, Qt.MouseButton.MiddleButton])
def test_wl_drag_changes_window_and_rendered_pixels(qtbot, viewer: ImageViewer, button) -> None:
    before = viewer.rendered().copy()
    c0, w0 = viewer.effective_window
    drag(viewer, QPointF(250, 250), QPointF(330, 190), button)  # right: wider; up: lower level
    qtbot.waitUntil(lambda: viewer.window is not None)
    c1, w1 = viewer.window
    assert w1 > w0 and c1 < c0
    after = viewer.rendered()
    expected = render(viewer.image, (c1, w1))
    np.testing.assert_array_equal(after, expected)
    assert np.abs(after.astype(int) - before.astype(int)).mean() > 1.0


def test_left_drag_pans_without_touching_the_window(viewer: ImageViewer) -> None:
    before = viewer.offset
    drag(viewer, QPointF(200, 200), QPointF(260, 230), Qt.MouseButton.LeftButton)
    moved = viewer.offset - before
    assert (round(moved.x()), round(moved.y())) == (60, 30)
    assert viewer.window is None


def test_wheel_zooms_around_cursor_and_fit_restores(viewer: ImageViewer) -> None:
    fitted = viewer.zoom
    anchor = QPointF(100, 120)
    image_point = (anchor - viewer.offset) / viewer.zoom
    wheel = QWheelEvent(anchor, viewer.mapToGlobal(anchor), QPointF(0, 0).toPoint(), QPointF(0, 240).toPoint(),
                        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase,
                        False)
    QApplication.sendEvent(viewer, wheel)
    assert viewer.zoom == pytest.approx(fitted * 1.15 ** 2)
    # the image point under the cursor stays under the cursor
    assert viewer.image_to_widget(image_point.x(), image_point.y()).x() == pytest.approx(anchor.x(), abs=0.01)
    viewer.fit()
    assert viewer.zoom == pytest.approx(fitted)


def test_presets_and_invert(viewer: ImageViewer) -> None:
    assert {"lung", "bone", "full range"} <= set(viewer.presets)
    viewer.apply_preset("lung")
    lung = viewer.rendered().copy()
    np.testing.assert_array_equal(lung, render(viewer.image, viewer.presets["lung"]))
    viewer.apply_preset("bone")
    assert not np.array_equal(lung, viewer.rendered())
    bone = viewer.rendered().copy()
    viewer.set_inverted(True)
    np.testing.assert_array_equal(viewer.rendered(), 255 - bone)
    viewer.reset_window()
    np.testing.assert_array_equal(viewer.rendered(), 255 - render(viewer.image))


def test_monochrome1_shows_bone_bright_and_invert_flips_it(qtbot, dicom_dir: Path) -> None:
    img = load_image(dicom_dir / MONO1)
    widget = ImageViewer()
    qtbot.addWidget(widget)
    widget.set_image(img, window_presets(img))
    np.testing.assert_array_equal(widget.rendered(), render(img))  # inverted once, by render()
    widget.set_inverted(True)
    np.testing.assert_array_equal(widget.rendered(), 255 - render(img))


def test_header_hides_identifiers_until_reveal(qtbot, dicom_dir: Path) -> None:
    img = load_image(dicom_dir / CHEST)
    panel = ViewerPanel("Query")
    qtbot.addWidget(panel)
    facts = {**img.facts.to_dict(), "patient_key": "abc123"}
    panel.set_image(img, window_presets(img), facts, "chest.dcm")
    assert panel.header.shown_value("patient_key") == MASK
    assert panel.header.shown_value("modality") == str(facts["modality"])
    panel.header.reveal_button.click()
    assert panel.header.shown_value("patient_key") == "abc123"
    panel.set_image(img, None, facts, "again")  # a new image hides them again
    assert panel.header.shown_value("patient_key") == MASK


def test_preset_combo_applies_the_chosen_window(qtbot, dicom_dir: Path) -> None:
    img = load_image(dicom_dir / CHEST)
    panel = ViewerPanel("Query")
    qtbot.addWidget(panel)
    presets = window_presets(img)
    panel.set_image(img, presets, None, "")
    index = panel.preset_combo.findText("lung")
    panel.preset_combo.activated.emit(index)
    assert panel.viewer.window == presets["lung"]
