"""Epoch time of `engine.fit` with and without the frozen-stem cache (trainer/feature_cache.py).

Trains BASE (or `--method mcph|tripah|prompthash`) on the `embedded` backbone (EfficientNet-Lite0 + MiniLM-L6, top 2 blocks trainable) on
N real ODIR-5K fundus photographs (../shared/data/odir5k-256) for 3 epochs, once uncached
(augmented, decoded every epoch: `feature_cache=False`) and twice cached (a first run that fills
the cache, then a second run in a sibling folder that finds it warm). Times come from the
progress events: "train" = from the previous event to the last step of the epoch (data loading +
forward + backward), "epoch" = from the previous epoch event to this one (adds validation on a small
split and the two checkpoint writes). The median over epochs 2.. is reported, as wall-clock seconds
and as CPU seconds of this process (with `--threads 1 --workers 0` all work runs in this process on
one thread, so CPU seconds measure the work even on a machine shared with other jobs).

    python benchmarks/bench_feature_cache.py --n 500 --threads 1 --workers 0

`--manifest` takes another project manifest (JSONL: image, report, labels or fundus keywords);
`--synthetic` writes fundus-like 256 px JPEGs instead (same decode work, no third-party data);
`--random-weights` builds the backbone without its pretrained weights: the work per epoch is the
same, so it times machines where the weight packages are not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainer import engine
from trainer.config import ModelConfig, TrainConfig
from trainer.data.labels import labels_from_report
from trainer.data.manifest import load_manifest
from trainer.data.splits import Splits
from trainer.engine import fit
from trainer.models import build_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "odir5k-256" / "pairs.jsonl"


def _synthetic_manifest(folder: Path, n: int) -> Path:
    """n fundus-like JPEGs (a noisy textured disc, quality 75) with ODIR-style keyword reports."""
    words = ("normal fundus", "mild nonproliferative retinopathy", "cataract", "glaucoma", "pathological myopia",
             "hypertensive retinopathy", "dry age-related macular degeneration", "moderate non proliferative retinopathy")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    disc = ((yy - 128) ** 2 + (xx - 128) ** 2 < 118**2)[..., None]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = (rng.normal(0, 8, (256, 256, 3)) + [150, 60, 30] + 40 * np.sin(xx / (7 + i % 5))[..., None]) * disc
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"{i}.jpg", quality=75)
        rows.append({"image": f"images/{i}.jpg", "report": words[i % len(words)] + ("" if i % 3 else ", with drusen"),
                     "patient_id": str(i // 2)})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder / "pairs.jsonl"


def _splits(manifest: Path, n_train: int, n_val: int) -> Splits:
    samples = load_manifest(manifest, label_fn=lambda s: labels_from_report(s.report, "fundus"))
    samples = [s for s in samples if s.labels][: n_train + n_val]
    return Splits(query=[], retrieval=samples[:n_train], train=samples[:n_train], val=samples[n_train:])


def _run(splits: Splits, folder: Path, cache: bool, args: argparse.Namespace) -> dict:
    """One fit; returns per-epoch train / epoch seconds and the cache event."""
    stamps: list[tuple[float, float, dict]] = []
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=1e-4, num_workers=args.workers,
                        device=args.device, feature_cache=cache, warmup_steps=5, seed=0)
    started = time.perf_counter()
    labels = sorted({label for s in splits.train for label in s.labels})
    model_cfg = ModelConfig(method=args.method, backbone="embedded", bits=[64], embed_dim=256,
                            trainable_top_blocks=args.top, label_names=labels)
    fit(model_cfg, train, splits, folder,
        progress=lambda e: stamps.append((time.perf_counter(), time.process_time(), e)))
    out: dict = {"total": time.perf_counter() - started,
                 "cache": next((e for *_, e in stamps if e["event"] == "cache"), None)}
    for clock, name in ((0, ""), (1, "cpu_")):
        marks = [st[clock] for st in stamps if st[2]["event"] in ("start", "cache", "epoch")]
        last_steps = [st[clock] for st in stamps if st[2]["event"] == "step" and st[2]["step"] == st[2]["steps"]]
        epochs = [st[clock] for st in stamps if st[2]["event"] == "epoch"]
        begin = [max(m for m in marks if m < s) for s in last_steps]
        out[name + "train"] = [s - b for s, b in zip(last_steps, begin, strict=True)]
        out[name + "epoch"] = [b - a for a, b in zip([begin[0], *epochs[:-1]], epochs, strict=True)]
    return out


def _steady(values: list[float]) -> float:
    return statistics.median(values[1:] if len(values) > 1 else values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="base", help="base, mcph, tripah or prompthash")
    ap.add_argument("--n", type=int, default=500, help="training images")
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--top", type=int, default=2, help="ModelConfig.trainable_top_blocks")
    ap.add_argument("--manifest", type=Path, default=DATA)
    ap.add_argument("--synthetic", action="store_true", help="time on generated fundus-like JPEGs")
    ap.add_argument("--random-weights", action="store_true", help="timing only: skip the pretrained weights")
    ap.add_argument("--out", type=Path, default=None, help="write the results table (markdown) here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.random_weights:
        engine.build_model = lambda cfg, **kw: build_model(cfg, pretrained=False)
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            args.manifest = _synthetic_manifest(Path(tmp) / "synthetic", args.n + args.val)
        splits = _splits(args.manifest, args.n, args.val)
        runs = {"uncached": _run(splits, Path(tmp) / "runs" / "plain", False, args),
                "cached, cold": _run(splits, Path(tmp) / "runs" / "cold", True, args),
                "cached, warm": _run(splits, Path(tmp) / "runs" / "warm", True, args)}
    base, cpu_base = _steady(runs["uncached"]["train"]), _steady(runs["uncached"]["cpu_train"])
    rows = [("| run | train wall s/epoch | train CPU s/epoch | speed-up wall | speed-up CPU "
             "| epoch wall s (+ val, checkpoints) | cache fill s | whole fit s |"),
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        fill = f"{r['cache']['seconds']:.1f}" if r["cache"] else "-"
        rows.append(f"| {name} | {_steady(r['train']):.2f} | {_steady(r['cpu_train']):.2f} | "
                    f"{base / _steady(r['train']):.1f}x | {cpu_base / _steady(r['cpu_train']):.1f}x | "
                    f"{_steady(r['epoch']):.2f} | {fill} | {r['total']:.1f} |")
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    text = "\n".join([
        (f"Method {args.method}; N = {args.n} train + {args.val} val images of {'synthetic JPEGs' if args.synthetic else args.manifest}"
         f"{' (random weights)' if args.random_weights else ''}, batch {args.batch}, {args.epochs} epochs, "
         f"trainable_top_blocks {args.top}, {args.workers} loader workers, device {args.device} ({device}), "
         f"torch {torch.__version__}, {os.cpu_count()} CPUs visible, {torch.get_num_threads()} torch threads, "
         f"load average {os.getloadavg()[0]:.1f} at the end"),
        "", *rows, "",
        "Per-epoch train wall s: " + "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in r['train'])}"
                                               for k, r in runs.items()),
        "Per-epoch train CPU s: " + "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in r['cpu_train'])}"
                                              for k, r in runs.items()),
    ])
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
