"""Where `medhash demo` builds its library (light: no torch, so the window can ask at start-up)."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_data_dir

from medhash_app.core.library.files import DB_NAME


def default_demo_library() -> Path:
    """The per-user data folder's demo-library (hidden on Linux: ~/.local/share/MedHash/demo-library)."""
    return Path(user_data_dir("MedHash", appauthor=False)) / "demo-library"


def demo_library_ready(folder: Path | None = None) -> bool:
    """True once `medhash demo` (or the window's Build demo library) has made the library there."""
    return ((folder or default_demo_library()) / DB_NAME).is_file()
