"""Binary (Hamming) indexes over the stored codes: FAISS search + a verified on-disk cache.

Thread settings: FAISS runs on OpenMP. An OpenMP runtime that spins while idle steals the CPU from
a busy neighbour (and the neighbour from it), which makes tail latency explode; PASSIVE makes idle
threads sleep. The variable is read once, when the runtime loads, so it is set here before the
first ``import faiss`` (FAISS bundles its own libgomp). The app should also set it first thing at
start-up (``medhash_app/__init__.py``) so that every OpenMP runtime (torch's too) gets it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from medhash_app.core.index.binary_index import (  # after the OpenMP setting
    EXACT_KINDS,
    KINDS,
    BinaryIndex,
    SearchHits,
    gpu_available,
)
from medhash_app.core.index.cache import BinaryIndexCache, content_checksum

__all__ = ["EXACT_KINDS", "KINDS", "BinaryIndex", "BinaryIndexCache", "SearchHits", "content_checksum",
           "gpu_available"]
