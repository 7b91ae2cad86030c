"""What one optimizer step of each method costs, towers frozen vs the papers' two trainable top blocks.

Why: the fair protocol (`medhash experiment --protocol fair`) asks for >= 1,500 steps x 3 seeds x 3 noise
rates x every method on two datasets. Whether that fits a CPU session or needs the GPU depends on the
step cost of each method in each regime; this measures it on the real MedPix split the protocol uses.

Steps run through the trainer's own `fit` (feature cache warm, batch 32, the fair protocol's configs).
The cost is CPU seconds per step of this process with one torch thread, which stays meaningful on a
shared machine where wall time does not; wall seconds are listed beside it.

Usage:
    python benchmarks/fair_step_cost.py --library /work/runs/medpix-lib --out benchmarks/results/fair_step_cost.md
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from threading import Event

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import itertools

from benchmarks.benchkit import command_line, machine_lines
from medhash_app.core.experiment import relevance_samples
from medhash_app.core.library import Library
from trainer.data.splits import make_splits
from trainer.engine import fit
from trainer.experiment import parse_methods
from trainer.fair_protocol import FairRun, FairSpec, run_configs

SPLIT = {"query": 225, "val": 112, "train": 787}


def step_costs(samples, method: str, ttb: int, steps: int, work: Path) -> tuple[float, float]:
    """(median CPU s per step, median wall s per step) over `steps` steps after two warm-up steps."""
    variant = parse_methods(method)[0]
    spec = FairSpec([variant], split_sizes=SPLIT, trainable_top_blocks=ttb, num_workers=0)
    splits = make_splits(samples, sizes=SPLIT, seed=0)
    labels = sorted({label for s in samples for label in s.labels})
    run = FairRun("select", variant, 3e-4, 1.0, 0.0, 0, (64,), 24)
    model_cfg, train_cfg = run_configs(spec, run, splits, labels, work / "cache")
    train_cfg = dataclasses.replace(train_cfg, epochs=1, val_every=100)
    marks: list[tuple[int, float, float]] = []  # (step, CPU s, wall s); step events are throttled
    stop = Event()

    def on_event(event: dict) -> None:
        if event.get("event") == "step":
            marks.append((event["step"], time.process_time(), time.perf_counter()))
            if event["step"] >= steps + 2:
                stop.set()

    with tempfile.TemporaryDirectory(dir=work) as run_dir:  # a fresh run: never resume a finished one
        fit(model_cfg, train_cfg, splits, run_dir, progress=on_event, cancel=stop)
    later = [m for m in marks if m[0] >= 2]
    pairs = list(itertools.pairwise(later))
    cpu = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in pairs]
    wall = [(b[2] - a[2]) / (b[0] - a[0]) for a, b in pairs]
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, required=True, help="a MedPix library (medhash ingest)")
    parser.add_argument("--methods", default="base,mcph,tripah,prompthash")
    parser.add_argument("--regimes", default="0,2", help="trainable_top_blocks values")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per cell")
    parser.add_argument("--work", type=Path, default=Path("/tmp/medhash-step-cost"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    with Library.open(args.library, read_only=True) as lib:
        samples = relevance_samples(lib, ["modality", "location_category"])
    rows = []
    for method in args.methods.split(","):
        for ttb in (int(t) for t in args.regimes.split(",")):
            cpu, wall = step_costs(samples, method, ttb, args.steps, args.work)
            rows.append((method, ttb, cpu, wall))
            print(f"{method} ttb={ttb}: {cpu:.2f} CPU s/step, {wall:.2f} wall s/step", flush=True)
    write(args, rows)


def write(args: argparse.Namespace, rows: list[tuple[str, int, float, float]]) -> None:
    runs = 3 * 3 * 2 + 3  # final: 3 seeds x 3 noise rates x 2 datasets, + 3 selection lrs (one dataset)
    lines = ["# Step cost of each method: towers frozen vs two trainable top blocks", "",
             f"Command: `{command_line()}`", "", *machine_lines(), "",
             (f"MedPix split {SPLIT}, batch 32, 64 bits, feature cache warm, one torch thread; median of "
             f"{args.steps} steps after two warm-up steps. 'grid hours' = CPU hours of one method's share of the "
             f"fair grid at 1,500 steps ({runs} runs: 3 selection lrs + 3 seeds x 3 noise rates x 2 datasets), "
             "training steps only (validation and evaluation come on top)."), "",
             "| method | trainable top blocks | CPU s/step | wall s/step | grid CPU hours |",
             "|---|---:|---:|---:|---:|"]
    for method, ttb, cpu, wall in rows:
        lines.append(f"| {method} | {ttb} | {cpu:.2f} | {wall:.2f} | {cpu * 1500 * runs / 3600:.1f} |")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
