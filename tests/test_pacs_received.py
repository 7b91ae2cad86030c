"""core/pacs/received.py without a network: an instance's bytes become a case through the ingest
pipeline (or are refused, leaving nothing), a second copy is a duplicate, and what a killed receiver
left in received/ (temp files, files no case points at) is swept once old enough."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from medhash_app.core.library import Library
from medhash_app.core.pacs.received import ReceivedStore

pytestmark = pytest.mark.shared_data

GOOD = "transfer_syntax_misc/CT_small.dcm"
CORRUPT = "xray_other/CR_hip_MONO2_Fuji_RG2_JPEGExt12bit_CORRUPT.dcm"


def _age(path: Path, seconds: float = 3600) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_store_refuse_duplicate_and_sweep(tmp_path: Path, dicom_dir: Path) -> None:
    with Library.open(tmp_path / "lib", create=True) as lib:
        store = ReceivedStore(lib)
        added = store.store((dicom_dir / GOOD).read_bytes(), {"via": "test"})
        assert added.status == "added" and lib.get_case(added.case_id)["extra"]["pacs"] == {"via": "test"}
        kept = Path(lib.get_case(added.case_id)["source_path"])
        assert kept.parent.parent == store.folder and kept.read_bytes() == (dicom_dir / GOOD).read_bytes()
        assert store.store(kept.read_bytes(), {"via": "test"}).status == "duplicate" and kept.exists()
        refused = store.store((dicom_dir / CORRUPT).read_bytes(), {"via": "test"})
        assert refused.status == "failed" and "damaged" in (refused.reason or "")
        assert lib.count_cases() == 1 and sorted(store.folder.rglob("*.dcm")) == [kept]

        orphan = store.folder / "ab" / ("ab" + "0" * 30 + ".dcm")  # written, then the receiver died
        orphan.parent.mkdir()
        orphan.write_bytes(b"DICM")
        temp = store.folder / "ab" / ".half-written.1.ff.tmp"
        temp.write_bytes(b"half")
        fresh = store.folder / "ab" / ".in-flight.2.ee.tmp"
        fresh.write_bytes(b"now")
        for path in (orphan, temp, kept):
            _age(path)
        ReceivedStore(lib)  # a listener or pull starting later sweeps
        assert not orphan.exists() and not temp.exists()
        assert kept.exists() and fresh.exists()  # a case's original, and another process's file in flight
