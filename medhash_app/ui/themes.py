"""Light, dark and high-contrast themes: a Fusion QPalette plus a few widget roles.

Reading rooms are dim, so dark is the default; high contrast serves low-vision users and projectors.
Colours live here only; widgets use palette roles (and `set_role` below) instead of hex.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QWidget

THEMES = ("dark", "light", "high-contrast")
DEFAULT_THEME = "dark"


@dataclass(frozen=True)
class Theme:
    name: str
    window: str
    base: str
    alt_base: str
    text: str
    muted: str
    button: str
    highlight: str
    highlight_text: str
    accent: str
    border: str
    finding_bg: str  # background of a highlighted shared finding in a report excerpt
    finding_fg: str
    viewer_bg: str
    danger: str


_THEMES = {
    "dark": Theme("dark", window="#1e2126", base="#15171b", alt_base="#1b1e23", text="#e6e8eb",
                  muted="#9aa3ad", button="#2a2e35", highlight="#2f6fb3", highlight_text="#ffffff",
                  accent="#4ea1f3", border="#343a42", finding_bg="#7a5b00", finding_fg="#ffffff",
                  viewer_bg="#000000", danger="#ff6b6b"),
    "light": Theme("light", window="#f3f4f6", base="#ffffff", alt_base="#f7f8fa", text="#1d2125",
                   muted="#5f6b76", button="#e8eaee", highlight="#2a64b0", highlight_text="#ffffff",
                   accent="#1f5fae", border="#c9ced6", finding_bg="#ffe08a", finding_fg="#1d2125",
                   viewer_bg="#101214", danger="#b3261e"),
    "high-contrast": Theme("high-contrast", window="#000000", base="#000000", alt_base="#0d0d0d",
                           text="#ffffff", muted="#ffff00", button="#000000", highlight="#ffff00",
                           highlight_text="#000000", accent="#00ffff", border="#ffffff",
                           finding_bg="#ffff00", finding_fg="#000000", viewer_bg="#000000",
                           danger="#ff4040"),
}


HIGH_CONTRAST_SHEET = (
    "QLineEdit, QPlainTextEdit, QTextEdit, QTextBrowser, QComboBox, QSpinBox, QDoubleSpinBox, "
    "QAbstractItemView { border: 1px solid #ffffff; }"
    "QLineEdit:focus, QPlainTextEdit:focus, QComboBox:focus, QAbstractItemView:focus "
    "{ border: 2px solid #00ffff; }"
    "QPushButton { border: 1px solid #ffffff; padding: 3px 12px; }"
    "QPushButton:disabled { border-color: #808080; color: #808080; }"
    "QPushButton[role=\"primary\"] { background-color: #ffff00; color: #000000; font-weight: bold; }"
    "QPushButton[role=\"primary\"]:disabled { background-color: #000000; color: #808080; }"
)


def get_theme(name: str) -> Theme:
    return _THEMES.get(name, _THEMES[DEFAULT_THEME])


def make_palette(theme: Theme) -> QPalette:
    pal = QPalette()
    c = QColor
    roles = {
        QPalette.ColorRole.Window: theme.window, QPalette.ColorRole.WindowText: theme.text,
        QPalette.ColorRole.Base: theme.base, QPalette.ColorRole.AlternateBase: theme.alt_base,
        QPalette.ColorRole.Text: theme.text, QPalette.ColorRole.Button: theme.button,
        QPalette.ColorRole.ButtonText: theme.text, QPalette.ColorRole.Highlight: theme.highlight,
        QPalette.ColorRole.HighlightedText: theme.highlight_text,
        QPalette.ColorRole.ToolTipBase: theme.base, QPalette.ColorRole.ToolTipText: theme.text,
        QPalette.ColorRole.PlaceholderText: theme.muted, QPalette.ColorRole.Link: theme.accent,
        QPalette.ColorRole.BrightText: theme.danger, QPalette.ColorRole.Mid: theme.border,
        QPalette.ColorRole.Dark: theme.border, QPalette.ColorRole.Light: theme.alt_base,
    }
    for role, colour in roles.items():
        pal.setColor(role, c(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        pal.setColor(QPalette.ColorGroup.Disabled, role, c(theme.muted))
    return pal


def style_role(widget: QWidget, theme: Theme) -> None:
    """Give a widget its role's look (heading, muted, error, primary) with palette and font only.

    An application-wide stylesheet would switch every widget to the slow stylesheet style (it
    cost ~1.5 s per window here), so roles are painted through the palette instead.
    """
    role = widget.property("role")
    pal = widget.palette()
    if role == "heading":
        font = widget.font()
        font.setBold(True)
        font.setPointSizeF(QApplication.font().pointSizeF() * 1.1)
        widget.setFont(font)
    elif role in ("muted", "error"):
        colour = QColor(theme.muted if role == "muted" else theme.danger)
        pal.setColor(QPalette.ColorRole.WindowText, colour)
        pal.setColor(QPalette.ColorRole.Text, colour)
        widget.setPalette(pal)
    elif role == "primary":
        pal.setColor(QPalette.ColorRole.Button, QColor(theme.highlight))
        pal.setColor(QPalette.ColorRole.ButtonText, QColor(theme.highlight_text))
        pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Button, QColor(theme.button))
        pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor(theme.muted))
        widget.setPalette(pal)
        font = widget.font()
        font.setBold(True)
        widget.setFont(font)


TOGGLE_STYLE = ("QToolButton { padding: 3px 10px; border: 1px solid palette(mid); border-radius: 3px; }"
                "QToolButton:checked { background-color: palette(highlight); color: palette(highlighted-text); "
                "border-color: palette(highlight); }")


def style_toggle(button: QWidget) -> None:
    """Segmented-control look for checkable tool buttons (list/grid, image/report): the chosen
    one is filled with the highlight colour. A stylesheet on these few buttons only is cheap."""
    button.setStyleSheet(TOGGLE_STYLE)


def set_role(widget: QWidget, role: str) -> None:
    """Mark `widget` as a heading/muted/error/primary element and style it for the current theme."""
    widget.setProperty("role", role)
    style_role(widget, current_theme())


def apply_theme(app: QApplication, name: str) -> Theme:
    """Switch the whole application; returns the theme actually applied (unknown -> default)."""
    theme = get_theme(name)
    app.setStyle("Fusion")
    app.setProperty("medhash_theme", theme.name)
    app.setPalette(make_palette(theme))
    # Fusion draws input frames a shade darker than the window: invisible on black. High contrast
    # outlines them explicitly (a stylesheet costs ~1 s per window, so only this theme pays it).
    app.setStyleSheet(HIGH_CONTRAST_SHEET if theme.name == "high-contrast" else "")
    for widget in app.allWidgets():
        sheet = widget.styleSheet()
        if sheet:  # a widget stylesheet froze the old palette at polish time: polish it again
            widget.setStyleSheet("")
            widget.setPalette(QPalette())
            widget.setStyleSheet(sheet)
        if widget.property("role"):
            widget.setPalette(QPalette())  # drop the old theme's role colours, then re-apply
            style_role(widget, theme)
    return theme


def current_theme() -> Theme:
    app = QApplication.instance()
    name = app.property("medhash_theme") if app is not None else None
    return get_theme(name or DEFAULT_THEME)
