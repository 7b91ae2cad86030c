"""report.md and PR-curve PNGs of an experiment grid (trainer.experiment), laid out like the papers.

Tables: mAP@all per noise rate (rows: methods; columns: I->T then T->I at each code length; MCPH
Tables 1-2), the mAP lost to noise and the share of BASE's loss each method avoids, component
ablations (Tables 3-4), mAP with and without image captions, per-class AP of the rarest classes, the data audit's
precision on the noisy runs, and time per run (TriPAH Table III). A cell is the mean over seeds,
"mean ± sd" (sample standard deviation) when there are several. Numbers carry 3 decimals; the
exact values are in results/<run>.json.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from trainer.experiment import GridSpec, Variant, method_components

DIRECTION_NAMES = {"i2t": "I→T", "t2i": "T→I"}
Results = Sequence[dict[str, Any]]


def pct(rate: float) -> str:
    return f"{round(rate * 100)} %"


def cell(values: Sequence[float | None]) -> str:
    """'0.512' for one value, '0.512 ± 0.010' for several, '–' when none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _runs(results: Results, variant: Variant, noise: float) -> list[dict[str, Any]]:
    return [r for r in results if r["variant"] == variant.label and abs(r["noise_rate"] - noise) < 1e-9]


def _map(runs: Sequence[dict[str, Any]], key: str) -> str:
    return cell([r["metrics"][key]["map_all"] for r in runs if key in r["metrics"]])


# ---- the tables ----------------------------------------------------------------------------------
def map_tables(spec: GridSpec, results: Results) -> list[str]:
    """One table per noise rate: rows methods, columns I->T and T->I mAP@all at each code length."""
    header = ["Method"] + [f"{DIRECTION_NAMES[d]} {b}" for d in DIRECTION_NAMES for b in spec.bits]
    lines = ["## mAP@all (query split vs retrieval split)", ""]
    for noise in spec.noise_rates:
        rows = [[v.label] + [_map(_runs(results, v, noise), f"{d}@{b}") for d in DIRECTION_NAMES for b in spec.bits]
                for v in spec.variants]
        lines += [f"### mAP@all, noise {pct(noise)}", "", *table(header, rows), ""]
    return lines


def ablation_tables(spec: GridSpec, results: Results) -> list[str]:
    """Per method with switched-off variants: component check marks, mAP at the largest code length."""
    bits, lines = max(spec.bits), []
    for method in dict.fromkeys(v.method for v in spec.variants):
        variants = [v for v in spec.variants if v.method == method]
        names = sorted({k for v in variants for k in v.components})
        if not names:
            continue
        defaults = method_components(method)
        header = ["Variant", *names] + [f"{DIRECTION_NAMES[d]} n{pct(n)}" for n in spec.noise_rates for d in DIRECTION_NAMES]
        rows = [[v.label] + ["✓" if v.components.get(k, defaults.get(k, True)) else "✗" for k in names]
                + [_map(_runs(results, v, n), f"{d}@{bits}") for n in spec.noise_rates for d in DIRECTION_NAMES]
                for v in variants]
        lines += [f"### Ablation: {method} (mAP@all at {bits} bits)", "", *table(header, rows), ""]
    return (["## Ablations", "", *lines] if lines else [])


def rare_classes(results: Results, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The `count` classes with the fewest training positives (among those with queries)."""
    classes = next((r["per_class"]["classes"] for r in results if r.get("per_class")), {})
    with_queries = [(name, c) for name, c in classes.items() if c["query_positives"] > 0]
    return sorted(with_queries, key=lambda item: (item[1]["train_positives"], item[0]))[:count]


def rare_class_tables(spec: GridSpec, results: Results) -> list[str]:
    chosen = rare_classes(results, spec.rare_classes)
    if not chosen:
        return []
    header = ["Class", "train +", "queries"] + [f"{v.label} {DIRECTION_NAMES[d]}" for v in spec.variants
                                                for d in DIRECTION_NAMES]
    lines = ["## Rare classes", "",
             (f"AP per class at {max(spec.bits)} bits: mean over the queries labelled with the class, relevant = "
              "retrieval items labelled with it. Classes with the fewest training positives (counts from the "
              "first run's splits)."), ""]
    for noise in spec.noise_rates:
        rows = []
        for name, info in chosen:
            row = [name, str(info["train_positives"]), str(info["query_positives"])]
            for v in spec.variants:
                runs = _runs(results, v, noise)
                row += [cell([r["per_class"]["classes"].get(name, {}).get(f"{d}_ap") for r in runs])
                        for d in DIRECTION_NAMES]
            rows.append(row)
        lines += [f"### Rare classes, noise {pct(noise)}", "", *table(header, rows), ""]
    return lines


def audit_table(spec: GridSpec, results: Results) -> list[str]:
    rows = []
    for v in spec.variants:
        for noise in spec.noise_rates:
            audits = [r["audit"] for r in _runs(results, v, noise) if r.get("audit")]
            if audits:
                rows.append([v.label, pct(noise), cell([a["precision"] for a in audits]),
                             cell([a["base_rate"] for a in audits]), cell([a["label_changing_share"] for a in audits]),
                             audits[0]["score_kind"]])
    if not rows:
        return []
    top = pct(spec.top_fraction)
    return ["## Data audit on the noisy training pairs", "",
            (f"Each noisy run's training pairs (reports shuffled as its noise.json records) scored by its own "
             f"trained model (trainer/audit.py); precision = share of truly shuffled pairs among the top {top} "
             "most suspicious. Base rate = share of shuffled pairs (what random picking gets); label-changing "
             "share = shuffled pairs whose new report has other labels (the rest look correct to a "
             "label-trained model)."), "",
            *table(["Method", "Noise", f"Precision @ top {top}", "Base rate", "Label-changing share", "Score"], rows),
            ""]


def caption_table(spec: GridSpec, results: Results) -> list[str]:
    """Image codes with the image's caption vs without (null prompts), for models that use captions."""
    rows = []
    for v in spec.variants:
        for noise in spec.noise_rates:
            runs = [r for r in _runs(results, v, noise) if r.get("metrics_without_captions")]
            if not runs:
                continue
            row = [v.label, pct(noise)]
            for b in spec.bits:
                key = f"i2t@{b}"
                row += [cell([r["metrics"][key]["map_all"] for r in runs]),
                        cell([r["metrics_without_captions"][key]["map_all"] for r in runs])]
            for b in spec.bits:
                key = f"t2i@{b}"
                row += [cell([r["metrics"][key]["map_all"] for r in runs]),
                        cell([r["metrics_without_captions"][key]["map_all"] for r in runs])]
            rows.append(row)
    if not rows:
        return []
    header = ["Method", "Noise"] + [f"{DIRECTION_NAMES[d]} {b} {w}" for d in DIRECTION_NAMES for b in spec.bits
                                    for w in ("with", "without")]
    return ["## Captions: mAP@all with and without the image's caption", "",
            ("Same trained model, image codes encoded twice: with each image's own caption (captions file, "
             "else the built-in captioner's sentence from the image) and without any (learned null prompts). "
             "Report codes never see a caption, so only the image side changes."), "", *table(header, rows), ""]


def noise_drop_table(spec: GridSpec, results: Results, reference: str = "base") -> list[str]:
    """mAP lost from 0 % noise to each noise rate, and the share of the reference method's loss a
    method avoids: 1 - drop(method) / drop(reference) (100 % = no loss at all; negative = loses more)."""
    clean = [n for n in spec.noise_rates if n == 0]
    ref = next((v for v in spec.variants if v.label == reference), None)
    if not clean or ref is None:
        return []
    bits = max(spec.bits)

    def mean_map(v: Variant, noise: float, d: str) -> float | None:
        vals = [r["metrics"][f"{d}@{bits}"]["map_all"] for r in _runs(results, v, noise)]
        return float(np.mean(vals)) if vals else None

    rows = []
    for v in spec.variants:
        for noise in (n for n in spec.noise_rates if n > 0):
            row = [v.label, pct(noise)]
            for d in DIRECTION_NAMES:
                m0, mn, r0, rn = mean_map(v, 0.0, d), mean_map(v, noise, d), mean_map(ref, 0.0, d), mean_map(ref, noise, d)
                if None in (m0, mn, r0, rn):
                    row += ["–", "–"]
                    continue
                drop, ref_drop = m0 - mn, r0 - rn
                avoided = "–" if v is ref or ref_drop <= 1e-9 else f"{100 * (1 - drop / ref_drop):.0f} %"
                row += [f"{drop:+.3f}".replace("+", ""), avoided]
            rows.append(row)
    if not rows:
        return []
    header = ["Method", "Noise"] + [f"{DIRECTION_NAMES[d]} {w}" for d in DIRECTION_NAMES
                                    for w in ("drop", f"of {reference}'s drop avoided")]
    return [f"## Robustness: mAP@all lost to noise ({bits} bits)", "",
            (f"drop = mAP at 0 % minus mAP at the noise rate (means over seeds); avoided = 1 − drop / "
             f"{reference}'s drop at the same rate (only meaningful when {reference}'s drop is clearly larger "
             "than the run-to-run spread)."), "", *table(header, rows), ""]


def timing_table(results: Results) -> list[str]:
    def num(value: float | None, fmt: str) -> str:
        return "–" if value is None else format(value, fmt)

    machines = sorted({r.get("machine", "") for r in results})
    rows = []
    for r in results:
        query = r["timing"].get("query_ms") or {}
        rows.append([r["name"], num(r["timing"].get("train_s_per_epoch"), ".2f"), str(r["fit"]["epochs_run"]),
                     num(r["timing"].get("cache_fill_s"), ".1f"), num(r["timing"].get("encode_ms_per_pair"), ".2f"),
                     num(query.get("image_ms"), ".1f"), num(query.get("text_ms"), ".1f")]
                    + ([r.get("machine", "")] if len(machines) > 1 else []))
    header = (["Run", "Train s/epoch", "Epochs", "Cache fill s", "Encode ms/pair", "Query ms: image", "Query ms: report"]
              + (["Machine"] if len(machines) > 1 else []))
    return ["## Time per run", "",
            ("Train s/epoch: wall time of the epoch loop (validation included, frozen-stem cache fill shown "
             "apart) / epochs run in that call. Encode ms/pair: one image + its report, in batches, query and "
             "retrieval splits, images read from disk (from the frozen-stem cache with `--eval-from-cache`). "
             "Query ms: median time to encode one query as the app does (batch 1, full forward, the image "
             "decoded from its file; the first of 21 queries warms up), measured after training or, for a run "
             "made before this column existed, when the report was written."), "", *table(header, rows), ""]


# ---- plots ---------------------------------------------------------------------------------------
def pr_plots(out: Path, spec: GridSpec, results: Results) -> list[Path]:
    """pr-noise-<pct>.png per noise rate: precision vs recall over Hamming radius 0..K, largest K."""
    bits, paths = max(spec.bits), []
    for noise in spec.noise_rates:
        fig = Figure(figsize=(10, 4.2), layout="constrained")
        for ax, d in zip(fig.subplots(1, 2), DIRECTION_NAMES, strict=True):
            for v in spec.variants:
                curves = [r["pr"][f"{d}@{bits}"] for r in _runs(results, v, noise) if f"{d}@{bits}" in r.get("pr", {})]
                if curves:
                    recall = np.mean([c["recall"] for c in curves], axis=0)
                    precision = np.mean([c["precision"] for c in curves], axis=0)
                    found = recall > 0  # radii inside which no query finds anything: no point to plot
                    ax.plot(recall[found], precision[found], marker=".", markersize=3, label=v.label)
            ax.set(title=f"{DIRECTION_NAMES[d]}, {bits} bits, noise {pct(noise)}", xlabel="recall",
                   ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        path = out / f"pr-noise-{round(noise * 100)}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


# ---- the document --------------------------------------------------------------------------------
def header_lines(spec: GridSpec, results: Results, *, command: str, machine: str, data_name: str,
                 total_runs: int) -> list[str]:
    first = results[0]
    counts = first["splits"]
    classes = len(first.get("per_class", {}).get("classes", {}))
    return ["# Experiment report", "",
            f"- Command: `{command or '(called from Python)'}`",
            f"- Machine: {machine}",
            f"- Written: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
            (f"- Data: {data_name or 'samples given in Python'}: {counts['query'] + counts['retrieval']} pairs, "
             f"{classes} classes; splits of seed {first['seed']}: query {counts['query']}, retrieval "
             f"{counts['retrieval']} (train {counts['train']}, val {counts['val']} within it)"),
            (f"- Grid: methods {', '.join(v.label for v in spec.variants)}; code lengths "
             f"{', '.join(map(str, spec.bits))}; injected noise {', '.join(pct(n) for n in spec.noise_rates)}; "
             f"seeds {', '.join(map(str, spec.seeds))}; {spec.epochs} epoch(s); backbone {spec.backbone}"),
            "- Noise handling: " + "; ".join(f"{v.label}: {v.handling()}" for v in spec.variants),
            ("- Evaluation codes: " + ("from the float16 frozen-stem cache (`--eval-from-cache`; continuous codes "
                                       "within ~2e-3 of the full forward)" if spec.eval_from_cache else
                                       "full forward from the image files (equal to the app's stored codes)")),
            f"- Runs finished: {len(results)} of {total_runs}", "",
            ("One model per method × noise rate × seed is trained with all code lengths at once (the hash "
             "heads of every length share the backbone), so a table row's columns come from the same model. "
             "Models are selected on the validation split; mAP@all is computed on the held-out query split "
             "against the retrieval split (relevant = shares at least one label; Hamming ties count at their "
             "expected value, trainer/evaluate.py). Noise shuffles the reports of that fraction of training "
             "pairs only (seeded, saved as noise.json); the retrieval database keeps the true reports."), ""]


def write_report(out: Path, spec: GridSpec, results: Results, *, command: str, machine: str, data_name: str = "",
                 total_runs: int | None = None) -> Path:
    """Write out/report.md and the PR plots; returns the report's path."""
    plots = pr_plots(out, spec, results)
    lines = header_lines(spec, results, command=command, machine=machine, data_name=data_name,
                         total_runs=total_runs or len(results))
    lines += map_tables(spec, results) + noise_drop_table(spec, results) + ablation_tables(spec, results)
    lines += caption_table(spec, results)
    lines += ["## Precision-recall curves", "", f"Largest code length ({max(spec.bits)} bits), mean over seeds.", ""]
    lines += [f"![PR curves, noise {p.stem.rsplit('-', 1)[1]} %]({p.name})" for p in plots] + [""]
    lines += rare_class_tables(spec, results) + audit_table(spec, results) + timing_table(results)
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
