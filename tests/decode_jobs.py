"""Decode-job stand-ins for the decoder's time-limit tests: importable by spawned workers."""

from __future__ import annotations

import time

from medhash_app.core.ingest.decode import DecodeJob, DecodeResult


def hang_on_name(job: DecodeJob) -> DecodeResult:
    """A decoder that loops forever on files named 'hang*' (as a pathological file makes some do)."""
    if job.path.rsplit("/", 1)[-1].startswith("hang"):
        time.sleep(3600)
    return DecodeResult(job.case_id, facts={"decoded": job.path})
