"""Checkpoint -> binary codes for queries and for the whole library."""

from medhash_app.core.encoder.library_encoding import encode_library
from medhash_app.core.encoder.service import EncodedBatch, EncoderService, clean_report, resolve_device

__all__ = ["EncodedBatch", "EncoderService", "clean_report", "encode_library", "resolve_device"]
