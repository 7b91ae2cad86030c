"""The library: a folder with `library.sqlite` (WAL) and the stored images, opened safely."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlite_utils import Database

from medhash_app.core.errors import LibraryError
from medhash_app.core.library import schema
from medhash_app.core.library.base import library_error
from medhash_app.core.library.cases import CaseStore
from medhash_app.core.library.codes import CodeStore
from medhash_app.core.library.files import DB_NAME, SUBFOLDERS
from medhash_app.core.library.models import ModelStore
from medhash_app.core.pseudonym import KEY_ENV, Pseudonymizer, key_file, load_key

_NOT_A_LIBRARY = "not a MedHash library (no readable library.sqlite with MedHash tables in it)"


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK)


def _connect(db_path: Path, read_only: bool) -> Database:
    # isolation_level=None: no implicit transactions; every write is an explicit BEGIN/COMMIT.
    # check_same_thread=False: a UI may open the library on one thread and ingest on a worker;
    # writes are serialised by the library's lock.
    target = f"{db_path.resolve().as_uri()}?mode=ro" if read_only else str(db_path)
    conn = sqlite3.connect(target, uri=read_only, timeout=30, isolation_level=None,
                           check_same_thread=False)
    return Database(conn)


def _check_folder(folder: Path, create: bool, read_only: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise LibraryError(folder, "this is a file; a library is a folder")
    if not folder.exists():
        if not create:
            raise LibraryError(folder, "no library here (the folder does not exist); create one first")
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise LibraryError(folder, f"cannot create the library folder ({exc.strerror})") from exc
    db_path = folder / DB_NAME
    if not db_path.exists() and not create:
        raise LibraryError(folder, _NOT_A_LIBRARY)
    if not read_only and not (_writable(folder) and (not db_path.exists() or _writable(db_path))):
        raise LibraryError(folder, "the library folder is read-only; MedHash needs to write there "
                           "(open it read-only to browse, or copy it to a writable place)")


class Library(CaseStore, ModelStore, CodeStore):
    """Source of truth for cases, models and codes. Use as a context manager:

    >>> with Library.open(folder, create=True) as lib:  # doctest: +SKIP
    ...     lib.add_cases(rows)
    """

    @classmethod
    def open(cls, folder: str | Path, create: bool = False, *, read_only: bool = False) -> Library:
        """Open (or with `create`, make) the library in `folder`. Raises LibraryError when the
        folder is missing, is not a library, cannot be written, or was made by a newer MedHash."""
        folder = Path(folder)
        if create and read_only:
            raise ValueError("create and read_only exclude each other")
        _check_folder(folder, create, read_only)
        try:
            db = _connect(folder / DB_NAME, read_only)
        except sqlite3.Error as exc:
            raise library_error(folder, exc) from exc
        library = cls(folder, db, read_only)
        try:
            library._prepare(create)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise LibraryError(folder, _NOT_A_LIBRARY) from exc
        except BaseException:
            db.close()
            raise
        return library

    def _prepare(self, create: bool) -> None:
        self.db.execute("PRAGMA foreign_keys = ON")
        version = self._stored_version()
        fresh = version is None and create and not self.db.table_names()
        if not fresh:  # check before changing anything, so a foreign file is left as it was
            self._check_version(version)
        if self.read_only:
            self.db.execute("PRAGMA query_only = ON")
            return
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA secure_delete = ON")  # replaced values are overwritten, not left in free pages
        stored = self._stored_version()
        with self.transaction() as db:
            if fresh:
                schema.create_schema(db)
            else:
                schema.migrate(db, stored or 0, lambda: self.pseudonyms)
        if not fresh and (stored or 0) < schema.SCHEMA_VERSION:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # old page images leave the WAL too
        for sub in SUBFOLDERS:
            (self.folder / sub).mkdir(exist_ok=True)

    def _stored_version(self) -> int | None:
        if "meta" not in self.db.table_names():
            return None
        value = schema.get_meta(self.db, "schema_version")
        return int(value) if value and value.isdigit() else None

    def _check_version(self, version: int | None) -> None:
        if version is None:
            raise LibraryError(self.folder, _NOT_A_LIBRARY)
        if version > schema.SCHEMA_VERSION:
            raise LibraryError(self.folder, f"made by a newer MedHash (library schema {version}, this "
                               f"version reads up to {schema.SCHEMA_VERSION}); update MedHash to open it")

    @property
    def schema_version(self) -> int:
        return int(schema.get_meta(self.db, "schema_version") or 0)

    @property
    def salt(self) -> bytes:
        """Per-library random salt for patient keys (so keys cannot be joined across libraries)."""
        return bytes.fromhex(schema.get_meta(self.db, "salt") or "")

    @property
    def pseudonyms(self) -> Pseudonymizer:
        """Keyed pseudonyms for this library under this workstation's key file (core/pseudonym.py;
        the key file is made on first use and never stored in the library)."""
        if getattr(self, "_pseudonyms", None) is None:
            self._pseudonyms = Pseudonymizer(load_key(), self.salt)
        return self._pseudonyms

    def claim_key(self) -> str | None:
        """Record the key's fingerprint on the first write that uses it; afterwards, a sentence
        saying so when this workstation's key is not the one the library was built with (None when
        it is)."""
        mine = self.pseudonyms.fingerprint()
        stored = schema.get_meta(self.db, "key_fingerprint")
        if stored is None:
            with self.transaction() as db:
                schema.set_meta(db, "key_fingerprint", mine)
            return None
        if stored == mine:
            return None
        return (f"this library's patient keys and UID pseudonyms were made with another pseudonym key "
                f"(fingerprint {stored}; this workstation's key file {key_file()} has {mine}). The cases "
                f"stay searchable, but cases imported now are not grouped by patient with earlier ones and "
                f"captions do not match earlier cases by SOP Instance UID. Copy the key file of the "
                f"workstation that built the library here, or set {KEY_ENV} to it, then import again")

    @property
    def inputs_dir(self) -> Path:
        return self.folder / "inputs"

    @property
    def thumbs_dir(self) -> Path:
        return self.folder / "thumbs"

    @property
    def models_dir(self) -> Path:
        return self.folder / "models"

    def path_of(self, rel_path: str) -> Path:
        """Absolute path of a stored file (`input_path` / `thumb_path` of a case)."""
        return self.folder / rel_path
