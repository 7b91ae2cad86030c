"""Error types shared by the trainer and the app.

The base class lives here because imports flow ui -> core -> trainer: the app's own errors
(medhash_app.core.errors) subclass it, so one `except MedHashError` catches all of them.
"""

from __future__ import annotations

from pathlib import Path


class MedHashError(Exception):
    """Base class: `item` names the file/folder/model, `reason` says what is wrong in plain words."""

    def __init__(self, item: str | Path | None, reason: str) -> None:
        self.item = str(item) if item is not None else None
        self.reason = reason
        super().__init__(f"{self.item}: {reason}" if self.item else reason)


class CheckpointError(MedHashError):
    """A checkpoint folder is missing, truncated, inconsistent, or for other code lengths."""


class DataError(MedHashError):
    """Training or evaluation data is unusable (missing labels, empty split, bad manifest)."""


class TrainingError(MedHashError):
    """Training cannot go on (NaN/Inf loss, out of memory); the message says what to change."""
