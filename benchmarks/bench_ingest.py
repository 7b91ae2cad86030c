"""Ingest throughput on real files: files/s and MB/s into a fresh library, and the re-ingest time.

Workloads (each repeated in a new library, median and p90 reported):
- the 43 real DICOM files of ../shared/data/dicom (every transfer syntax we ship decoders for; the
  files whose manifest says FAIL must fail and count as failures), ingested as a list of files;
- the same files again into the same library (everything already there: hashing + skipping);
- N ODIR-5K fundus photographs through a JSONL manifest (absolute image paths, written to a
  scratch folder), and their re-ingest.

Each timing is one `MedHashSession(lib, create=True).ingest([...])` call, so it includes starting
the decode process pool (default workers: min(nproc, 4)) and writing model PNGs and thumbnails.

    python benchmarks/bench_ingest.py                 # full run (~5 min on 2 busy cores)
    python benchmarks/bench_ingest.py --quick         # smoke run (~30 s), writes to /tmp

Needs ../shared/data (or MEDHASH_SHARED_DATA); exits 0 with a message when it is absent.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from benchkit import (
    RESULTS,
    SHARED,
    LoadMonitor,
    MarkdownReport,
    Stats,
    command_line,
    odir_manifest,
    require_shared,
    timed,
    tmp_dir,
)

# medhash_app is imported inside the functions: the decode workers are spawned processes that
# re-import this script, and should pay for the same imports as under `medhash ingest`, no more.


@dataclass
class Workload:
    """What one ingest call is given, and what we expect of it."""

    name: str
    paths: list[Path]  # what is passed to ingest (files or a manifest)
    files: int  # image files behind `paths`
    megabytes: float
    expected_failures: int


@dataclass
class Run:
    """One fresh ingest and the re-ingest of the same input right after it."""

    seconds: float
    reingest_seconds: float
    known_only_seconds: float | None  # re-ingest of the files that were added (no failures to retry)
    known_only_files: int
    known_only_mb: float
    added: int
    skipped: int
    failed: int
    reingest_added: int
    reingest_skipped: int


# ------------------------------------------------------------------------------------ workloads
def dicom_workload(folder: str | None = None) -> Workload:
    """Every file listed in the DICOM manifest (or those under `folder`); FAIL rows must fail."""
    root = require_shared("dicom")
    with open(root / "manifest.tsv", encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t") if folder is None or r["file"].startswith(folder)]
    paths = [root / r["file"] for r in rows]
    fails = sum(r["decode_default"].startswith("FAIL") for r in rows)
    size = sum(p.stat().st_size for p in paths) / 1e6
    where = f" ({folder}/)" if folder else ""
    return Workload(f"{len(paths)} real DICOM files{where}", paths, len(paths), size, fails)


def odir_workload(scratch: Path, count: int) -> Workload:
    manifest, images = odir_manifest(scratch, count)
    size = sum(p.stat().st_size for p in images) / 1e6
    return Workload(f"{len(images)} ODIR-5K photos (JSONL manifest)", [manifest], len(images), size, 0)


# ------------------------------------------------------------------------------------ measurement
def ingest_once(work: Workload, library: Path) -> Run:
    """Ingest into a new library, then ingest the same input again: the files that failed are
    tried again, the rest skipped. When some failed, also re-ingest only the added files."""
    from medhash_app.core.session import MedHashSession

    with MedHashSession(library, create=True, device="cpu") as session:
        start = time.perf_counter()
        first = session.ingest(work.paths, allowed_roots=[SHARED])  # manifests name files in ../shared
        middle = time.perf_counter()
        again = session.ingest(work.paths, allowed_roots=[SHARED])
        end = time.perf_counter()
        failed = {str(p) for p, _ in first.failed}
        known = [p for p in work.paths if str(p) not in failed]
        known_only = (timed(session.ingest, known, allowed_roots=[SHARED])[0]
                      if failed and len(known) < len(work.paths) else None)
    if len(first.failed) != work.expected_failures:
        reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in first.failed)
        raise SystemExit(f"{work.name}: {len(first.failed)} failures, expected {work.expected_failures}: {reasons}")
    if again.added:
        raise SystemExit(f"{work.name}: re-ingest added {again.added} cases, expected none")
    known_mb = sum(Path(p).stat().st_size for p in known) / 1e6
    return Run(middle - start, end - middle, known_only, len(known), known_mb, first.added, first.skipped, len(first.failed),
               again.added, again.skipped)


def measure(work: Workload, repeats: int, scratch: Path) -> list[Run]:
    runs = []
    for i in range(repeats):
        library = scratch / f"lib-{i}"
        runs.append(ingest_once(work, library))
        shutil.rmtree(library, ignore_errors=True)
        print(f"{work.name}: run {i + 1}/{repeats}: {runs[-1].seconds:.2f} s, "
              f"re-ingest {runs[-1].reingest_seconds:.2f} s", flush=True)
    return runs


# ------------------------------------------------------------------------------------ report
def table_rows(work: Workload, runs: list[Run]) -> list[list[object]]:
    fresh, again = Stats.of([r.seconds for r in runs]), Stats.of([r.reingest_seconds for r in runs])
    last = runs[-1]
    rows = [
        [f"{work.name}, fresh library", work.files, work.megabytes, fresh.n, fresh.median, fresh.p90,
         work.files / fresh.median, work.megabytes / fresh.median,
         f"{last.added} / {last.skipped} / {last.failed}"],
        [f"{work.name}, re-ingest (known skipped, failures retried)", work.files, work.megabytes, again.n, again.median, again.p90,
         work.files / again.median, work.megabytes / again.median,
         f"{last.reingest_added} / {last.reingest_skipped} / {last.failed}"],
    ]
    if last.known_only_seconds is not None:
        known = Stats.of([r.known_only_seconds or 0.0 for r in runs])
        files, size = last.known_only_files, last.known_only_mb
        rows.append([f"{work.name}, re-ingest of the {files} decodable files only (all known)", files, size, known.n,
                     known.median, known.p90, files / known.median, size / known.median, f"0 / {files} / 0"])
    return rows


def write_report(out: Path, results: list[tuple[Workload, list[Run]]], load: LoadMonitor) -> None:
    report = MarkdownReport("Ingest throughput on real files", command_line())
    report.paragraph(
        "Each row: one `MedHashSession(lib, create=True).ingest(paths)` call into a new library on local "
        "disk (/tmp), then the same call again (re-ingest: content hash + skip). Times include starting the "
        "decode process pool (default min(nproc, 4) spawn workers), decoding, writing the model-input PNG "
        "and thumbnail of each case, labelling reports and the SQLite transactions. files/s and MB/s are "
        "computed from the median time; MB = size of the source files. Failures are files that cannot be "
        "decoded (the DICOM manifest's FAIL rows: 2 corrupt files, a 12-bit JPEG Extended without a usable "
        "decoder and a file without file meta); they count in files/s.")
    report.table(["workload", "files", "MB", "runs", "median s", "p90 s", "files/s", "MB/s",
                  "added / skipped / failed"],
                 [row for work, runs in results for row in table_rows(work, runs)])
    report.write(out, load)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fresh libraries per workload")
    parser.add_argument("--odir", type=int, default=500, help="ODIR-5K photos in the manifest slice")
    parser.add_argument("--quick", action="store_true",
                        help="1 repeat, the small DICOM files only, 50 photos; result to /tmp")
    parser.add_argument("--out", type=Path, help="results file (default benchmarks/results/ingest.md)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.odir = 1, 50
    out = args.out or (Path("/tmp/medhash-bench-ingest-quick.md") if args.quick else RESULTS / "ingest.md")
    dicoms = dicom_workload("transfer_syntax_misc" if args.quick else None)
    with tmp_dir("medhash-bench-ingest-") as scratch, LoadMonitor() as load:
        odir = odir_workload(scratch, args.odir)
        results = [(work, measure(work, args.repeats, scratch)) for work in (dicoms, odir)]
    write_report(out, results, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
