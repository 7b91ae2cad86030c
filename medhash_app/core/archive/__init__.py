"""A shared case archive on PostgreSQL + pgvector (docs/archive.md): schema, publishing from a local
library, and exact (or HNSW) Hamming search ranked like the local FAISS index. No Qt here."""

from medhash_app.core.archive.connection import ArchiveError, connect, describe_target
from medhash_app.core.archive.publish import PublishReport, publish_library
from medhash_app.core.archive.schema import init_archive
from medhash_app.core.archive.search import ArchiveHit, ArchiveSearch

__all__ = ["ArchiveError", "ArchiveHit", "ArchiveSearch", "PublishReport", "connect", "describe_target",
           "init_archive", "publish_library"]
