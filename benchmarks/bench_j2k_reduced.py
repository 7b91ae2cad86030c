"""Query decode of the real JPEG 2000 DICOMs: full resolution (before) vs reduced level (after), one run.

For each single-frame grey J2K file of ../shared/data/dicom: the time from file to the 256-pixel model
input (`load_image` + `model_image`) decoding in full, as every query did, and with
`load_image(min_side=256)` (core/imaging/j2k_reduced.py), interleaved; the decoded size; and the PSNR
of the reduced model input against the full one. The JPEG-LS chest file (no resolution levels) is
timed as a reference.

    python benchmarks/bench_j2k_reduced.py --runs 7
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from benchkit import RESULTS, LoadMonitor, MarkdownReport, Stats, command_line, require_shared

from medhash_app.core.imaging import load_image, model_image
from medhash_app.core.imaging.render import MODEL_SIDE

FILES = ["xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossless.dcm", "xray_chest/CR_chest_MONO1_Philips_RG1_J2K_lossy.dcm",
         "xray_chest/DX_chest_PA_MONO1_Canon_J2K_lossless.dcm", "xray_other/CR_hip_MONO2_Fuji_RG2_J2KI.dcm",
         "xray_other/CR_hip_MONO2_Fuji_RG2_J2KR.dcm", "xray_chest/CR_chest_MONO1_Philips_RG1_JPEGLS_nearlossless.dcm"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "j2k_reduced.md")
    args = parser.parse_args()
    rows = []
    with LoadMonitor() as load:
        for name in FILES:
            path = require_shared("dicom", name)
            full_t, reduced_t = [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                full = load_image(path)
                full_input = model_image(full)
                t1 = time.perf_counter()
                reduced = load_image(path, min_side=MODEL_SIDE)
                reduced_input = model_image(reduced)
                reduced_t.append((time.perf_counter() - t1) * 1e3)
                full_t.append((t1 - t0) * 1e3)
            f, r = Stats.of(full_t), Stats.of(reduced_t)
            shape = "x".join(map(str, reduced.pixels.shape[:2]))
            rows.append([Path(name).name, "x".join(map(str, full.pixels.shape[:2])), shape, args.runs, f.median,
                         f.p90, r.median, r.p90, f.median / r.median,
                         psnr(np.asarray(full_input), np.asarray(reduced_input))])
            print(f"{name}: {f.median:.0f} -> {r.median:.0f} ms", flush=True)
    report = MarkdownReport("JPEG 2000 queries: full decode vs reduced resolution level", command_line())
    report.paragraph(f"File -> {MODEL_SIDE}-pixel model input (`load_image` + `model_image`), full decode (before) and "
                     f"`load_image(min_side={MODEL_SIDE})` (after), interleaved in one process. PSNR: the reduced "
                     "model input against the full one (inf = identical: not a J2K file the reduced path takes).")
    report.table(["file", "full size", "decoded size", "runs", "full ms median", "full ms p90", "reduced ms median",
                  "reduced ms p90", "speed-up", "PSNR dB"], rows)
    report.write(args.out, load)
    print(args.out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
