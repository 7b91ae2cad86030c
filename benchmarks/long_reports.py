"""Long reports: truncation vs section selection (impression first) vs chunked encoding, per method.

Data: the 1,971 real IU X-ray reports of ../shared/data/iu-reports.jsonl (text only), each written
as radiologists write it ("INDICATION: ...\\nCOMPARISON: ...\\nFINDINGS: ...\\nIMPRESSION: ...",
empty sections left out; the 11 reports without findings and impression are skipped). Each report
is paired with a synthetic radiograph drawn by medhash_app.core.demo.chest from the report's own
labels: the project's chest labeler (trainer.data.labels, uncertain = positive) on its findings and
impression (indication and comparison are history, as in benchmarks/labeler_agreement.py),
restricted to the findings the generator can draw, else "No Finding". So the image shows what the
report says, and retrieval relevance ("shares a label") follows the report.

For every method and every mode (ModelConfig.options["long_text"] = truncate | sections | chunks)
one model is trained with engine.fit on the seeded make_splits splits, all code lengths at once,
with the text window `--window` tokens (ModelConfig.text_window; 77 = CLIP's window, emulated on
the embedded MiniLM tower whose own limit is 256), then evaluated with
trainer.experiment.evaluate_in_memory (query split vs retrieval split, mAP@all, I->T and T->I),
on all queries and on the queries whose report is longer than the window.

    python benchmarks/long_reports.py --out /tmp/iu-long [--methods base,mcph,tripah,prompthash]
    python benchmarks/long_reports.py --out /tmp/iu-long-tiny --limit 60 --epochs 1 --backbone tiny \\
        --window 32 --results /tmp/iu-long-tiny/long_reports.md            # smoke run

`--out` holds the images, `manifest.jsonl` (reused when present), the runs, one shared feature
cache (its text stems are keyed by the long-report rule too, trainer/feature_cache.py) and
`results/<method>-<mode>-seed<seed>.json`; a finished run is skipped when the study is run again with the
same settings, an interrupted one resumes from its last epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchkit import REPO, SHARED, LoadMonitor, MarkdownReport, command_line
from PIL import Image

from medhash_app.core.demo.chest import DRAWN_FINDINGS, NO_FINDING, ChestCase, draw_chest, sample_chest_case
from trainer.checkpoint import load_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data.labels import labels_from_report
from trainer.data.long_text import LONG_TEXT_MODES, unwrap_tokenizer
from trainer.data.manifest import Sample
from trainer.data.splits import Splits, make_splits
from trainer.distributed import resolve_device
from trainer.engine import apply_method_defaults, fit
from trainer.errors import MedHashError
from trainer.experiment import evaluate_in_memory, machine_info, samples_hash
from trainer.feature_cache import FeatureCache
from trainer.models import available_methods, build_backbone

SECTIONS = (("INDICATION", "indication"), ("COMPARISON", "comparison"), ("FINDINGS", "findings"),
            ("IMPRESSION", "impression"))
IMAGE_SIZE = 256  # drawn at 512 px; the towers see 224 px (embedded) or 64 px (tiny)
DATASET_VERSION = 1  # bump when the report text, labels or drawing change: old folders are refused
COUNT_LENGTH = 4096  # tokens: long enough to count any report without truncation
DIRECTIONS = (("i2t", "I→T"), ("t2i", "T→I"))


# ---- the data set ----------------------------------------------------------------------------------
def report_text(row: dict[str, Any]) -> str:
    """The report in the order radiologists write it; empty sections left out."""
    return "\n".join(f"{head}: {(row.get(key) or '').strip()}" for head, key in SECTIONS
                     if (row.get(key) or "").strip())


def study_labels(row: dict[str, Any]) -> list[str]:
    """Labeler positives on findings + impression that the generator can draw, else No Finding."""
    text = " ".join((row.get(k) or "").strip() for k in ("findings", "impression")).strip()
    drawn = [name for name in labels_from_report(text, "chest") if name in DRAWN_FINDINGS]
    return drawn or [NO_FINDING]


def read_reports(path: Path, limit: int | None) -> tuple[list[dict[str, Any]], int]:
    """(rows with findings or impression, in file order, at most `limit`; number skipped)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    usable = [r for r in rows if (r.get("findings") or "").strip() or (r.get("impression") or "").strip()]
    return usable[:limit] if limit else usable, len(rows) - len(usable)


def _radiograph(case: ChestCase, rng: np.random.Generator) -> Image.Image:
    """The drawn study, 8-bit, windowed at the 1st-99th percentile like the demo DICOMs."""
    density = draw_chest(case, rng)
    lo, hi = np.percentile(density[::4, ::4], [1.0, 99.0])
    pixels = np.clip((density - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0) * 255.0 + 0.5
    return Image.fromarray(pixels.astype(np.uint8), "L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)


def _check_folder(out: Path, source: Path, seed: int) -> None:
    """Refuse a folder drawn from other reports, another draw seed or another dataset version."""
    info = {"version": DATASET_VERSION, "seed": seed,
            "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    path = out / "dataset.json"
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != info:
        raise MedHashError(out, "holds images drawn from other reports, another --draw-seed or an older version "
                                "of this script; give another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=1), encoding="utf-8")


def build_dataset(source: Path, out: Path, seed: int, limit: int | None) -> tuple[list[Sample], int]:
    """Samples (image written when missing, manifest.jsonl rewritten) and the number of skipped reports."""
    _check_folder(out, source, seed)
    rows, skipped = read_reports(source, limit)
    (out / "images").mkdir(exist_ok=True)
    samples, made, started = [], 0, time.perf_counter()
    for i, row in enumerate(rows):
        path = out / "images" / f"{row['uid']}.png"
        rng = np.random.default_rng([seed, i])
        case = sample_chest_case(rng, forced=study_labels(row))  # its labels: No Finding added beside devices
        if not path.is_file():
            tmp = path.with_name(f".{path.name}.tmp")
            _radiograph(case, rng).save(tmp, format="PNG")
            tmp.replace(path)
            made += 1
        samples.append(Sample(id=row["uid"], image_path=str(path), report=report_text(row), labels=case.labels,
                              patient_id=row["uid"]))
    manifest = [{"id": s.id, "image": f"images/{Path(s.image_path).name}", "report": s.report, "labels": s.labels,
                 "patient_id": s.patient_id} for s in samples]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in manifest), encoding="utf-8")
    print(f"data: {len(samples)} pairs ({made} images drawn in {time.perf_counter() - started:.0f} s, "
          f"{len(samples) - made} reused), {skipped} reports without findings or impression skipped", flush=True)
    return samples, skipped


# ---- token lengths -----------------------------------------------------------------------------------
def counting_tokenizer(backbone_spec: str) -> tuple[Any, int]:
    """(the tower's own tokenizer, untruncated for counting; the tower's own limit in tokens)."""
    backbone = build_backbone(backbone_spec, pretrained=False)
    tokenizer = unwrap_tokenizer(backbone.tokenizer)
    limit = backbone.max_text_length
    tokenizer.max_length = COUNT_LENGTH
    return tokenizer, limit


def token_counts(tokenizer: Any, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """Tokens of each text including the tower's special tokens, as the tower would count them."""
    out = [tokenizer(list(texts[i:i + batch]))["attention_mask"].sum(dim=1) for i in range(0, len(texts), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def impression_offsets(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Tokens before each report's IMPRESSION header (-1 without one): truncation at a window of at
    most that many tokens drops the whole impression."""
    heads = [t[: t.index("IMPRESSION:")] if "IMPRESSION:" in t else None for t in texts]
    counts = token_counts(tokenizer, [h or "" for h in heads])
    return np.where([h is None for h in heads], -1, counts)


def dataset_stats(samples: Sequence[Sample], lengths: np.ndarray, offsets: np.ndarray, window: int,
                  limit: int) -> dict[str, Any]:
    labels: dict[str, int] = {}
    for s in samples:
        for name in s.labels:
            labels[name] = labels.get(name, 0) + 1
    pct = (5, 25, 50, 75, 90, 95, 99, 100)
    return {"pairs": len(samples), "percentiles": dict(zip(pct, np.percentile(lengths, pct).tolist(), strict=True)),
            "over_window": float((lengths > window).mean()), "over_limit": float((lengths > limit).mean()),
            "impression_cut": float(((offsets >= window) & (offsets >= 0)).mean()), "labels": labels,
            "window": window, "limit": limit}


# ---- one run -------------------------------------------------------------------------------------------
def configs(method: str, mode: str, label_names: list[str], args: argparse.Namespace, out: Path
            ) -> tuple[ModelConfig, TrainConfig]:
    """The run's configs; the method's default training settings where the command gives none."""
    model_cfg = ModelConfig(method=method, backbone=args.backbone, bits=args.bits, text_window=args.window,
                            label_names=label_names, options={"long_text": mode})
    train_kw: dict[str, Any] = {"epochs": args.epochs, "seed": args.seed, "device": args.device,
                                "num_workers": args.workers, "cache_dir": str(out / ".feature-cache")}
    for key in ("batch_size", "lr"):
        if getattr(args, key) is not None:
            train_kw[key] = getattr(args, key)
    return model_cfg, apply_method_defaults(model_cfg, TrainConfig(**train_kw), set(train_kw))


def _fingerprint(model_cfg: ModelConfig, train_cfg: TrainConfig, splits: Splits, data: str) -> dict[str, Any]:
    train = {k: v for k, v in train_cfg.to_dict().items() if k not in ("device", "num_workers", "cache_dir")}
    return {"model_config": model_cfg.to_dict(), "train_config": train, "splits": splits.ids(), "data": data}


def _evaluate(best: Path, splits: Splits, long_ids: set[str], train_cfg: TrainConfig, args: argparse.Namespace
              ) -> dict[str, Any]:
    """evaluate_in_memory on all queries and on the long-report queries (codes from the run's cache)."""
    device = resolve_device(args.device)
    model, _, _ = load_checkpoint(best, device=str(device))
    cache = FeatureCache.for_model(model, train_cfg.cache_dir)
    if cache is not None:
        cache.prepare([*splits.query, *splits.retrieval], device=device, batch_size=args.eval_batch)
    long_splits = dataclasses.replace(splits, query=[s for s in splits.query if s.id in long_ids])
    kw = {"batch_size": args.eval_batch, "device": device, "num_workers": args.workers, "cache": cache}
    out = {"all": evaluate_in_memory(model, splits, **kw)["metrics"], "long": None,
           "eval_from_cache": cache is not None}
    if long_splits.query:
        out["long"] = evaluate_in_memory(model, long_splits, **kw)["metrics"]
    return out


def run_one(method: str, mode: str, splits: Splits, long_ids: set[str], args: argparse.Namespace, out: Path,
            data: str) -> dict[str, Any]:
    """Train (or resume) and evaluate one method x mode; a finished run with the same settings is reused."""
    label_names = sorted({name for s in splits.train for name in s.labels})
    model_cfg, train_cfg = configs(method, mode, label_names, args, out)
    key = _fingerprint(model_cfg, train_cfg, splits, data)
    name = f"{method}-{mode}-seed{args.seed}"
    result_file = out / "results" / f"{name}.json"
    if result_file.is_file():
        saved = json.loads(result_file.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            print(f"{method} / {mode}: finished earlier, reusing {result_file}", flush=True)
            return saved
    print(f"{method} / {mode}: training {train_cfg.epochs} epochs (lr {train_cfg.lr:g}, batch {train_cfg.batch_size})",
          flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fit(model_cfg, train_cfg, splits, out / "runs" / name, progress=_printer(method, mode))
    fit_s = (time.perf_counter() - wall, time.process_time() - cpu)
    if result.cancelled or result.checkpoint_dir is None:
        raise MedHashError(method, "training stopped before a checkpoint was written")
    wall, cpu = time.perf_counter(), time.process_time()
    evaluation = _evaluate(result.checkpoint_dir, splits, long_ids, train_cfg, args)
    saved = {"key": key, "method": method, "mode": mode, "lr": train_cfg.lr, "batch_size": train_cfg.batch_size,
             "best_val_map": result.best_val_map,
             "best_epoch": max(result.history, key=lambda h: (h["val_map"] or {}).get("mean", -1))["epoch"],
             "fit_s": fit_s[0], "fit_cpu_s": fit_s[1], "eval_s": time.perf_counter() - wall,
             "eval_cpu_s": time.process_time() - cpu, **evaluation}
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(saved, indent=1), encoding="utf-8")
    return saved


def _printer(method: str, mode: str) -> Callable[[dict[str, Any]], None]:
    """fit's progress events, one line per epoch and for the feature cache."""

    def show(event: dict[str, Any]) -> None:
        if event["event"] == "epoch":
            val = event.get("val_map") or {}
            print(f"  {method} / {mode}: epoch {event['epoch']}/{event['epochs']} loss "
                  f"{event['losses'].get('total', float('nan')):.3f} val mAP {val.get('mean', float('nan')):.3f}",
                  flush=True)
        elif event["event"] == "cache":
            print(f"  feature cache: {event['hits']} hits, {event['computed']} computed in {event['seconds']:.0f} s",
                  flush=True)
    return show


# ---- the report ------------------------------------------------------------------------------------------
def _map(metrics: dict[str, Any] | None, key: str) -> str:
    return "–" if metrics is None else f"{metrics[key]['map_all']:.3f}"


def _mean_map(metrics: dict[str, Any] | None, bits: Sequence[int]) -> float | None:
    if metrics is None:
        return None
    return float(np.mean([metrics[f"{d}@{b}"]["map_all"] for d, _ in DIRECTIONS for b in bits]))


def _summary(report: MarkdownReport, results: dict[str, list[dict[str, Any]]], bits: Sequence[int], n_all: int,
             n_long: int) -> None:
    """One row per method x mode: mAP@all averaged over both directions and all code lengths, and its
    change against truncation."""
    report.heading("Summary: mean mAP@all over I→T, T→I and all code lengths")
    rows = []
    for method, runs in results.items():
        ref = {part: _mean_map(next((r[part] for r in runs if r["mode"] == "truncate"), None), bits)
               for part in ("all", "long")}
        for r in runs:
            cells = []
            for part in ("all", "long"):
                value = _mean_map(r[part], bits)
                delta = "" if value is None or ref[part] is None or r["mode"] == "truncate" else \
                    f" ({value - ref[part]:+.3f})"
                cells.append("–" if value is None else f"{value:.3f}{delta}")
            rows.append([method, r["mode"], *cells])
    report.table(["method", "mode", f"all queries ({n_all})", f"long-report queries ({n_long})"], rows)
    report.paragraph("In brackets: the change against truncation of the same method.")


def write_report(path: Path, args: argparse.Namespace, stats: dict[str, Any], splits: Splits, n_long: int,
                 results: dict[str, list[dict[str, Any]]], load: LoadMonitor) -> None:
    report = MarkdownReport("Long reports: truncation vs sections (impression first) vs chunked encoding",
                            command_line())
    w = stats["window"]
    report.paragraph(f"Machine (trainer.experiment.machine_info): {machine_info(resolve_device(args.device))}. "
                     f"Finished {time.strftime('%Y-%m-%d %H:%M')}.")
    report.paragraph(
        f"Data: {stats['pairs']:,} real IU X-ray reports (`../shared/data/iu-reports.jsonl`, text only; "
        f"{args.skipped} without findings or impression skipped), written INDICATION, COMPARISON, FINDINGS, "
        "IMPRESSION in that order, each paired with a synthetic radiograph drawn by "
        "`medhash_app.core.demo.chest` from the report's labels (the project's chest labeler on findings + "
        "impression, restricted to the findings the generator draws, else No Finding). Relevance = shares a "
        f"label. Splits: `make_splits(seed={args.seed})` (default fractions): {splits.counts()}; "
        f"{n_long} of {len(splits.query)} queries have a report longer than the window.")
    report.paragraph(
        f"Setup: backbone `{args.backbone}`, text window {w} tokens (`ModelConfig.text_window`; the tower's own "
        f"limit is {stats['limit']}), code lengths {', '.join(map(str, args.bits))} trained together, {args.epochs} "
        "epochs, the method's default lr / batch size unless the command sets them, frozen-stem feature cache "
        "on (one folder shared by the modes), model selected on the validation split, evaluated with "
        "`trainer.experiment.evaluate_in_memory` (mAP@all over the retrieval split; codes from the cached "
        "float16 stems where the model can use them).")
    report.heading("Report lengths (tokens of the tower's own tokenizer, special tokens included)")
    pct = stats["percentiles"]
    report.table(["", *[f"p{p}" if p != 100 else "max" for p in pct]], [["tokens", *[int(v) for v in pct.values()]]])
    report.paragraph(f"Longer than the {w}-token window: **{stats['over_window']:.1%}** of reports; longer than the "
                     f"tower's own {stats['limit']}: {stats['over_limit']:.1%}. Truncation at {w} tokens drops the "
                     f"whole impression of {stats['impression_cut']:.1%} of reports (it starts after the window). "
                     "Labels: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["labels"].items(), key=lambda x: -x[1]))
                     + ".")
    _summary(report, results, args.bits, len(splits.query), n_long)
    for method, rows in results.items():
        report.heading(f"{method}: mAP@all, all queries ({len(splits.query)}) and long-report queries ({n_long})")
        headers = ["mode", "queries", *[f"{name}@{b}" for d, name in DIRECTIONS for b in args.bits]]
        table = []
        for r in rows:
            for part, n in (("all", len(splits.query)), ("long", n_long)):
                table.append([r["mode"], f"{part} ({n})", *[_map(r[part], f"{d}@{b}") for d, _ in DIRECTIONS
                                                             for b in args.bits]])
        report.table(headers, table)
        report.table(["mode", "lr", "batch", "best epoch", "val mAP", "train wall s", "train CPU s", "eval wall s"],
                     [[r["mode"], f"{r['lr']:g}", r["batch_size"], r["best_epoch"], f"{r['best_val_map']:.3f}",
                       round(r["fit_s"]), round(r["fit_cpu_s"]), round(r["eval_s"])] for r in rows])
    report.paragraph("Modes (trainer/data/long_text.py): truncate = the first words that fit the window; "
                     "sections = IMPRESSION, then FINDINGS, then the rest, then truncate; chunks = the whole report "
                     "in windows, each through the text tower, window globals mean-pooled per report. A report "
                     "that fits the window loses nothing in any mode (sections only reorders it), so the modes "
                     "differ mostly on the long reports, and through what training on them taught the model.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.render(load), encoding="utf-8")
    print(f"results so far: {path}", flush=True)


# ---- main ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for images, runs and caches (outside the repo)")
    p.add_argument("--data", type=Path, default=SHARED, help="folder holding iu-reports.jsonl")
    p.add_argument("--methods", default="base", help="comma-separated: base,mcph,tripah,prompthash")
    p.add_argument("--modes", default=",".join(LONG_TEXT_MODES))
    p.add_argument("--backbone", default="embedded")
    p.add_argument("--window", type=int, default=77, help="text window in tokens (77 = CLIP)")
    p.add_argument("--bits", default="16,32,64")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=None, help="default: the method's (32)")
    p.add_argument("--lr", type=float, default=None, help="default: the method's")
    p.add_argument("--seed", type=int, default=0, help="splits and training")
    p.add_argument("--draw-seed", type=int, default=0, help="the drawn radiographs")
    p.add_argument("--limit", type=int, default=None, help="use the first N usable reports (smoke runs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--eval-batch", type=int, default=64)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "long_reports.md")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.bits = sorted({int(b) for b in args.bits.split(",")})
    unknown = [m for m in args.methods if m not in available_methods()] + [m for m in args.modes
                                                                           if m not in LONG_TEXT_MODES]
    if unknown:
        p.error(f"unknown method(s) or mode(s): {', '.join(unknown)}")
    if args.out.resolve().is_relative_to(REPO):
        p.error("--out must be outside the repository (it holds images and model runs)")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    try:
        study(parse_args(argv))
    except MedHashError as exc:
        raise SystemExit(f"error: {exc}") from exc


def study(args: argparse.Namespace) -> None:
    source = args.data / "iu-reports.jsonl"
    if not source.is_file():
        print(f"SKIPPED: real test data not found at {source} (give --data or set MEDHASH_SHARED_DATA)")
        raise SystemExit(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    with LoadMonitor(every_s=30.0) as load:
        samples, args.skipped = build_dataset(source, args.out, args.draw_seed, args.limit)
        tokenizer, limit = counting_tokenizer(args.backbone)
        if args.window > limit:
            raise SystemExit(f"--window {args.window} exceeds the {args.backbone} text tower's limit of {limit}")
        lengths = token_counts(tokenizer, [s.report for s in samples])
        stats = dataset_stats(samples, lengths, impression_offsets(tokenizer, [s.report for s in samples]),
                              args.window, limit)
        splits = make_splits(samples, seed=args.seed)
        length_of = {s.id: int(n) for s, n in zip(samples, lengths, strict=True)}
        long_ids = {s.id for s in splits.query if length_of[s.id] > args.window}
        data = samples_hash(samples)
        results: dict[str, list[dict[str, Any]]] = {}
        for method in args.methods:
            for mode in args.modes:
                results.setdefault(method, []).append(run_one(method, mode, splits, long_ids, args, args.out, data))
                write_report(args.results, args, stats, splits, len(long_ids), results, load)


if __name__ == "__main__":
    main()
