"""The project's own demo data: synthetic chest DICOMs and fundus PNGs with matching reports.

No third-party data: every pixel and word is generated, reproducibly for a seed. The recipe is
documented in resources/demo/README.md.
"""

from __future__ import annotations

from .generator import (
    DEMO_QUERIES,
    DEMO_QUERY_LABELS,
    INFO_NAME,
    MANIFEST_NAME,
    demo_query_images,
    generate_demo_dataset,
)

__all__ = [
    "DEMO_QUERIES", "DEMO_QUERY_LABELS", "INFO_NAME", "MANIFEST_NAME", "demo_query_images",
    "generate_demo_dataset",
]
