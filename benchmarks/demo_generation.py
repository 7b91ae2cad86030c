"""Time the demo-data generator (target: the default 480 images in a few seconds on 2 cores).

Generates the default dataset `--repeat` times into a temporary folder and writes a Markdown table
with wall and CPU time per run, per image, the size on disk, and the machine.

    python benchmarks/demo_generation.py [--n-chest 240] [--n-fundus 240] [--repeat 3] [--out ...]
    taskset -c 0,1 python benchmarks/demo_generation.py       # pin to 2 cores, as on a small laptop

Each worker count in `--workers` (default "1,2": one process, then two) is timed `--repeat` times.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import pydicom

from medhash_app.core.demo import generate_demo_dataset

ROOT = Path(__file__).resolve().parents[1]


Run = tuple[int, float, int]  # workers, wall s, bytes on disk


def time_runs(n_chest: int, n_fundus: int, repeat: int, workers: list[int]) -> list[Run]:
    """(workers, wall s, bytes on disk) per run, each into a fresh folder."""
    runs = []
    for count in workers:
        for i in range(repeat):
            folder = Path(tempfile.mkdtemp(prefix="medhash-demo-bench-")) / "data"
            try:
                wall = time.perf_counter()
                generate_demo_dataset(folder, n_chest=n_chest, n_fundus=n_fundus, seed=i, workers=count)
                wall = time.perf_counter() - wall
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                runs.append((count, wall, size))
            finally:
                shutil.rmtree(folder.parent, ignore_errors=True)
    return runs


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {cores} usable cores, {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}, numpy {np.__version__}, Pillow {PIL.__version__}, "
            f"pydicom {pydicom.__version__}; load average at start {os.getloadavg()[0]:.1f}")


def report(args: argparse.Namespace, runs: list[Run], where: str) -> str:
    n = args.n_chest + args.n_fundus
    rows = "\n".join(f"| {workers} | {wall:.2f} | {1000 * wall / n:.1f} | {size / 2**20:.0f} |"
                     for workers, wall, size in runs)
    best = {w: min(t for k, t, _ in runs if k == w) for w, _, _ in runs}
    return (f"# Demo-data generation time\n\n"
            f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`\n\n"
            f"Machine: {where}\n\n"
            f"{args.n_chest} chest DICOMs (512x512, 12-bit) + {args.n_fundus} fundus PNGs (256x256 RGB); "
            f"workers = processes generating images (`generate_demo_dataset(..., workers=N)`).\n\n"
            f"| workers | wall s | ms per image | MiB on disk |\n|---|---|---|---|\n{rows}\n\n"
            f"Best wall time for {n} images: "
            + ", ".join(f"{t:.2f} s ({w} workers)" for w, t in best.items()) + ".\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-chest", type=int, default=240)
    parser.add_argument("--n-fundus", type=int, default=240)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo_generation.md")
    args = parser.parse_args()
    where = machine()
    workers = [int(w) for w in args.workers.split(",")]
    text = report(args, time_runs(args.n_chest, args.n_fundus, args.repeat, workers), where)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
