"""End-to-end search latency on a 100k-case library: cold process, warm session, the CLI command.

The library is built once and cached (default /tmp/medhash-bench-e2e/; --rebuild makes it again):
N real ODIR-5K photos are ingested normally (so stored inputs, thumbnails, reports and labels are
real), a BASE model on the `embedded` backbone with 64-bit codes is saved untrained (latency does
not depend on the weights' values) and registered, synthetic case rows that reuse the real cases'
files and reports fill the library up to --cases, and every case gets random image and text codes
with random float16 embeddings (for re-ranking) through `Library.put_codes`.

Measured (queries: two real chest DICOMs, one uncompressed and one JPEG 2000, and a real IU X-ray
report; k = 20; CPU):
(a) cold: a fresh Python process that imports, opens the library and runs one image search, with
    the FAISS index cache removed first (built from SQLite) and then present (loaded and verified);
(b) warm: repeated `MedHashSession.search` calls in one process, split into `encode_ms` (decode +
    model input + encoder) and `search_ms` (Hamming top-k + SQLite rows);
(c) the whole `medhash search --library L --image F --json` command as a subprocess;
(d) a search with a labels filter and a search with re-ranking.

    python benchmarks/bench_search_e2e.py              # ~6 min on 2 busy cores (+ ~1 min first build)
    python benchmarks/bench_search_e2e.py --quick      # 2k cases, few runs; ~30 s CPU once built; to /tmp

This script sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the `medhash` command does.
Needs ../shared/data (or MEDHASH_SHARED_DATA); exits 0 with a message when it is absent.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as medhash_app/cli.py, before torch loads OpenMP

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from benchkit import (
    RESULTS,
    SHARED,
    LoadMonitor,
    MarkdownReport,
    Stats,
    command_line,
    odir_manifest,
    require_shared,
)

# medhash_app and torch are imported inside functions, so the cold probe can time its imports.

QUERY_DICOMS = {"DICOM 1024x1024 uncompressed": "xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm",
                "DICOM 1955x1841 JPEG 2000 lossless": "xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossless.dcm"}
BITS = 64
MARKER = "bench-build.json"
SYNTHETIC_CHUNK = 20_000
TEMPLATE_KEYS = ("source_path", "source_kind", "report", "labels", "label_source", "domain", "modality",
                 "view", "laterality", "age", "sex", "input_path", "thumb_path")


@dataclass
class Timings:
    """Repeated searches of one kind: wall time around the call and the result's own split."""

    name: str
    wall_ms: list[float] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)
    search_ms: list[float] = field(default_factory=list)
    hits: int = 0


# ------------------------------------------------------------------------------------ library
def build_library(folder: Path, cases: int, real: int) -> dict:
    """Ingest `real` ODIR photos, register an untrained embedded BASE checkpoint, add synthetic
    rows up to `cases`, store random codes + embeddings for every case. Returns the build record."""
    from medhash_app.core.session import MedHashSession

    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    start = time.perf_counter()
    manifest, _ = odir_manifest(folder.parent / "manifests", real)
    with MedHashSession(folder, create=True, device="cpu") as session:
        report = session.ingest([manifest], allowed_roots=[SHARED])  # rows name files in ../shared
        times["ingest real photos"] = time.perf_counter() - start
        model_id, dim = register_untrained_model(session)
        times["save + register checkpoint"] = time.perf_counter() - start - sum(times.values())
        add_synthetic_cases(session.library, cases)
        times["synthetic case rows"] = time.perf_counter() - start - sum(times.values())
        put_random_codes(session.library, model_id, dim)
        times["random codes + embeddings"] = time.perf_counter() - start - sum(times.values())
        record = {"cases": session.library.count_cases(), "requested_cases": cases, "real_rows": real,
                  "real_added": report.added, "model_id": model_id, "embedding_dim": dim, "build_s": times}
    (folder / MARKER).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def register_untrained_model(session) -> tuple[int, int]:
    """(model id, embedding dimension) of a freshly built embedded BASE model saved in the library."""
    import torch

    from trainer.checkpoint import save_checkpoint
    from trainer.config import ModelConfig
    from trainer.models import build_model

    model = build_model(ModelConfig(method="base", backbone="embedded", bits=[BITS])).eval()
    with torch.inference_mode():
        dim = int(model.embed_image(torch.zeros(1, 3, 224, 224)).shape[1])
    folder = save_checkpoint(session.library.models_dir / "embedded-base-untrained", model, meta={})
    return session.register_checkpoint(folder, activate=True, name="embedded BASE 64-bit (untrained)"), dim


def add_synthetic_cases(library, cases: int) -> None:
    """Rows `syn0000000`... copying the real cases' files, reports and labels, up to `cases`."""
    real = list(library.iter_cases())
    for first in range(0, cases - len(real), SYNTHETIC_CHUNK):
        rows = []
        for i in range(first, min(first + SYNTHETIC_CHUNK, cases - len(real))):
            template = real[i % len(real)]
            rows.append({k: template[k] for k in TEMPLATE_KEYS} | {"id": f"syn{i:07d}"})
        library.add_cases(rows)


def put_random_codes(library, model_id: int, dim: int, seed: int = 0) -> None:
    """Random packed codes and unit-length embeddings for every case, both modalities."""
    rng = np.random.default_rng(seed)
    ids = library.case_ids()
    for modality in ("image", "text"):
        for first in range(0, len(ids), SYNTHETIC_CHUNK):
            chunk = ids[first:first + SYNTHETIC_CHUNK]
            codes = rng.integers(0, 256, (len(chunk), BITS // 8), dtype=np.uint8)
            emb = rng.standard_normal((len(chunk), dim)).astype(np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            library.put_codes(model_id, modality, BITS, chunk, codes, embeddings=emb)


def cached_library(cache: Path, cases: int, real: int, rebuild: bool) -> tuple[Path, dict, bool]:
    """(library folder, build record, built now?): reuse a complete earlier build of the same size."""
    folder = cache / f"lib-{cases}-{real}"
    marker = folder / MARKER
    if not rebuild and marker.is_file():
        record = json.loads(marker.read_text(encoding="utf-8"))
        if record.get("requested_cases") == cases and record.get("cases") == cases:
            return folder, record, False
    print(f"building a {cases:,}-case library in {folder} ...", flush=True)
    return folder, build_library(folder, cases, real), True


# ------------------------------------------------------------------------------------ queries
def query_text() -> str:
    """A real IU X-ray report (findings + impression), the first with both."""
    for line in require_shared("iu-reports.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("findings") and r.get("impression"):
            return f"{r['findings']} {r['impression']}"
    raise SystemExit("no IU X-ray report with findings and impression")


def common_label(library_dir: Path) -> str:
    """The label carried by the most real cases (a filter that keeps a sizeable subset)."""
    from collections import Counter

    from medhash_app.core.library import Library

    with Library.open(library_dir, read_only=True) as lib:
        counts = Counter(lb for case in lib.iter_cases() if not case["id"].startswith("syn")
                         for lb in case["labels"])
    return counts.most_common(1)[0][0]


# ------------------------------------------------------------------------------------ (a) cold
def cold_probe(library: Path, query: Path, k: int) -> None:
    """Child-process mode: time imports, library open and the first search; print JSON."""
    t0 = time.perf_counter()
    from medhash_app.core.search import SearchQuery
    from medhash_app.core.session import MedHashSession

    t1 = time.perf_counter()
    with MedHashSession(library) as session:
        t2 = time.perf_counter()
        result = session.search(SearchQuery(image_path=query, k=k))
        t3 = time.perf_counter()
        states = sorted(set(session.searcher.indexes.last_status.values()))
    print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "first_search_s": t3 - t2,
                      "encode_ms": result.encode_ms, "search_ms": result.search_ms, "hits": len(result.hits),
                      "index": states}))


def measure_cold(library: Path, query: Path, runs: int, k: int, drop_index: bool) -> list[dict]:
    """Fresh processes, each timed from the outside (start-up included) and from the inside."""
    out = []
    for _ in range(runs):
        if drop_index:
            shutil.rmtree(library / "indexes", ignore_errors=True)
            (library / "indexes").mkdir()
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--cold-probe", "--library", str(library),
                               "--query", str(query), "-k", str(k)], capture_output=True, text=True, check=True)
        record = json.loads(proc.stdout.strip().splitlines()[-1]) | {"process_s": time.perf_counter() - start}
        out.append(record)
        print(f"cold ({'index removed' if drop_index else 'index on disk'}): {record['process_s']:.1f} s "
              f"(first search {record['first_search_s']:.1f} s, index {record['index']})", flush=True)
    return out


# ------------------------------------------------------------------------------------ (b, d) warm
def measure_warm(library: Path, queries: dict[str, dict], runs: int) -> tuple[dict, list[Timings]]:
    """One session: its open and first search, then `runs` of each query, round-robin."""
    from medhash_app.core.search import SearchQuery
    from medhash_app.core.session import MedHashSession

    start = time.perf_counter()
    with MedHashSession(library) as session:
        opened = time.perf_counter()
        first = session.search(SearchQuery(**next(iter(queries.values()))))
        first_done = time.perf_counter()
        results = {name: Timings(name) for name in queries}
        for _ in range(runs):
            for name, spec in queries.items():
                t0 = time.perf_counter()
                res = session.search(SearchQuery(**spec))
                timing = results[name]
                timing.wall_ms.append((time.perf_counter() - t0) * 1e3)
                timing.encode_ms.append(res.encode_ms)
                timing.search_ms.append(res.search_ms)
                timing.hits = len(res.hits)
    print("warm: " + ", ".join(f"{t.name} {np.median(t.wall_ms):.0f} ms" for t in results.values()), flush=True)
    first_info = {"open_s": opened - start, "first_search_s": first_done - opened,
                  "encode_ms": first.encode_ms, "search_ms": first.search_ms}
    return first_info, list(results.values())


# ------------------------------------------------------------------------------------ (c) CLI
def measure_cli(library: Path, query: Path, runs: int) -> tuple[Stats, Stats]:
    """(wall seconds, the command's own total_ms) of `medhash search ... --json` subprocesses."""
    exe = Path(sys.executable).with_name("medhash")
    cmd = [str(exe) if exe.is_file() else "medhash", "search", "--library", str(library), "--image", str(query),
           "--json"]
    walls, totals = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - start)
        totals.append(json.loads(proc.stdout)["timing_ms"]["total"])
        print(f"medhash search: {walls[-1]:.1f} s", flush=True)
    return Stats.of(walls), Stats.of(totals)


# ------------------------------------------------------------------------------------ report
def write_report(out: Path, load: LoadMonitor, record: dict, built_now: bool, cold: dict[str, list[dict]],
                 first: dict, warm: list[Timings], cli: tuple[Stats, Stats], queries: dict[str, dict],
                 k: int, label: str, text: str) -> None:
    report = MarkdownReport(f"End-to-end search latency on a {record['cases']:,}-case library", command_line())
    build = ", ".join(f"{name} {s:.1f} s" for name, s in record["build_s"].items())
    report.paragraph(
        f"Library: {record['real_added']} real ODIR-5K photos ingested normally (from the first "
        f"{record['real_rows']} manifest rows; the rest are duplicate images), the other "
        f"{record['cases'] - record['real_added']:,} cases synthetic rows reusing their files, reports and "
        f"labels; random {BITS}-bit image and text codes and random {record['embedding_dim']}-d float16 "
        f"embeddings for every case. Model: BASE on the embedded backbone (EfficientNet-Lite0 + MiniLM-L6), "
        f"untrained hash heads, CPU. Build ({'this run' if built_now else 'cached from an earlier run'}): "
        f"{build}. k = {k}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} (as `medhash` sets it).")
    report.paragraph(f"Queries: {', '.join(f'{n} (`{Path(q).name}`)' for n, q in QUERY_DICOMS.items())}, "
                     f"and a real IU X-ray report ({len(text)} characters) searched against image codes.")
    report.heading("(a) Cold: first search in a fresh process")
    report.paragraph("`process` = the subprocess from start to exit (Python start-up, imports, library open, "
                     "first search, shutdown); `first search` = `MedHashSession.search` alone, whose "
                     "`encode_ms` includes loading the checkpoint and `search_ms` reading the codes from SQLite "
                     "and building (index removed) or loading and verifying (index on disk) the FAISS index. "
                     f"Query: {next(iter(QUERY_DICOMS))}.")
    rows = []
    for name, runs in cold.items():
        rows.append([name, len(runs), *(Stats.of([r[key] for r in runs]).median
                                        for key in ("process_s", "import_s", "open_s", "first_search_s")),
                     Stats.of([r["encode_ms"] for r in runs]).median / 1e3,
                     Stats.of([r["search_ms"] for r in runs]).median / 1e3, ", ".join(runs[-1]["index"])])
    report.table(["index cache", "runs", "process s", "imports s", "open s", "first search s",
                  "of which encode s", "of which search s", "index state"], rows)
    report.heading("(b, d) Warm: searches in one open session")
    report.paragraph(f"In the same process as the session (opened in {first['open_s'] * 1e3:.0f} ms; its first search "
                     f"took {first['first_search_s']:.1f} s: encode {first['encode_ms'] / 1e3:.1f} s, search "
                     f"{first['search_ms'] / 1e3:.1f} s). Then each query below ran {len(warm[0].wall_ms)} "
                     "times, round-robin. `encode` = decode + model input + image/text encoder (codes and the "
                     "re-ranking embedding); `search` = Hamming top-k + SQLite rows (+ filter / re-rank). "
                     f"Labels filter: cases labelled `{label}`.")
    rows = []
    for t in warm:
        w, e, s = Stats.of(t.wall_ms), Stats.of(t.encode_ms), Stats.of(t.search_ms)
        rows.append([t.name, w.n, w.median, w.p90, e.median, e.p90, s.median, s.p90, t.hits])
    report.table(["query", "runs", "total ms median", "total ms p90", "encode ms median", "encode ms p90",
                  "search ms median", "search ms p90", "hits"], rows)
    wall, total = cli
    report.heading("(c) The `medhash search --library L --image F --json` command")
    report.paragraph(f"Run as a subprocess {wall.n} times (index cache on disk, k = 10, the CLI default), "
                     f"query {next(iter(QUERY_DICOMS))}. Wall = start to exit; `timing_ms.total` = the search "
                     "inside it as the command reports it (includes loading the model and the index).")
    report.table(["measure", "runs", "median s", "p90 s", "min s", "max s"],
                 [["wall (start-up + imports + open + search + exit)", wall.n, wall.median, wall.p90, wall.low,
                   wall.high],
                  ["`timing_ms.total` (search incl. model + index load)", total.n, total.median / 1e3,
                   total.p90 / 1e3, total.low / 1e3, total.high / 1e3]])
    report.write(out, load)


# ------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000, help="library size")
    parser.add_argument("--real", type=int, default=200, help="ODIR-5K manifest rows ingested for real")
    parser.add_argument("--runs", type=int, default=30, help="warm searches per query kind")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes per index-cache state")
    parser.add_argument("--cli-runs", type=int, default=5, help="`medhash search` subprocesses")
    parser.add_argument("-k", type=int, default=20, help="hits per search (warm and cold)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/medhash-bench-e2e"), help="library cache folder")
    parser.add_argument("--rebuild", action="store_true", help="build the cached library again")
    parser.add_argument("--quick", action="store_true",
                        help="2,000 cases, 20 real, 2 warm runs, 1 cold and 1 CLI run; result to /tmp")
    parser.add_argument("--out", type=Path, help="results file (default benchmarks/results/search_e2e.md)")
    parser.add_argument("--cold-probe", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--library", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--query", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.cases, args.real, args.runs, args.cold_runs, args.cli_runs = 2_000, 20, 2, 1, 1
    return args


def main() -> int:
    args = parse_args()
    if args.cold_probe:
        cold_probe(args.library, args.query, args.k)
        return 0
    out = args.out or (Path("/tmp/medhash-bench-search-e2e-quick.md") if args.quick else RESULTS / "search_e2e.md")
    dicoms = {name: require_shared("dicom", rel) for name, rel in QUERY_DICOMS.items()}
    text = query_text()
    with LoadMonitor() as load:
        library, record, built_now = cached_library(args.cache, args.cases, args.real, args.rebuild)
        label = common_label(library)
        first_dicom = next(iter(dicoms.values()))
        cold = {"removed (built from SQLite)": measure_cold(library, first_dicom, args.cold_runs, args.k, True)}
        if not args.quick:  # in quick mode the CLI run below covers the cached-index start
            cold["on disk (loaded + verified)"] = measure_cold(library, first_dicom, args.cold_runs, args.k, False)
        from medhash_app.core.search import SearchFilters

        queries = {name: {"image_path": path, "k": args.k} for name, path in dicoms.items()}
        queries["report text -> images"] = {"text": text, "k": args.k}
        queries[f"{next(iter(dicoms))} + labels filter"] = {"image_path": first_dicom, "k": args.k,
                                                            "filters": SearchFilters(labels=[label])}
        queries[f"{next(iter(dicoms))} + re-rank"] = {"image_path": first_dicom, "k": args.k, "rerank": True}
        first, warm = measure_warm(library, queries, args.runs)
        cli = measure_cli(library, first_dicom, args.cli_runs)
    write_report(out, load, record, built_now, cold, first, warm, cli, queries, args.k, label, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
