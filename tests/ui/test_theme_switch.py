"""Switching the theme live repaints every button in the new theme, readable in each."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QAbstractButton


def _luminance(colour: QColor) -> float:
    def channel(v: float) -> float:
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4
    return 0.2126 * channel(colour.redF()) + 0.7152 * channel(colour.greenF()) + 0.0722 * channel(colour.blueF())


def contrast(a: QColor, b: QColor) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _painted(button: QAbstractButton) -> tuple[QColor, QColor]:
    """(background, text) as painted: the commonest colour, and the one contrasting most with it."""
    image = button.grab().toImage()
    counts: dict[int, int] = {}
    for x in range(image.width()):
        for y in range(image.height()):
            rgb = image.pixel(x, y) & 0xFFFFFF
            counts[rgb] = counts.get(rgb, 0) + 1
    background = QColor(max(counts, key=counts.get))
    text = max((QColor(c) for c in counts), key=lambda c: contrast(c, background))
    return background, text


@pytest.mark.parametrize(("first", "then"), [("dark", "light"), ("light", "dark"), ("light", "high-contrast")])
def test_every_button_is_readable_after_a_live_theme_switch(qtbot, window, first: str, then: str) -> None:
    from medhash_app.ui.themes import get_theme

    window.set_theme(first)
    window.set_theme(then)
    qtbot.wait(50)
    theme = get_theme(then)
    light = _luminance(QColor(theme.window)) > 0.5
    named = {b.text(): b for b in window.findChildren(QAbstractButton) if b.text()}
    assert {"Report query", "Grid"} <= set(named)
    for text, button in named.items():
        if not button.isVisibleTo(window) or button.width() < 8:
            continue
        if button.property("role") == "primary":  # a gradient fill: judge its palette
            pal = button.palette()
            assert contrast(pal.color(pal.ColorRole.ButtonText), pal.color(pal.ColorRole.Button)) >= 4.5, text
            continue
        background, ink = _painted(button)
        filled = contrast(background, QColor(theme.highlight)) < 1.2  # a checked toggle or primary button
        assert filled or (_luminance(background) > 0.4) == light, \
            f"{text!r} still painted {background.name()} in the {then} theme"
        needed = 4.5 if button.isEnabled() else 3.0  # WCAG 1.4.3 (disabled controls are exempt; still legible)
        assert contrast(ink, background) >= needed, f"{text!r}: {ink.name()} on {background.name()} in {then}"
