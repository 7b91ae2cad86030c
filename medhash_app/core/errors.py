"""Typed errors for problems a user can cause.

Each carries the item it is about (a file, a folder, a model id) and a plain-words reason, so the
CLI and the UI can show "<item>: <reason>" without a traceback. Messages never contain PHI.
"""

from __future__ import annotations

from trainer.errors import CheckpointError, DataError, MedHashError, TrainingError

__all__ = [
    "CheckpointError",
    "CorruptFileError",
    "DataError",
    "DatasetLayoutError",
    "ImageTooLargeError",
    "IndexCacheError",
    "InvalidReportError",
    "JobCancelled",
    "LibraryError",
    "MedHashError",
    "ModelError",
    "TrainingError",
    "UnsupportedFileError",
]


class UnsupportedFileError(MedHashError):
    """The file is not an image format MedHash reads (or a codec is missing)."""


class CorruptFileError(MedHashError):
    """The file claims a supported format but cannot be decoded (truncated, bad markers, ...)."""


class ImageTooLargeError(MedHashError):
    """The image exceeds the pixel limit that keeps memory bounded."""


class InvalidReportError(MedHashError):
    """A report text is empty, whitespace only, or otherwise unusable."""


class DatasetLayoutError(MedHashError):
    """A folder or manifest does not have the expected layout or columns."""


class LibraryError(MedHashError):
    """The library folder cannot be opened or written (read-only, full disk, wrong schema)."""


class ModelError(CheckpointError):
    """A checkpoint is missing, truncated, or does not fit the request (e.g. other bits)."""


class JobCancelled(MedHashError):
    """The user stopped a long job; what was done so far is kept and a re-run resumes it."""


class IndexCacheError(MedHashError):
    """A FAISS cache could not be built or verified."""
