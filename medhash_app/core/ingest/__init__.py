"""Ingest: files, folders, DICOMDIRs, manifests and dataset layouts (IU X-ray/Open-i,
MIMIC-CXR-JPG, ODIR-5K) into the library, one transaction per batch."""

from medhash_app.core.ingest.items import IngestItem, IngestProgress, IngestReport
from medhash_app.core.ingest.pipeline import collect_items, content_id, ingest
from medhash_app.core.ingest.sources import detect_source, iter_items

__all__ = ["IngestItem", "IngestProgress", "IngestReport", "collect_items", "content_id", "detect_source",
           "ingest", "iter_items"]
