"""Typed access to the app's QSettings (organization "MedHash"), so keys live in one place."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from medhash_app.ui.themes import DEFAULT_THEME, THEMES

ORGANIZATION = "MedHash"
APPLICATION = "MedHash"


class AppSettings:
    """What the app remembers between runs: geometry, theme, last library and search choices."""

    def __init__(self, settings: QSettings | None = None) -> None:
        self.qs = settings if settings is not None else QSettings(ORGANIZATION, APPLICATION)

    @classmethod
    def from_ini(cls, path: str | Path) -> AppSettings:
        """Settings kept in one INI file (tests and the screenshot script: never the user's)."""
        return cls(QSettings(str(path), QSettings.Format.IniFormat))

    # -- window -----------------------------------------------------------------------------
    def geometry(self) -> QByteArray | None:
        value = self.qs.value("window/geometry")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def set_geometry(self, value: QByteArray) -> None:
        self.qs.setValue("window/geometry", value)

    def window_state(self) -> QByteArray | None:
        value = self.qs.value("window/state")
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def set_window_state(self, value: QByteArray) -> None:
        self.qs.setValue("window/state", value)

    # -- appearance --------------------------------------------------------------------------
    def theme(self) -> str:
        value = str(self.qs.value("ui/theme", DEFAULT_THEME))
        return value if value in THEMES else DEFAULT_THEME

    def set_theme(self, name: str) -> None:
        self.qs.setValue("ui/theme", name)

    def results_view(self) -> str:
        value = str(self.qs.value("search/results_view", "list"))
        return value if value in ("list", "grid") else "list"

    def set_results_view(self, mode: str) -> None:
        self.qs.setValue("search/results_view", mode)

    # -- library and search ------------------------------------------------------------------
    def last_library(self) -> Path | None:
        value = self.qs.value("library/last", "")
        return Path(str(value)) if value else None

    def set_last_library(self, path: Path | None) -> None:
        self.qs.setValue("library/last", str(path) if path else "")

    def search_target(self, query_kind: str = "image") -> str:
        """What a query of `query_kind` ("image" or "text") searches: the other modality unless the user
        chose otherwise for that kind (cross-modal search is the product: a typed report finds images)."""
        default = "images" if query_kind == "text" else "reports"
        # earlier versions kept one key for both kinds (and saved "reports" for typed reports too)
        fallback = self.qs.value("search/target", default) if query_kind == "image" else default
        value = str(self.qs.value(f"search/target_{query_kind}", fallback))
        return value if value in ("reports", "images", "both") else default

    def set_search_target(self, target: str, query_kind: str = "image") -> None:
        self.qs.setValue(f"search/target_{query_kind}", target)

    def search_bits(self) -> int | None:
        value = self.qs.value("search/bits", 0)
        try:
            bits = int(value)
        except (TypeError, ValueError):
            return None
        return bits or None

    def set_search_bits(self, bits: int | None) -> None:
        self.qs.setValue("search/bits", int(bits or 0))

    def page_size(self) -> int:
        try:
            return max(10, min(100_000, int(self.qs.value("search/k", 200))))
        except (TypeError, ValueError):
            return 200

    def set_page_size(self, k: int) -> None:
        self.qs.setValue("search/k", int(k))

    def last_archive(self) -> str:
        """The archive opened last (a service name or URL: never holds a password, core refuses one)."""
        return str(self.qs.value("archive/target", ""))

    def archive_mirror(self) -> bool:
        return str(self.qs.value("archive/mirror", "true")).lower() == "true"

    def set_last_archive(self, target: str, mirror: bool) -> None:
        self.qs.setValue("archive/target", target)
        self.qs.setValue("archive/mirror", "true" if mirror else "false")

    def last_dir(self, kind: str) -> str:
        return str(self.qs.value(f"dirs/{kind}", str(Path.home())))

    def set_last_dir(self, kind: str, path: Path) -> None:
        self.qs.setValue(f"dirs/{kind}", str(path))

    def trainer_value(self, key: str, default: object) -> object:
        return self.qs.value(f"trainer/{key}", default)

    def set_trainer_value(self, key: str, value: object) -> None:
        self.qs.setValue(f"trainer/{key}", value)

    def sync(self) -> None:
        self.qs.sync()
