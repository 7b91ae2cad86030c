"""MCPH's rare-class collapse on ODIR-5K: rare-class AP both ways and the hubness of rare queries.

Trains BASE and/or MCPH (embedded backbone, one code length, the same batch, learning rate and
epochs for both: the fair comparison point) on the real ODIR-5K fundus photographs of
`../shared/data/odir5k-256` (labels = the 8 ODIR classes from the graders' keywords,
patient-disjoint splits of seed 0), selects each model on validation, and evaluates the query
split against the retrieval split from the frozen-stem cache:

- mAP@all image->text and text->image;
- AP per class for the classes with the fewest training positives (the report's rare-class table)
  and their mean;
- hubness (trainer/hubness.py): for the query pairs with a rare label, the mean Hamming distance
  from a query to its own pair's code and to the codes of the "normal fundus"-only database items
  of the other modality, both ways, and the share of those items among its 10 nearest.

Each finished run is saved as `<out>/results/<label>-<method>.json` (a re-run skips it); the
Markdown file is written from every result in `<out>/results`, so results of the code before a
change ("before", run from a git worktree of that commit on PYTHONPATH) and after it ("after")
land in one table:

    python benchmarks/mcph_rare_classes.py --out /tmp/mcph-rare --label after --methods base,mcph
    git worktree add /tmp/mcph-before <commit before the fix>
    PYTHONPATH=/tmp/mcph-before python benchmarks/mcph_rare_classes.py --out /tmp/mcph-rare --label before \
        --methods mcph

`--train-limit N` trains on the first N training pairs only (the retrieval set stays whole), for
machines where the full set does not fit the time at hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from benchkit import RESULTS, LoadMonitor, MarkdownReport, command_line, require_shared

import trainer
from trainer.checkpoint import load_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data.labels import labels_from_report
from trainer.data.manifest import load_manifest
from trainer.data.splits import Splits, make_splits
from trainer.engine import encode_dataset, fit
from trainer.evaluate import distance_histograms, map_at_all, metrics_from_histograms, pack_signs
from trainer.feature_cache import FeatureCache
from trainer.hubness import rare_class_hubness, rarest_classes

HUB = "N"  # "normal fundus": 45 % of ODIR-5K's eyes
CODE_PATHS = ("trainer/models", "trainer/losses.py", "trainer/engine.py", "trainer/hubness.py")  # what shapes the numbers


def _code_version() -> str:
    """The commit of the `trainer` package this run imported (and whether CODE_PATHS had uncommitted changes)."""
    root = Path(trainer.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *CODE_PATHS],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"unknown ({root})"
    return head + (" + uncommitted changes" if dirty else "")


def _components(text: str) -> dict[str, bool]:
    """"contrastive=off,lta=on" -> {"contrastive": False, "lta": True}."""
    out = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        name, _, value = item.partition("=")
        out[name.strip()] = value.strip().lower() in ("on", "true", "1")
    return out


def _samples(manifest: Path):
    return load_manifest(manifest, label_fn=lambda s: labels_from_report(s.report, "fundus"))


def _multi_hot(samples, names) -> np.ndarray:
    return np.array([[n in s.labels for n in names] for s in samples], dtype=np.uint8)


def _class_ap(src: np.ndarray, dst: np.ndarray, labels: np.ndarray, c: int, q: np.ndarray, db: np.ndarray) -> float:
    """Mean AP over the queries labelled with class c, relevant = database items labelled with c."""
    rows = q[labels[q, c] > 0]
    n, r = distance_histograms(src[rows], dst[db], np.ones((len(rows), 1), np.uint8), labels[db, c:c + 1])
    return float(metrics_from_histograms(n, r)["map"])


def run(method: str, label: str, name: str, splits: Splits, names: list[str], args: argparse.Namespace) -> dict:
    out = args.out / "runs" / name
    components = _components(args.components) if method == "mcph" else {}
    model_cfg = ModelConfig(method=method, backbone="embedded", bits=[args.bits], label_names=names,
                            components=components)
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, weight_decay=0.01, seed=args.seed,
                            device="cpu", num_workers=0, cache_dir=str(args.out / ".feature-cache"),
                            noise_handling="adaptive_temperature" if method == "mcph" else "none")
    best, fit_file, state = out / "best", out / "fit.json", out / "last" / "trainer_state.json"
    # a fit that finished before its evaluation failed resumes at its end (engine.fit resumes from last/)
    done_before = state.is_file() and json.loads(state.read_text())["epoch"] >= args.epochs
    started = time.perf_counter()
    fitted = fit(model_cfg, train_cfg, splits, out)
    if fit_file.is_file():
        fit_info = json.loads(fit_file.read_text())
    else:
        fit_info = {"fit_s": None if done_before else time.perf_counter() - started}
        fit_file.write_text(json.dumps(fit_info), encoding="utf-8")
    fit_info["best_val_map"] = fitted.best_val_map
    model, _, _ = load_checkpoint(best, device="cpu")
    pairs = [*splits.query, *splits.retrieval]
    cache = FeatureCache.for_model(model, args.out / ".feature-cache")
    if cache is not None:
        cache.prepare(pairs, device=torch.device("cpu"), batch_size=64)
    started = time.perf_counter()
    image, text = encode_dataset(model, pairs, batch_size=64, cache=cache)
    encode_s = time.perf_counter() - started
    img, txt = pack_signs(image[args.bits]), pack_signs(text[args.bits])
    labels = _multi_hot(pairs, names)
    q, db = np.arange(len(splits.query)), np.arange(len(splits.query), len(pairs))
    rare = rarest_classes(_multi_hot(splits.train, names), names, args.rare)
    per_class = {c: {"i2t": _class_ap(img, txt, labels, names.index(c), q, db),
                     "t2i": _class_ap(txt, img, labels, names.index(c), q, db)} for c in rare}
    hub = rare_class_hubness(img, txt, labels, names, q, db, rare, HUB, k=10)
    return {"label": label, "method": method, "components": components, "code": _code_version(), "bits": args.bits, "epochs": args.epochs,
            "batch": args.batch, "lr": args.lr, "seed": args.seed, "train_pairs": len(splits.train),
            "queries": len(splits.query), "retrieval": len(splits.retrieval), **fit_info,
            "encode_s": encode_s, "eval_from_cache": cache is not None,
            "map": {"i2t": float(map_at_all(img[q], txt[db], labels[q], labels[db])),
                    "t2i": float(map_at_all(txt[q], img[db], labels[q], labels[db]))},
            "rare": rare, "per_class_ap": per_class,
            "rare_mean_ap": {d: float(np.mean([per_class[c][d] for c in rare])) for d in ("i2t", "t2i")},
            "hubness": {d: h.to_dict() for d, h in hub.items()}}


def _variant(r: dict) -> str:
    switches = ", ".join(f"{k}={'on' if v else 'off'}" for k, v in (r.get("components") or {}).items())
    return r["label"] + (f" ({switches})" if switches else "")


def report(results: list[dict], command: str, load: LoadMonitor) -> MarkdownReport:
    md = MarkdownReport("MCPH's rare classes on ODIR-5K: AP and hubness, before and after the fix", command)
    order = sorted(results, key=lambda r: (r["method"] != "base", r["label"] != "before", _variant(r)))
    first = order[0]
    md.paragraph(f"Data: ODIR-5K (`../shared/data/odir5k-256`), labels from the graders' keywords, patient-disjoint "
                 f"splits of seed {first['seed']}: {first['queries']} queries against {first['retrieval']} retrieval "
                 f"items; trained on {first['train_pairs']} pairs. Embedded backbone (last two layers of each tower "
                 f"trainable), {first['bits']} bits, {first['epochs']} epochs, batch {first['batch']}, AdamW lr "
                 f"{first['lr']:g} (weight decay 0.01) for every method, model selection on validation, evaluation "
                 f"from the float16 frozen-stem cache. MCPH with its adaptive-temperature noise handling. Rare "
                 f"classes: the {len(first['rare'])} with the fewest training positives ({', '.join(first['rare'])}); "
                 f"hub: the '{HUB}' (normal fundus) items. Random {first['bits']}-bit codes are "
                 f"{first['bits'] // 2} bits apart.")
    rows = []
    for r in order:
        h_i, h_t = r["hubness"]["i2t"], r["hubness"]["t2i"]
        rows.append([r["method"], _variant(r), r["code"], f"{r['map']['i2t']:.3f}", f"{r['map']['t2i']:.3f}",
                     f"{r['rare_mean_ap']['i2t']:.3f}", f"{r['rare_mean_ap']['t2i']:.3f}",
                     f"{h_i['own']:.1f}", f"{h_i['hub']:.1f}", f"{h_i['hub_top_k']:.2f}",
                     f"{h_t['own']:.1f}", f"{h_t['hub']:.1f}",
                     "not recorded" if r["fit_s"] is None else f"{r['fit_s'] / 60:.1f}"])
    md.table(["method", "code", "commit", "mAP I→T", "mAP T→I", "rare AP I→T", "rare AP T→I",
              "I→T own", "I→T hub", "I→T hub@10", "T→I own", "T→I hub", "fit min"], rows)
    md.paragraph(f"own / hub: mean Hamming distance from a rare-class query to its own pair's code / to the hub "
                 f"items' codes of the other modality ({first['hubness']['i2t']['queries']} rare queries, "
                 f"{first['hubness']['i2t']['hub_items']} hub items); hub@10: share of hub items among the query's "
                 f"10 nearest (their share of the database: {first['hubness']['i2t']['hub_base_rate']:.2f}).")
    md.heading("AP per rare class")
    md.table(["method", "code", *[f"{c} I→T" for c in first["rare"]], *[f"{c} T→I" for c in first["rare"]]],
             [[r["method"], _variant(r), *[f"{r['per_class_ap'][c]['i2t']:.3f}" for c in r["rare"]],
               *[f"{r['per_class_ap'][c]['t2i']:.3f}" for c in r["rare"]]] for r in order])
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="runs, cache and per-run results (outside the repo)")
    ap.add_argument("--label", default="after", help="what code this is, e.g. before / after")
    ap.add_argument("--methods", default="base,mcph")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--components", default="", help="MCPH component switches, e.g. contrastive=off")
    ap.add_argument("--rare", type=int, default=5, help="how many of the rarest classes")
    ap.add_argument("--train-limit", type=int, default=None, help="train on the first N training pairs only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--results", type=Path, default=RESULTS / "mcph_rare_classes.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    samples = _samples(require_shared("odir5k-256", "pairs.jsonl"))
    splits = make_splits(samples, seed=args.seed)
    if args.train_limit:
        splits = Splits(splits.query, splits.retrieval, splits.train[:args.train_limit], splits.val, splits.seed)
    names = sorted({label for s in samples for label in s.labels})
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    with LoadMonitor() as load:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            slug = "".join(f"-{k}_{'on' if v else 'off'}" for k, v in _components(args.components).items())
            name = f"{args.label}-{method}" + (slug if method == "mcph" else "")
            path = args.out / "results" / f"{name}.json"
            if path.is_file():
                print(f"{path} exists: skipped")
                continue
            result = run(method, args.label, name, splits, names, args)
            result["command"] = command_line()
            path.write_text(json.dumps(result, indent=1), encoding="utf-8")
            print(json.dumps({k: result[k] for k in ("label", "method", "map", "rare_mean_ap", "fit_s")}), flush=True)
    results = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((args.out / "results").glob("*.json"))]
    commands = sorted({r["command"] for r in results})
    md = report(results, commands[0] if len(commands) == 1 else " ; ".join(commands), load)
    md.emit(args.results, load)


if __name__ == "__main__":
    main()
