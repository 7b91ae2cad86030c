"""PACS transfer throughput into a library, against a real Orthanc on 127.0.0.1 (Debian packages
orthanc + orthanc-dicomweb): images/s and MB/s from "first byte asked" to "last case committed".

Workloads (each into a fresh library, repeated; median and p90 reported):
- C-STORE: Orthanc sends every real DICOM it keeps from ../shared/data/dicom (33 instances; files
  sharing a SOP Instance UID are kept once) to `medhash listen`'s core (StorageListener, decode
  workers as given), one REST store request per instance, as a PACS "send" does;
- WADO-RS: `pull_studies` of every study over DICOMweb (one image at a time);
- C-GET: `pull_studies` of every study over DIMSE (dicom://ORTHANC@127.0.0.1:port).
The corrupt instances are refused and counted; every number includes decoding and storing.

    python benchmarks/bench_pacs.py                   # 3 repeats, writes results/pacs.md
    python benchmarks/bench_pacs.py --repeats 1 --out /tmp/pacs.md

Needs ../shared/data and the Orthanc binary; exits 0 with a message when either is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchkit import REPO, RESULTS, LoadMonitor, MarkdownReport, Stats, command_line, require_shared, tmp_dir

sys.path.insert(0, str(REPO))

from medhash_app.core.library import Library
from medhash_app.core.pacs.listener import ListenerConfig, StorageListener
from medhash_app.core.pacs.remote import find_studies, pull_studies
from tests.pacs_orthanc import Orthanc, free_port, orthanc_problem, upload_all


def run_store(orthanc: Orthanc, kept: dict[str, str], library: Path, workers: int,
              aet: str) -> tuple[float, int, list[str]]:
    config = ListenerConfig(library=library, aet=aet, port=orthanc.modalities["bench"]["port"],
                            accept_aets=("ORTHANC",), workers=workers)
    refused: list[str] = []
    with StorageListener(config, lambda e: refused.append(e.received.reason) if not e.received.ok else None) \
            as listener:
        listener._store.decoder._pool_starts()  # workers up before the clock starts, as in a running listener
        start = time.perf_counter()
        for instance in kept:
            orthanc.store_to("bench", instance)
        seconds = time.perf_counter() - start
        return seconds, listener.status.added, refused


def run_pull(address: str, library: Path, workers: int) -> tuple[float, int, list[str]]:
    studies = [s.study_uid for s in find_studies(address, calling_aet="MEDHASH")]
    with Library.open(library, create=True) as lib:
        start = time.perf_counter()
        report = pull_studies(address, studies, lib, workers=workers, calling_aet="MEDHASH")
        return time.perf_counter() - start, report.added, [reason for _, reason in report.failed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="decode worker processes (listener and pulls)")
    parser.add_argument("--out", type=Path, default=RESULTS / "pacs.md")
    args = parser.parse_args()
    dicom_dir = require_shared("dicom")
    if orthanc_problem():
        print(f"SKIPPED: {orthanc_problem()}")
        raise SystemExit(0)
    rows, reasons = [], {}
    with tmp_dir("medhash-bench-pacs-") as scratch, LoadMonitor() as load:
        port = free_port()
        orthanc = Orthanc(scratch / "orthanc", {"bench": {"aet": "MEDHASH", "port": port}}).start()
        try:
            kept = upload_all(orthanc, dicom_dir)
            megabytes = sum((dicom_dir / rel).stat().st_size for rel in kept.values()) / 2**20
            workloads = {
                "C-STORE to the listener": lambda lib: run_store(orthanc, kept, lib, args.workers, "MEDHASH"),
                "WADO-RS pull": lambda lib: run_pull(orthanc.dicomweb_url, lib, args.workers),
                "C-GET pull": lambda lib: run_pull(f"dicom://ORTHANC@127.0.0.1:{orthanc.dicom_port}", lib,
                                                   args.workers),
            }
            for name, work in workloads.items():
                runs = [work(scratch / f"{name[:5]}-{i}") for i in range(args.repeats)]
                stats = Stats.of([r[0] for r in runs])
                reasons[name] = runs[0][2]
                rows.append([name, len(kept), f"{megabytes:.1f}", f"{runs[0][1]} / {len(runs[0][2])}", args.repeats,
                             f"{stats.median:.1f}", f"{stats.p90:.1f}", f"{len(kept) / stats.median:.2f}",
                             f"{megabytes / stats.median:.2f}"])
                print(rows[-1], flush=True)
        finally:
            orthanc.stop()
    report = MarkdownReport("PACS transfer into a library (real Orthanc on 127.0.0.1)", command_line())
    report.paragraph(f"{len(kept)} real DICOM instances held by Orthanc ({megabytes:.1f} MB as files; every "
                     f"transfer syntax of ../shared/data/dicom, 2 of them corrupt), {args.workers} decode worker "
                     "process(es), each run into a fresh library. Time from the first request to the last "
                     "answer, so it includes decoding, the model PNG and thumbnail, and the SQLite commit per "
                     "image (each instance is acknowledged only once it is a case).")
    report.table(["workload", "images", "MB", "added / refused", "runs", "median s", "p90 s", "images/s", "MB/s"],
                 rows)
    for name, why in reasons.items():
        report.paragraph(f"Refused in the first {name} run: " + "; ".join(sorted(why)) + ".")
    report.emit(args.out, load)


if __name__ == "__main__":
    main()
