"""The library store: SQLite (WAL) via sqlite-utils, the source of truth for cases, models, codes."""

from medhash_app.core.library.files import DB_NAME, atomic_write, input_rel_path, thumb_rel_path
from medhash_app.core.library.filters import CaseFilter, fts_query
from medhash_app.core.library.library import Library
from medhash_app.core.library.schema import SCHEMA_VERSION

__all__ = [
           "DB_NAME",
           "SCHEMA_VERSION",
           "CaseFilter",
           "Library",
           "atomic_write",
           "fts_query",
           "input_rel_path",
           "thumb_rel_path",
]
