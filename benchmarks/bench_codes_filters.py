"""Session-start codes loading and the labels filter on a 100k-case library, old path beside new.

Codes (one 64-bit code set, 100k rows), from the library to a ready FAISS index, as
`SearchService.warm` does at the first search of a session:
  old        dict rows from SQLite (sqlite-utils `query`) + `content_checksum` + the FAISS disk cache
  raw        the same through a plain cursor (tuples)
  file       the codes file (core/library/code_files.py: token check + SHA-256 of its arrays) + the
             FAISS disk cache, handed the file's digest instead of hashing the codes again
  file, first session   codes read from SQLite and the codes file written (once per code change)
Labels filter, from a CaseFilter to the rows of the loaded codes that pass it:
  old        json_each scan in SQLite (schema 2's SQL), case ids, a Python set over every code's id
  new        `case_labels` index lookup (schema 3), seqs through a plain cursor, a boolean mask over seqs
Both paths run in one process, interleaved, on the same library; the rows are checked equal.

    python benchmarks/bench_search_e2e.py --quick   # not needed: the 100k library comes from
    python benchmarks/bench_codes_filters.py        # bench_search_e2e.py's cache (built if absent)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from benchkit import RESULTS, LoadMonitor, MarkdownReport, Stats, command_line

from medhash_app.core.index import BinaryIndexCache, content_checksum
from medhash_app.core.library import CaseFilter, Library
from medhash_app.core.library.codes import _ORDERED
from medhash_app.core.search.service import _member

OLD_LABELS_SQL = ("SELECT id FROM cases WHERE EXISTS (SELECT 1 FROM json_each(cases.labels) WHERE value IN ({})) "
                  "ORDER BY seq")


def old_codes(lib: Library, model: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """What `get_codes` did before: dict rows."""
    rows = lib._rows(f"SELECT k.case_id, k.code {_ORDERED}", [model, "image", bits])
    ids = np.array([r["case_id"] for r in rows], dtype=str)
    return ids, np.frombuffer(b"".join(r["code"] for r in rows), dtype=np.uint8).reshape(len(rows), bits // 8).copy()


def time_codes(lib: Library, model: int, bits: int, runs: int) -> dict[str, list[float]]:
    key = f"m{model}-image-{bits}"
    cache = BinaryIndexCache(lib.folder)
    ids, codes = old_codes(lib, model, bits)
    cache.get(key, ids, codes)  # the FAISS cache on disk, stamped with content_checksum (the old way)
    out: dict[str, list[float]] = {}

    def record(name: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        out.setdefault(name, []).append((time.perf_counter() - t0) * 1e3)

    def file_path() -> None:
        stored = lib.load_codes(model, "image", bits)
        assert stored.source == "file"
        BinaryIndexCache(lib.folder).get(key + "-new", stored.ids, stored.codes, checksum=stored.digest)

    def first_session() -> None:
        lib.forget_code_file(model, "image", bits)
        stored = lib.load_codes(model, "image", bits)
        assert stored.source.startswith("sqlite")

    lib.load_codes(model, "image", bits)
    stored = lib.load_codes(model, "image", bits)
    BinaryIndexCache(lib.folder).get(key + "-new", stored.ids, stored.codes, checksum=stored.digest)
    for _ in range(runs):
        record("old: dict rows + content_checksum + FAISS cache",
               lambda: BinaryIndexCache(lib.folder).get(key, *old_codes(lib, model, bits)))
        record("old: dict rows only", lambda: old_codes(lib, model, bits))
        record("raw cursor only", lambda: lib._read_codes(model, "image", bits))
        record("content_checksum only", lambda: content_checksum(ids, codes))
        record("new: codes file only", lambda: lib.load_codes(model, "image", bits))
        record("new: codes file + FAISS cache (digest given)", file_path)
        record("new, first session: SQLite + write codes file", first_session)
    return out


def old_filter_rows(lib: Library, labels: list[str], loaded_ids: np.ndarray) -> np.ndarray:
    rows = lib.db.execute(OLD_LABELS_SQL.format(", ".join("?" * len(labels))), labels).fetchall()
    allowed = {r[0] for r in rows}
    return np.flatnonzero(np.fromiter((i in allowed for i in loaded_ids), bool, len(loaded_ids)))


def new_filter_rows(lib: Library, labels: list[str], loaded_seqs: np.ndarray) -> np.ndarray:
    return np.flatnonzero(_member(loaded_seqs, lib.case_seqs(CaseFilter(labels=labels))))


def time_filters(lib: Library, model: int, bits: int, runs: int) -> list[list[object]]:
    stored = lib.load_codes(model, "image", bits)
    counts = dict(lib.db.execute("SELECT label, count(*) FROM case_labels GROUP BY label ORDER BY 2 DESC").fetchall())
    common, rare = next(iter(counts)), list(counts)[-1]
    picks = {f"common label `{common}`": [common], f"rare label `{rare}`": [rare],
             "two labels": list(counts)[:2]}
    rows = []
    for name, labels in picks.items():
        old_rows, new_rows = old_filter_rows(lib, labels, stored.ids), new_filter_rows(lib, labels, stored.seqs)
        assert np.array_equal(old_rows, new_rows), name
        old_t, new_t = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            old_filter_rows(lib, labels, stored.ids)
            t1 = time.perf_counter()
            new_filter_rows(lib, labels, stored.seqs)
            new_t.append((time.perf_counter() - t1) * 1e3)
            old_t.append((t1 - t0) * 1e3)
        o, n = Stats.of(old_t), Stats.of(new_t)
        rows.append([name, len(new_rows), runs, o.median, o.p90, n.median, n.p90, o.median / n.median])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", type=Path, default=Path("/tmp/medhash-bench-e2e/lib-100000-200"),
                        help="a library built by bench_search_e2e.py (copied; the copy is migrated)")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS / "codes_filters.md")
    args = parser.parse_args()
    if not (args.library / "library.sqlite").is_file():
        raise SystemExit(f"{args.library}: no library; run `python benchmarks/bench_search_e2e.py` once to build it")
    work = Path("/tmp/medhash-bench-codes-filters")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(args.library, work)
    with LoadMonitor() as load:
        t0 = time.perf_counter()
        with Library.open(work) as lib:
            migrate_s = time.perf_counter() - t0
            model = int(lib.active_model()["id"])
            bits = max(int(b) for b in lib.active_model()["bits"])
            n = lib.count_codes(model, "image", bits)
            codes = time_codes(lib, model, bits, args.runs)
            filters = time_filters(lib, model, bits, args.runs)
    report = MarkdownReport(f"Codes loading and the labels filter ({n:,} cases)", command_line())
    report.paragraph(f"Library: a copy of `{args.library}` ({n:,} cases, {bits}-bit image codes of model {model}); "
                     f"opening it migrated schema 2 -> 3 (case_labels + code_versions filled) in {migrate_s:.1f} s. "
                     f"Each path ran {args.runs} times, interleaved, in one process (SQLite pages in the OS cache, "
                     "as at the second session of a day).")
    report.heading("Codes: library -> ready FAISS index (first search of a session)")
    report.table(["path", "runs", "median ms", "p90 ms", "min ms"],
                 [[name, len(v), Stats.of(v).median, Stats.of(v).p90, Stats.of(v).low] for name, v in codes.items()])
    report.heading("Labels filter: CaseFilter -> rows of the loaded codes (same rows checked)")
    report.table(["filter", "rows", "runs", "old median ms", "old p90 ms", "new median ms", "new p90 ms", "speed-up"],
                 filters)
    report.write(args.out, load)
    print(args.out.read_text(encoding="utf-8"))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
