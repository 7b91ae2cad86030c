"""Warm query latency by query type on the 100k library, and what preparing a session saves, one run.

On the library of bench_search_e2e.py (BASE on the embedded backbone, 64-bit codes, 100k cases):
(1) the first search of a fresh session (loads the encoder and the codes) against the first search
    after `MedHashSession.warm_up()` (what the window now runs in the background when a library opens);
(2) warm searches in one session for each query type (uncompressed DICOM, J2K DICOM, JPEG-LS DICOM,
    fundus photo, report text), each without and with a labels filter, median / p90 end to end;
(3) for the image queries, a search again with the viewer's decoded image passed in (SearchQuery.image:
    a filter or k change in the window) against decoding the file again, and against the old search,
    which decoded the file a second time for its image-statistics check (emulated: one more
    load_image + model_image, what that check did).

    python benchmarks/bench_warm_queries.py --library /tmp/medhash-bench-e2e/lib-100000-200 --runs 10
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from pathlib import Path

from benchkit import RESULTS, LoadMonitor, MarkdownReport, Stats, command_line, require_shared

from medhash_app.core.imaging import load_image, model_image
from medhash_app.core.imaging.render import MODEL_SIDE
from medhash_app.core.search import SearchFilters, SearchQuery
from medhash_app.core.session import MedHashSession

DICOMS = {"DICOM 1024x1024 uncompressed": "xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm",
          "DICOM 1955x1841 J2K lossless": "xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossless.dcm",
          "DICOM 1955x1841 JPEG-LS": "xray_chest/CR_chest_MONO1_Philips_RG1_JPEGLS_nearlossless.dcm"}


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return (time.perf_counter() - t0) * 1e3, value


def search_twice_decoding(session: MedHashSession, path: Path) -> None:
    """The old search: its image-statistics check decoded the file a second time."""
    session.search(SearchQuery(image_path=path))
    model_image(load_image(path), MODEL_SIDE)


def queries() -> dict[str, dict]:
    out = {name: {"image_path": require_shared("dicom", rel)} for name, rel in DICOMS.items()}
    photo = min(require_shared("odir5k-256", "images").iterdir())
    out["fundus photo (ODIR-5K)"] = {"image_path": photo}
    for line in require_shared("iu-reports.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("findings") and row.get("impression"):
            out["report text (IU X-ray)"] = {"text": f"{row['findings']} {row['impression']}"}
            break
    return out


def first_search(library: Path, spec: dict, warm: bool) -> tuple[float, float]:
    """(warm_up ms, first search ms) in a fresh session."""
    with MedHashSession(library, device="cpu") as session:
        prep = timed(session.warm_up)[0] if warm else 0.0
        return prep, timed(session.search, SearchQuery(**spec))[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", type=Path, default=Path("/tmp/medhash-bench-e2e/lib-100000-200"))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "warm_queries.md")
    args = parser.parse_args()
    specs = queries()
    first_dicom = specs["DICOM 1024x1024 uncompressed"]
    with LoadMonitor() as load:
        cold_first = first_search(args.library, first_dicom, warm=False)
        prepared = first_search(args.library, first_dicom, warm=True)
        with MedHashSession(args.library, device="cpu") as session:
            session.warm_up()
            label = session.library.db.execute(
                "SELECT label FROM case_labels GROUP BY label ORDER BY count(*) DESC LIMIT 1").fetchone()[0]
            for spec in specs.values():  # first use of each kind builds its references
                session.search(SearchQuery(**spec))
            warm = {(name, f): [] for name in specs for f in (False, True)}
            again = {name: {"decode again": [], "viewer image": [], "old (two decodes)": []} for name in DICOMS}
            again["fundus photo (ODIR-5K)"] = {"decode again": [], "viewer image": [], "old (two decodes)": []}
            decoded = {name: load_image(spec["image_path"]) for name, spec in specs.items() if "image_path" in spec}
            for _ in range(args.runs):
                for name, spec in specs.items():
                    for flt in (False, True):
                        filters = SearchFilters(labels=[label]) if flt else SearchFilters()
                        warm[(name, flt)].append(timed(session.search, SearchQuery(**spec, filters=filters))[0])
                    if name in decoded:
                        path = spec["image_path"]
                        again[name]["decode again"].append(timed(session.search, SearchQuery(image_path=path))[0])
                        again[name]["viewer image"].append(
                            timed(session.search, SearchQuery(image_path=path, image=decoded[name]))[0])
                        again[name]["old (two decodes)"].append(timed(search_twice_decoding, session, path)[0])
                print(f"run done: {', '.join(f'{n} {v[-1]:.0f}' for (n, f), v in warm.items() if not f)}", flush=True)
    report = MarkdownReport("Warm queries by type, and preparing a session, on a 100,000-case library", command_line())
    report.paragraph(f"Library `{args.library}` (BASE, embedded backbone, 64-bit codes). Labels filter: cases "
                     f"labelled `{label}`. Times are end to end around `MedHashSession.search` (decode, encode, "
                     "rank, SQLite rows, out-of-domain checks), CPU.")
    report.heading("First search of a session")
    report.table(["session", "warm_up ms (background in the window)", "first search ms"],
                 [["fresh (encoder and codes load in the search)", "-", cold_first[1]],
                  ["after warm_up()", prepared[0], prepared[1]]])
    report.heading("Warm searches (target: median under 300 ms)")
    rows = []
    for (name, flt), values in warm.items():
        s = Stats.of(values)
        rows.append([name, "labels" if flt else "-", s.n, s.median, s.p90, "yes" if s.median < 300 else "NO"])
    report.table(["query", "filter", "runs", "median ms", "p90 ms", "under 300 ms"], rows)
    report.heading("Searching the same image again (a filter or k change in the window)")
    rows = [[name, *(Stats.of(v[k]).median for k in ("old (two decodes)", "decode again", "viewer image"))]
            for name, v in again.items()]
    report.table(["query", "old: decode twice, median ms", "decode once, median ms", "viewer's image, median ms"],
                 rows)
    report.write(args.out, load)
    print(args.out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
