"""`medhash --version`: the installed version and, in a frozen bundle, what the bundle is (its manifest)."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import typer


def version_text() -> str:
    """`medhash 0.1.0`, plus the flavour, build time and GPL-codec choice when running from a bundle."""
    try:
        text = f"medhash {metadata.version('medhash')}"
    except metadata.PackageNotFoundError:
        text = "medhash (version unknown: no package metadata)"
    if getattr(sys, "frozen", False):
        text += " " + _bundle_note(Path(sys.executable).resolve().parent / "MANIFEST.json")
    return text


def _bundle_note(manifest: Path) -> str:
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        codec = "included" if data["gpl_codec"] else "left out"
        return f"(frozen {data['flavor']} bundle built {data['built']}; GPL codec {codec}; see {manifest.name})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"(frozen bundle; {manifest.name} missing or unreadable)"


def version_callback(value: bool) -> None:
    """Eager `--version`: print and exit before any command or the window starts."""
    if value:
        typer.echo(version_text())
        raise typer.Exit()
