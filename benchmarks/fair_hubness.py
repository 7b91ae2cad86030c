"""Rare-class hubness of the fair protocol's trained models (trainer/hubness.py), one row per final run.

Why: the MCPH rare-class collapse (docs/methods.md) showed as rare-class images coded nearer the
majority class's reports than their own. The fair report gives each model's rare-class AP; this
adds the distances behind it for the same checkpoints, split and test codes: own = mean Hamming
distance of a rare-class query to its own pair's code, hub = to the items labelled only with the
most frequent training class (ODIR: "N", normal fundus), and how often the own pair is the farther;
and, per rare class, which classes its queries' nearest items carry (a rare class can lose AP by being
coded next to another minority class, not the hub).

It reads a `medhash experiment --protocol fair` output folder: every finished final run without
noise whose best checkpoint is still under runs/ (a final run reused from selection points there).
Codes start from the run folder's frozen-stem cache (within ~2e-3 of the full forward the fair report
uses, several times faster on a CPU; a mean Hamming distance does not see the difference).

Usage:
    python benchmarks/fair_hubness.py --library /tmp/odir-lib --fair-out docs/results/fair-odir-1500 \
        --out benchmarks/results/fair_hubness_odir.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.benchkit import command_line, machine_lines
from medhash_app.core.library import Library
from medhash_app.core.training import library_samples
from trainer.checkpoint import load_checkpoint
from trainer.data.splits import load_splits
from trainer.engine import encode_dataset
from trainer.experiment import multi_hot
from trainer.feature_cache import CACHE_DIR_NAME, FeatureCache
from trainer.hubness import neighbour_classes, rare_class_hubness, rarest_classes

NEIGHBOURS = 20


def finished_models(fair_out: Path) -> list[tuple[dict, Path]]:
    """(result, best checkpoint folder) of each final no-noise run whose checkpoint is on disk."""
    found = []
    for path in sorted((fair_out / "results").glob("final_*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("noise_rate") or result.get("leak"):
            continue
        best = fair_out / "runs" / (result.get("reused_from") or result["name"]) / "best"
        if best.is_dir():
            found.append((result, best))
    return found


def model_hubness(samples: list, best: Path, cache_dir: Path, rare_n: int) -> dict:
    """Hubness both ways at the model's longest code length, on the test split it was evaluated on."""
    splits = load_splits(best / "splits.json", samples)
    model, _, _ = load_checkpoint(best, device="cpu")
    pairs = [*splits.query, *splits.retrieval]
    cache = FeatureCache.for_model(model, cache_dir)
    if cache is not None:
        cache.prepare(pairs, device=torch.device("cpu"), batch_size=64)
    image, text = encode_dataset(model, pairs, batch_size=64, device=torch.device("cpu"), cache=cache)
    bits = max(image)
    names = sorted({label for s in [*pairs, *splits.train] for label in s.labels})
    train_hot = multi_hot(splits.train, names)
    rare = rarest_classes(train_hot, names, rare_n)
    hub = names[int(np.argmax(train_hot.sum(axis=0)))]
    q, db = np.arange(len(splits.query)), np.arange(len(splits.query), len(pairs))
    labels = multi_hot(pairs, names)
    found = rare_class_hubness(image[bits], text[bits], labels, names, q, db, rare, hub, k=10)
    near = {d: neighbour_classes(src[bits][q], labels[q], dst[bits][db], labels[db], names, rare, k=NEIGHBOURS)
            for d, (src, dst) in (("i2t", (image, text)), ("t2i", (text, image)))}
    return {"bits": bits, "rare": rare, "hub": hub, "neighbours": near, **{d: h.to_dict() for d, h in found.items()}}


def table(rows: list[dict]) -> list[str]:
    head = ("| method | seed | direction | rare queries | own | hub | own farther than hub | hub share of top 10 "
            "(base rate) |")
    lines = [head, "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        for d in ("i2t", "t2i"):
            h = r[d]
            lines.append(f"| {r['method']} | {r['seed']} | {'I→T' if d == 'i2t' else 'T→I'} | {h['queries']} | "
                         f"{h['own']:.1f} | {h['hub']:.1f} | {h['nearer_hub']:.2f} | "
                         f"{h['hub_top_k']:.2f} ({h['hub_base_rate']:.2f}) |")
    return lines


def neighbour_table(rows: list[dict]) -> list[str]:
    """Per rare class: the share of its own label among a query's nearest items, and the other
    label most often there (its share)."""
    rare = rows[0]["rare"]
    lines = ["| method | seed | direction | " + " | ".join(rare) + " |", "|---|---:|---|" + "---|" * len(rare)]
    for r in rows:
        for d in ("i2t", "t2i"):
            cells = []
            for c in rare:
                share = r["neighbours"][d][c]
                other = max((n for n in share if n != c), key=share.get)
                cells.append(f"{share[c]:.2f} ({other} {share[other]:.2f})")
            lines.append(f"| {r['method']} | {r['seed']} | {'I→T' if d == 'i2t' else 'T→I'} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", type=Path, required=True, help="the library the fair runs were made from")
    parser.add_argument("--fair-out", type=Path, required=True, help="a `medhash experiment --protocol fair` --out")
    parser.add_argument("--rare", type=int, default=5, help="rarest classes (as the fair report's table)")
    parser.add_argument("--out", type=Path, required=True, help="results markdown to write")
    args = parser.parse_args()
    with Library.open(args.library, read_only=True) as lib:
        samples = library_samples(lib)
    rows = []
    for result, best in finished_models(args.fair_out):
        found = model_hubness(samples, best, args.fair_out / CACHE_DIR_NAME, args.rare)
        rows.append({"method": result["method"], "seed": result["seed"], "steps": result["steps"], **found})
        print(f"{result['name']}: own {found['i2t']['own']:.1f} / hub {found['i2t']['hub']:.1f} (I→T)", flush=True)
    if not rows:
        raise SystemExit(f"{args.fair_out}: no finished final run without noise has its checkpoint under runs/")
    first = rows[0]
    lines = ["# Rare-class hubness of the fair protocol's models", "", f"Command: `{command_line()}`", "",
             *machine_lines(), "",
             (f"Runs: {args.fair_out} (final runs, no noise; {first['steps']} steps). {first['bits']} bits. Rare "
             f"classes: the {args.rare} with the fewest training positives ({', '.join(first['rare'])}); hub: the "
             f"most frequent training class ({first['hub']}), items labelled with it alone. Mean Hamming distance "
             f"of a rare-class test query to its own pair's code (own) and to the hub items of the other modality "
             f"(hub); random codes give {first['bits'] // 2} for both. A collapsed model has own > hub."), "",
             *table(rows), "",
             (f"Where each rare class's queries land: the share of items of the query's own class among its "
              f"{NEIGHBOURS} nearest items of the other modality, and in brackets the other class most often "
              "there (an item can carry several labels)."), "",
             *neighbour_table(rows), ""]
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
