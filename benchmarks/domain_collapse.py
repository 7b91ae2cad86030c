"""Does a domain collapse onto one code? BASE trained on a two-domain library, judged per domain.

Trains BASE (embedded backbone) on a library's cases with the given settings, then encodes 120
retrieval cases of each domain from their files and reports, per domain: the distinct 64-bit
image and report codes, the mean |h| of the continuous codes (tanh saturation) and the in-domain
image->report mAP@all (relevant = shares a label). Made for the demo library, whose 240 chest
radiographs all got one code with the default settings.

    medhash demo --library /tmp/demo-lib --no-window      # builds the library (and a model)
    python benchmarks/domain_collapse.py --library /tmp/demo-lib --feature-norm layer --out /tmp/dc-layer.json
    python benchmarks/domain_collapse.py --library /tmp/demo-lib --feature-norm batch --out /tmp/dc-batch.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medhash_app.core.library import Library
from medhash_app.core.training import library_samples
from trainer.checkpoint import load_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data.splits import make_splits
from trainer.data.transforms import eval_transform
from trainer.engine import fit
from trainer.evaluate import map_at_all


def _domain_stats(model, samples, labels: list[str]) -> dict:
    """Distinct codes, |h| and in-domain I->T mAP@all of these samples, encoded from their files."""
    tf = eval_transform(224)
    x = torch.stack([tf(Image.open(s.image_path).convert("RGB")) for s in samples])
    with torch.no_grad():
        h_img = model.encode_image(x)[64]
        h_txt = model.encode_text(model.backbone.tokenizer([s.report for s in samples]))[64]
    pack = lambda h: np.packbits((h > 0).numpy(), axis=1)
    y = np.array([[name in s.labels for name in labels] for s in samples], dtype=np.uint8)
    return {"cases": len(samples), "distinct_image_codes": len(np.unique(pack(h_img), axis=0)),
            "distinct_text_codes": len(np.unique(pack(h_txt), axis=0)),
            "mean_abs_h_image": round(float(h_img.abs().mean()), 3),
            "i2t_map_all_in_domain": round(float(map_at_all(pack(h_img), pack(h_txt), y, y)), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library", type=Path, required=True)
    ap.add_argument("--feature-norm", default="layer", choices=["layer", "batch"])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--top-blocks", type=int, default=2)
    ap.add_argument("--components", default="", help="e.g. similarity=off,classifier=on")
    ap.add_argument("--no-cache", action="store_true", help="train uncached, with augmentation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with Library.open(args.library, read_only=True) as lib:
        samples = library_samples(lib)
    splits = make_splits(samples, seed=0)
    labels = sorted({name for s in samples for name in s.labels})
    components = {k: v == "on" for k, _, v in (c.partition("=") for c in args.components.split(",") if c)}
    model_cfg = ModelConfig(method="base", backbone="embedded", bits=[16, 32, 64], label_names=labels,
                            trainable_top_blocks=args.top_blocks, components=components,
                            options={"feature_norm": args.feature_norm})
    work = Path(tempfile.mkdtemp(prefix="medhash-collapse-"))
    train_cfg = TrainConfig(epochs=args.epochs, lr=args.lr, seed=0, device="cpu", num_workers=0,
                            feature_cache=not args.no_cache, cache_dir=str(args.library / "models" / ".feature-cache"))
    started = time.perf_counter()
    result = fit(model_cfg, train_cfg, splits, work / "run")
    model, *_ = load_checkpoint(result.checkpoint_dir, device="cpu")
    model.eval()
    by_domain = {}
    for domain in sorted({s.metadata.get("domain") for s in splits.retrieval}):
        chosen = [s for s in splits.retrieval if s.metadata.get("domain") == domain][:120]
        by_domain[domain] = _domain_stats(model, chosen, labels)
    report = {"settings": {k: str(v) for k, v in vars(args).items()}, "best_val_map": round(result.best_val_map, 3),
              "fit_s": round(time.perf_counter() - started), "by_domain": by_domain}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
