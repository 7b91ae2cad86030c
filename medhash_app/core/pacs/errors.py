"""The typed error for network problems a user can meet (unreachable PACS, port in use, a server
that stops answering): item = the address, reason = what happened and what to do, one line."""

from __future__ import annotations

from medhash_app.core.errors import MedHashError


class PacsError(MedHashError):
    """A PACS or DICOM network problem (the item is the server URL or the listening address)."""
