"""Connection handling shared by the library's parts: transactions, reads, error translation."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlite_utils import Database

from medhash_app.core.errors import LibraryError

# Stay well below SQLite's bound-variable limit when expanding "IN (?, ?, ...)".
CHUNK = 500


def library_error(folder: Path, exc: sqlite3.Error) -> LibraryError:
    """Translate an SQLite failure into words a user can act on."""
    text = str(exc).lower()
    if "full" in text:
        reason = ("the disk is full (or the library hit its size limit); nothing from this batch "
                  "was saved. Free some space and run the same command again")
    elif "readonly" in text or "read-only" in text:
        reason = "the library is read-only; MedHash needs write access to change it"
    elif "locked" in text or "busy" in text:
        reason = "another program is writing to this library; try again when it has finished"
    elif "malformed" in text or "not a database" in text:
        reason = "library.sqlite is damaged; restore it from a backup or make a new library"
    elif isinstance(exc, sqlite3.IntegrityError):
        reason = f"the change does not fit the library's contents ({exc})"
    else:
        reason = f"database error: {exc}"
    return LibraryError(folder, reason)


class LibraryBase:
    """Holds the sqlite-utils Database; every write goes through `transaction()`."""

    def __init__(self, folder: Path, db: Database, read_only: bool) -> None:
        self.folder = folder
        self.db = db
        self.read_only = read_only
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One all-or-nothing write; nested calls become savepoints. SQLite errors (disk full,
        read-only, locked) come out as LibraryError after the rollback."""
        with self._lock:
            try:
                with self.db.atomic() as db:
                    yield db
            except sqlite3.Error as exc:
                raise library_error(self.folder, exc) from exc

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            return list(self.db.query(sql, list(params)))
        except sqlite3.Error as exc:
            raise library_error(self.folder, exc) from exc

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            row = self.db.execute(sql, list(params)).fetchone()
        except sqlite3.Error as exc:
            raise library_error(self.folder, exc) from exc
        return row[0] if row else None

    def data_version(self) -> int:
        """SQLite's `PRAGMA data_version` of this connection: it changes whenever ANOTHER connection
        (another process: `medhash encode`, the trainer) commits to the library, so readers that keep
        codes in memory know when to read them again."""
        return int(self._scalar("PRAGMA data_version"))

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
