"""Desktop query latency: a DICOM file dropped on the window -> ranked results painted.

Builds a 100k-case library on CPU with the embedded backbone: a few real images are ingested (so
thumbnails, stored inputs and reports are real), a BASE model on the embedded backbone is saved
and registered (its hash heads are untrained: latency does not depend on training), the real cases
are encoded, and synthetic cases that reuse the real thumbnails are added with random codes
written straight into the codes table. Then the real MainWindow (offscreen Qt platform unless a
display is set) opens the library, and each repetition drops a real DICOM file on the window and
processes events until the results table has painted its rows.

    python benchmarks/bench_ui_query.py --cases 100000 --repeats 20 --out benchmarks/results/ui_query.md

Needs ../shared/data (real DICOM files and ODIR-5K photos).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDHASH_SHARED_DATA", REPO.parent / "shared" / "data"))
QUERIES = ("xray_chest/DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm",
           "xray_chest/CR_chest_MONO1_Philips_RG1_explicitLE.dcm",
           "xray_other/CR_hip_MONO2_Fuji_RG2_UNC_explicitLE.dcm")
REAL_ODIR = 24
BITS = (16, 32, 64)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine() -> str:
    import torch
    from PySide6 import __version__ as pyside

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu_model()}; nproc {os.cpu_count()}; {mem:.0f} GiB RAM; {platform.platform()}; "
            f"Python {platform.python_version()}; torch {torch.__version__} (CPU, {torch.get_num_threads()} "
            f"threads); PySide6 {pyside}; Qt platform {os.environ.get('QT_QPA_PLATFORM', 'default')}; "
            f"load average at start {load}")


# ------------------------------------------------------------------------------------ library
def build_library(folder: Path, cases: int) -> dict[str, float]:
    """Real images + embedded model + synthetic cases with random codes; returns build timings."""
    import numpy as np

    from medhash_app.core.session import MedHashSession
    from trainer.checkpoint import save_checkpoint
    from trainer.config import ModelConfig
    from trainer.models import build_model

    timings: dict[str, float] = {}
    start = time.perf_counter()
    rows = [json.loads(line) for line in (SHARED / "odir5k-256" / "pairs.jsonl").read_text().splitlines()]
    rows = rows[:REAL_ODIR]
    for row in rows:
        row["image"] = str(SHARED / "odir5k-256" / row["image"])
    manifest = folder.parent / "real.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with MedHashSession(folder, create=True, device="cpu") as session:
        session.ingest([manifest, SHARED / "dicom" / "xray_chest" / "DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm"],
                       allowed_roots=[SHARED])  # the manifest's rows name files in ../shared
        timings["ingest real images s"] = time.perf_counter() - start

        cfg = ModelConfig(method="base", backbone="embedded", bits=list(BITS),
                          label_names=sorted({lb for c in session.library.iter_cases() for lb in c["labels"]}))
        checkpoint = save_checkpoint(folder.parent / "embedded-base", build_model(cfg), meta={})
        model_id = session.register_checkpoint(checkpoint, activate=True, name="embedded-base (untrained heads)")
        session.encode_library(model_id)
        timings["model + encode real s"] = time.perf_counter() - start

        real = list(session.library.iter_cases())
        rng = np.random.default_rng(0)
        batch = 20_000
        for first in range(0, cases - len(real), batch):
            n = min(batch, cases - len(real) - first)
            synthetic = []
            for i in range(first, first + n):
                template = real[i % len(real)]
                synthetic.append({k: template[k] for k in ("source_path", "report", "labels", "domain", "modality",
                                                          "view", "input_path", "thumb_path")} |
                                 {"id": f"syn{i:07d}", "study_date": f"20{10 + i % 14:02d}-0{1 + i % 9}-1{i % 10}"})
            session.library.add_cases(synthetic)
            ids = [r["id"] for r in synthetic]
            for bits in BITS:
                for modality in ("image", "text"):
                    codes = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
                    session.library.put_codes(model_id, modality, bits, ids, codes)
        timings["synthetic cases s"] = time.perf_counter() - start
        timings["cases"] = session.library.count_cases()
    return timings


# ------------------------------------------------------------------------------------ UI timing
def measure(library: Path, repeats: int, k: int) -> dict[str, object]:
    from PySide6.QtCore import QEvent, QMimeData, QObject, QPoint, QSettings, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    from medhash_app.ui.app import make_application
    from medhash_app.ui.main_window import MainWindow
    from medhash_app.ui.settings import AppSettings
    from medhash_app.ui.themes import apply_theme

    app = make_application([sys.argv[0]])
    settings = AppSettings(QSettings(str(library.parent / "bench.ini"), QSettings.Format.IniFormat))
    settings.set_page_size(k)
    apply_theme(app, "dark")
    window = MainWindow(settings, device="cpu")
    window.resize(1600, 1000)
    window.show()
    tab = window.search_tab

    class PaintWatch(QObject):
        painted = False

        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.Paint and tab.model.rowCount() > 0:
                self.painted = True
            return False

    watch = PaintWatch()
    tab.results.table.viewport().installEventFilter(watch)

    def spin_until(condition, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            app.processEvents()
            if time.monotonic() > deadline:
                raise TimeoutError("the UI did not get there in time")

    ready: list[str] = []
    window.state.preparing.connect(lambda text: ready.append(text) if text.startswith("Search ready") else None)
    opened_at = time.perf_counter()
    window.open_library(library)
    spin_until(lambda: window.state.session is not None, 120)
    spin_until(lambda: bool(ready), 1200)  # the background warm-up the status bar announces
    warm_up_ms = (time.perf_counter() - opened_at) * 1000

    def drop(path: Path) -> tuple[float, object]:
        finished: list[object] = []

        def on_finished(result, _ms) -> None:
            finished.append(result)

        tab.searchFinished.connect(on_finished)
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(path))])
        pos = QPoint(400, 400)
        watch.painted = False
        tab.model.set_result(None)
        spin_until(lambda: True, 0)
        start = time.perf_counter()
        QApplication.sendEvent(window, QDragEnterEvent(pos, Qt.DropAction.CopyAction, mime,
                                                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
        QApplication.sendEvent(window, QDropEvent(pos.toPointF(), Qt.DropAction.CopyAction, mime,
                                                  Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
        spin_until(lambda: finished and watch.painted, 300)
        elapsed = (time.perf_counter() - start) * 1000
        tab.searchFinished.disconnect(on_finished)
        return elapsed, finished[0]

    queries = [SHARED / "dicom" / q for q in QUERIES]
    cold_ms, cold = drop(queries[0])
    totals, encode, search = [], [], []
    for i in range(repeats):
        ms, result = drop(queries[i % len(queries)])
        totals.append(ms)
        encode.append(result.encode_ms)
        search.append(result.search_ms)
    window.shutdown()
    pct = statistics.quantiles(totals, n=20)
    return {"warm_up_ms": warm_up_ms, "ready_text": ready[0], "cold_ms": cold_ms, "cold_encode_ms": cold.encode_ms, "cold_search_ms": cold.search_ms,
            "median_ms": statistics.median(totals), "p95_ms": pct[18], "min_ms": min(totals),
            "max_ms": max(totals), "encode_median_ms": statistics.median(encode),
            "search_median_ms": statistics.median(search), "hits": len(cold.hits), "bits": cold.bits}


def write_report(path: Path, command: str, build: dict[str, float], stats: dict[str, object], k: int) -> None:
    lines = [
        "# UI query latency: file dropped -> results painted",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}",
        "",
        (f"Library: {int(build['cases']):,} cases ({REAL_ODIR} real ODIR-5K photos + 1 real chest DICOM ingested; "
        f"the rest synthetic rows reusing their thumbnails, with random {', '.join(map(str, BITS))}-bit codes). "
        f"Model: BASE on the embedded backbone (EfficientNet-Lite0 + MiniLM-L6), CPU. Target: reports, "
        f"k = {k}, {stats['bits']}-bit codes."),
        "",
        ("Each repetition sends a real drag-and-drop of one of three real DICOM files "
        f"({', '.join(Path(q).name for q in QUERIES)}) to the main window and processes Qt events until "
        "the search result is in and the results table's viewport has painted rows. The time covers: "
        "the drop, the session's search (DICOM decode, model input, image encoder, FAISS Hamming top-k, "
        "SQLite rows; the viewer decodes the same file in parallel on another thread), and the first "
        "paint of the list (thumbnails then stream in from the loader thread and are not waited for)."),
        "",
        "| measure | ms |",
        "|---|---:|",
        (f"| library opened -> status bar \"Search ready\" (background warm-up: encoder, codes, checks) | "
        f"{stats['warm_up_ms']:.0f} |"),
        (f"| first drop after that (encode {stats['cold_encode_ms']:.0f}, search + rows "
         f"{stats['cold_search_ms']:.0f}) | {stats['cold_ms']:.0f} |"),
        f"| drop -> painted, median of {len(QUERIES)} files x repeats | {stats['median_ms']:.0f} |",
        f"| drop -> painted, p95 | {stats['p95_ms']:.0f} |",
        f"| drop -> painted, min / max | {stats['min_ms']:.0f} / {stats['max_ms']:.0f} |",
        f"| of which encode (SearchResult.encode_ms), median | {stats['encode_median_ms']:.0f} |",
        f"| of which Hamming search + rows (SearchResult.search_ms), median | {stats['search_median_ms']:.0f} |",
        "",
        ("Library build (not part of the latency): " + ", ".join(
            f"{k} {v:.0f}" for k, v in build.items() if k != "cases") + ".") if len(build) > 1
        else "Library reused from an earlier run (--library).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("-k", type=int, default=200, help="results per search (the UI default)")
    parser.add_argument("--library", type=Path, help="reuse (or keep) the library in this folder")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ui_query.md")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"real test data not found at {SHARED}")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    work = Path(tempfile.mkdtemp(prefix="medhash-bench-ui-"))
    library = args.library or work / "library"
    try:
        if (library / "library.sqlite").is_file():
            build = {"cases": 0.0}
            from medhash_app.core.library import Library

            with Library.open(library) as lib:
                build["cases"] = lib.count_cases()
        else:
            library.parent.mkdir(parents=True, exist_ok=True)
            build = build_library(library, args.cases)
        stats = measure(library, args.repeats, args.k)
    finally:
        if args.library is None:
            shutil.rmtree(work, ignore_errors=True)
    command = "python benchmarks/bench_ui_query.py " + " ".join(sys.argv[1:])
    write_report(args.out, command, build, stats, args.k)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
