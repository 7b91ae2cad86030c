"""Where a case's stored files live inside the library folder, and how they are written safely.

Files are written to a temporary name and moved into place with os.replace, so a reader (or a
crash) never sees half a PNG. Ingest writes them before committing the rows that point at them.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DB_NAME = "library.sqlite"
SUBFOLDERS = ("inputs", "thumbs", "indexes", "models")
_TEMP_SUFFIX = ".tmp"


def _stem(case_id: str) -> str:
    # ":" (frame suffix) is not allowed in Windows file names; shard by the first two hex digits
    # so no folder holds more than ~1/256 of the library.
    return f"{case_id[:2]}/{case_id.replace(':', '_')}"


def input_rel_path(case_id: str) -> str:
    """Model-input PNG of a case, relative to the library folder (POSIX separators)."""
    return f"inputs/{_stem(case_id)}.png"


def thumb_rel_path(case_id: str) -> str:
    """Thumbnail JPEG of a case, relative to the library folder (POSIX separators)."""
    return f"thumbs/{_stem(case_id)}.jpg"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that the file is either absent, the old one, or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_savez(path: Path, **arrays: Any) -> None:
    """np.savez to `path` atomically and durably (temp file, fsync, os.replace): a reader or a crash
    sees the old file or the whole new one. OSError when the folder cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)


def file_ok(folder: Path, rel_path: str | None) -> bool:
    """True when a stored file exists and is not empty."""
    if not rel_path:
        return False
    try:
        return (folder / rel_path).stat().st_size > 0
    except OSError:
        return False


def sweep_temp_files(folder: Path, older_than_s: float = 600.0) -> int:
    """Delete temp files left by a killed ingest (old enough not to belong to a running one)."""
    cutoff = time.time() - older_than_s
    removed = 0
    for sub in ("inputs", "thumbs"):
        for tmp in (folder / sub).glob(f"*/.*{_TEMP_SUFFIX}"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except OSError:
                continue
    return removed
