"""report.md of the fair protocol (trainer/fair_protocol.py): how each method was tuned, what it
scored, and where it stands against BASE with paired bootstrap intervals.

Sections: the protocol as declared; the selection grid (mirrored val mAP per lr x backbone-lr
scale, the chosen pair marked); test mAP@all (mean ± sd over seeds); method - BASE with its 95 %
interval and verdict; each method's change from noise 0; rare-class AP; instance recall (own
report / own case); the linear-probe reference; the leak study; the runs still pending; the commands
that trained the runs. Every number comes from results/<run>.json.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer.experiment_report import DIRECTION_NAMES, cell, pct, table
from trainer.paired_bootstrap import paired_class_interval, paired_interval

Results = dict[str, dict[str, Any]]
RARE = 5


def _towers(spec: Any) -> str:
    """Which tower layers trained: the regime a reader must know to read the numbers."""
    ttb = spec.trainable_top_blocks
    if ttb is None:
        return "each method's own trainable tower blocks (2)"
    if ttb == 0:
        return ("both towers frozen (trainable_top_blocks 0: only the methods' own heads, prompts and fusion "
                "layers train; the backbone-lr scale has nothing to act on)")
    return f"the top {ttb} block(s) of each tower trainable"


def _final(results: Results, label: str, noise: float, *, leak: bool = False) -> list[dict[str, Any]]:
    return sorted((r for r in results.values() if r["phase"] == ("leak" if leak else "final")
                   and r["variant"] == label and abs(r["noise_rate"] - noise) < 1e-9), key=lambda r: r["seed"])


def protocol_lines(spec: Any, command: str, data_name: str, splits: dict[str, int], results: Results) -> list[str]:
    machines = sorted({r["machine"] for r in results.values() if r.get("machine")})
    return [
        "# Fair comparison of the hashing methods", "",
        f"Data: {data_name or '–'}; splits (one split, seed {spec.split_seed}, patient/case-disjoint): "
        + ", ".join(f"{k} {v}" for k, v in splits.items()) + ".",
        (f"Every run: batch {spec.batch_size}, at least {spec.steps} optimizer steps (whole epochs; the exact "
        f"count is in each run's JSON), AdamW with warm-up and cosine decay, the best epoch chosen on "
        f"validation that mirrors the test (val queries against train + val items, each query's own item "
        f"left out), validated about {spec.val_points} times per run. Backbone: {spec.backbone}, "
        f"{_towers(spec)}."),
        (f"Tuning: lr in {spec.lr_grid} x backbone-lr scale in {spec.backbone_lr_grid}, chosen per method on "
        f"that validation at {spec.select_bits} bits, seed {spec.select_seed}, no noise, "
        f"{spec.select_steps or spec.steps} steps. Final runs: seeds {spec.seeds} (initialisation, batch "
        f"order and injected noise), noise {', '.join(pct(n) for n in spec.noise_rates)}, {spec.bits} bits."),
        (f"Intervals: paired per-query bootstrap ({spec.bootstrap} resamples, 95 %) of the method's AP minus "
        "BASE's on the same test queries, averaged over the seeds both have; \"beats\"/\"loses\" only "
        "when the whole interval is above/below zero."),
        f"Generated {dt.date.today().isoformat()}. Machine(s): {'; '.join(machines) or '–'}.", "",
        "The call that wrote this report (the commands that trained the runs are listed at the end):", "",
        "```bash", command or "(command not recorded)", "```", ""]


def selection_lines(spec: Any, results: Results, chosen: dict[str, tuple[float, float]]) -> list[str]:
    cols = [(lr, bb) for lr in spec.lr_grid for bb in spec.backbone_lr_grid]
    rows = []
    for v in spec.variants:
        row = [v.label]
        for lr, bb in cols:
            hit = [r for r in results.values() if r["phase"] == "select" and r["variant"] == v.label
                   and r["lr"] == lr and r["backbone_lr_scale"] == bb]
            text = f"{hit[0]['best_val_map']:.3f}" if hit else "–"
            row.append(f"**{text}**" if chosen.get(v.label) == (lr, bb) else text)
        rows.append(row)
    header = ["Method"] + [f"lr {lr:g}, bb ×{bb:g}" for lr, bb in cols]
    return ["## Selection (mirrored validation mAP, mean of I→T and T→I; chosen in bold)", "",
            *table(header, rows), ""]


def map_lines(spec: Any, results: Results) -> list[str]:
    lines = ["## Test mAP@all (mean ± sd over seeds; n = seeds finished)", ""]
    header = ["Method", "n"] + [f"{DIRECTION_NAMES[d]} {b}" for d in DIRECTION_NAMES for b in spec.bits]
    for noise in spec.noise_rates:
        rows = []
        for v in spec.variants:
            runs = _final(results, v.label, noise)
            rows.append([v.label, str(len(runs))] + [cell([r["metrics"][f"{d}@{b}"]["map_all"] for r in runs])
                                                     for d in DIRECTION_NAMES for b in spec.bits])
        lines += [f"### Noise {pct(noise)}", "", *table(header, rows), ""]
    return lines


def seed_pairs(results: Results, label: str, base_label: str, noise: float,
               *, leak: bool = False) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(method run, BASE run) for each seed both finished, in seed order; a pair is only comparable
    per query when both ranked the same test queries, so a mismatch is an error, not a silent skip."""
    mine = {r["seed"]: r for r in _final(results, label, noise, leak=leak)}
    base = {r["seed"]: r for r in _final(results, base_label, noise)}
    pairs = [(mine[s], base[s]) for s in sorted(set(mine) & set(base))]
    if any(m["query_ids"] != b["query_ids"] for m, b in pairs):
        raise ValueError(f"{label} and {base_label} were evaluated on different queries")
    return pairs


def paired(results: Results, label: str, base_label: str, noise: float, key: str, resamples: int,
           *, leak: bool = False) -> Any:
    """Interval of `label` minus `base_label` on `key` ("i2t@64") over the seeds both finished."""
    pairs = seed_pairs(results, label, base_label, noise, leak=leak)
    if not pairs:
        return None
    return paired_interval([m["per_query_ap"][key] for m, _ in pairs], [b["per_query_ap"][key] for _, b in pairs],
                           resamples=resamples)


def versus_base_lines(spec: Any, results: Results) -> list[str]:
    base = next((v.label for v in spec.variants if v.method == "base"), None)
    if base is None:
        return []
    lines = ["## Each method minus BASE: mean difference [95 % interval] verdict", ""]
    header = ["Method"] + [f"{DIRECTION_NAMES[d]} {b}" for d in DIRECTION_NAMES for b in spec.bits]
    for noise in spec.noise_rates:
        rows = []
        for v in spec.variants:
            if v.label == base:
                continue
            cells = []
            for d in DIRECTION_NAMES:
                for b in spec.bits:
                    iv = paired(results, v.label, base, noise, f"{d}@{b}", spec.bootstrap)
                    cells.append(iv.text() + (f" (n={iv.seeds})" if iv is not None and iv.seeds < len(spec.seeds) else "")
                                 if iv is not None else "–")
            rows.append([v.label] + cells)
        lines += [f"### Noise {pct(noise)}", "", *table(header, rows), ""]
    return lines


def noise_change(results: Results, label: str, noise: float, key: str) -> tuple[float, int] | None:
    """Mean over seeds of (mAP at `noise` minus the same seed's mAP at noise 0) on `key`, and the
    number of seeds that pair up: what the noise costs the method itself, free of seed-to-seed spread."""
    clean = {r["seed"]: r for r in _final(results, label, 0.0)}
    diffs = [r["metrics"][key]["map_all"] - clean[r["seed"]]["metrics"][key]["map_all"]
             for r in _final(results, label, noise) if r["seed"] in clean]
    return (float(np.mean(diffs)), len(diffs)) if diffs else None


def noise_change_lines(spec: Any, results: Results) -> list[str]:
    """One row per method and noise rate > 0 with a noise-0 run of the same seed (else no section)."""
    header = ["Noise", "Method", "n"] + [f"{DIRECTION_NAMES[d]} {b}" for d in DIRECTION_NAMES for b in spec.bits]
    rows = []
    for noise in (n for n in spec.noise_rates if n > 0):
        for v in spec.variants:
            cells = [noise_change(results, v.label, noise, f"{d}@{b}") for d in DIRECTION_NAMES for b in spec.bits]
            if any(cells):
                n = max(c[1] for c in cells if c)
                rows.append([pct(noise), v.label, str(n)] + [f"{c[0]:+.3f}" if c else "–" for c in cells])
    return [("## Change from noise 0: mean over seeds of the noisy run's mAP minus the same seed's noise-0 run "
             "(n = seeds with both)"), "", *table(header, rows), ""] if rows else []


def _rare_classes(run: dict[str, Any]) -> list[str]:
    """The RARE classes with the fewest training positives among those the test queries hold."""
    classes = run["per_class"]["classes"]
    held = [name for name, c in classes.items() if c["query_positives"]]
    return sorted(held, key=lambda name: classes[name]["train_positives"])[:RARE]


def rare_mean(run: dict[str, Any], direction: str) -> float | None:
    classes = run["per_class"]["classes"]
    rare = _rare_classes(run)
    return float(np.mean([classes[name][f"{direction}_ap"] for name in rare])) if rare else None


def rare_paired(results: Results, label: str, base_label: str, noise: float, direction: str,
                resamples: int) -> Any:
    """Interval of `label` minus `base_label` on the rare-class AP over the seeds both finished;
    None when a run predates per-query class APs (evaluation version 1) or nothing pairs up."""
    pairs = seed_pairs(results, label, base_label, noise)
    if not pairs or any("query_index" not in c for pair in pairs for r in pair
                        for c in r["per_class"]["classes"].values()):
        return None
    first_base = pairs[0][1]
    key = f"{direction}_query_ap"
    classes = [(first_base["per_class"]["classes"][name]["query_index"],
                [m["per_class"]["classes"][name][key] for m, _ in pairs],
                [b["per_class"]["classes"][name][key] for _, b in pairs])
               for name in _rare_classes(first_base)]
    return paired_class_interval(classes, len(first_base["query_ids"]), resamples=resamples)


def rare_lines(spec: Any, results: Results) -> list[str]:
    base = next((v.label for v in spec.variants if v.method == "base"), None)
    lines = [(f"## Rare classes: mean AP over the {RARE} classes with the fewest training positives "
             "(largest code length; mean over seeds; minus BASE: paired bootstrap over the test queries)"), ""]
    rows = []
    for noise in spec.noise_rates:
        for v in spec.variants:
            runs = _final(results, v.label, noise)
            if not runs:
                continue
            row = [pct(noise), v.label] + [cell([rare_mean(r, d) for r in runs]) for d in DIRECTION_NAMES]
            for d in DIRECTION_NAMES:
                iv = rare_paired(results, v.label, base, noise, d, spec.bootstrap) if base and v.label != base else None
                row.append(iv.text() + (f" (n={iv.seeds})" if iv.seeds < len(spec.seeds) else "") if iv is not None else "–")
            rows.append(row)
    header = ["Noise", "Method", "I→T", "T→I", "minus BASE I→T [95 %]", "minus BASE T→I [95 %]"]
    return lines + table(header, rows) + [""] if rows else []


def recall_lines(spec: Any, results: Results) -> list[str]:
    """Instance-level recall inside the query split at the largest length, no noise."""
    bits = str(max(spec.bits))
    keys = [f"{d}_{kind}_r@{k}" for d in DIRECTION_NAMES for kind in ("own", "case") for k in (1, 5, 10)]
    rows = []
    for v in spec.variants:
        runs = [r for r in _final(results, v.label, 0.0) if r.get("instance_recall")]
        if runs:
            rows.append([v.label] + [cell([r["instance_recall"][bits][k] for r in runs]) for k in keys])
    if not rows:
        return []
    header = ["Method"] + [k.replace("i2t", "I→T").replace("t2i", "T→I").replace("_", " ") for k in keys]
    return [(f"## Instance recall inside the query split ({bits} bits, no noise): own report / own image "
            "(\"own\") and any item of the same case or patient (\"case\")"), "", *table(header, rows), ""]


def probe_lines(out: Path) -> list[str]:
    path = out / "probe.json"
    if not path.is_file():
        return []
    import json
    p = json.loads(path.read_text(encoding="utf-8"))
    return ["## Linear-probe reference of the frozen features", "",
            ("One multi-label logistic regression per modality on the pretrained towers' global features "
            "(trainer/linear_probe.py; weight decay chosen on val); retrieval ranks the other modality by "
            "P(share a label) from the two probes, continuous scores, no code length."), "",
            *table(["", "I→T mAP", "T→I mAP", "image probe AUC (query)", "text probe AUC (query)"],
                   [["probe", f"{p['i2t_map']:.3f}", f"{p['t2i_map']:.3f}", f"{p['image']['query_macro_auc']:.3f}",
                     f"{p['text']['query_macro_auc']:.3f}"]]), ""]


def leak_lines(spec: Any, results: Results) -> list[str]:
    rows = []
    for v in spec.variants:
        if not _final(results, v.label, 0.0, leak=True):
            continue
        for d in DIRECTION_NAMES:
            for b in spec.bits:
                key = f"{d}@{b}"
                leak = [r["metrics"][key]["map_all"] for r in _final(results, v.label, 0.0, leak=True)]
                honest = [r["metrics"][key]["map_all"] for r in _final(results, v.label, 0.0)]
                iv = paired(results, v.label, v.label, 0.0, key, spec.bootstrap, leak=True)
                rows.append([v.label, f"{DIRECTION_NAMES[d]} {b}", cell(honest), cell(leak), iv.text() if iv else "–"])
    if not rows:
        return []
    return ["## Leak study: image codes built with the paired report (diagnostic only, never in the app)", "",
            *table(["Method", "Cell", "honest", "with the leak", "leak minus honest"], rows), ""]


def command_lines(results: Results) -> list[str]:
    """Each command that trained runs in this folder, with its runs: a folder is filled a method or a
    noise rate at a time, so the last call's command alone does not say how to make it again."""
    by_command: dict[str, list[str]] = {}
    for name in sorted(results):
        by_command.setdefault(results[name].get("command") or "", []).append(name)
    lines = ["## Commands that trained these runs (from each run's JSON)", ""]
    for command, names in sorted(by_command.items(), key=lambda item: item[0] == ""):
        what = f"{len(names)} run(s): {', '.join(names)}"
        lines += ([f"- made before runs recorded their command ({what}); see docs/results/README.md", ""]
                  if not command else [f"- {what}", "", "```bash", command, "```", ""])
    return lines if results else []


METHOD_ORDER = ("base", "mcph", "tripah", "prompthash")


def covering_spec(spec: Any, results: Results) -> Any:
    """The spec widened to every method variant, seed and noise rate with finished runs in the folder,
    so that a call for one method (the grid is run a method at a time) does not drop the others'
    rows from report.md; this call's own settings are kept where they already cover them."""
    from trainer.experiment import parse_methods

    known = {v.label for v in spec.variants}
    found = {r["variant"]: r["method"] for r in results.values()}
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    extra = [v for label in sorted(set(found) - known, key=lambda lb: (rank.get(found[lb], 99), lb))
             for v in parse_methods(label)]
    finals = [r for r in results.values() if r["phase"] == "final"]
    selects = [r for r in results.values() if r["phase"] == "select"]
    seeds = sorted(set(spec.seeds) | {int(r["seed"]) for r in finals})
    noise = sorted(set(spec.noise_rates) | {float(r["noise_rate"]) for r in finals})
    # the folder's grid, not this call's: a call with a narrower --lr-grid must not change the choice
    lrs = sorted(set(spec.lr_grid) | {float(r["lr"]) for r in selects})
    scales = sorted(set(spec.backbone_lr_grid) | {float(r["backbone_lr_scale"]) for r in selects})
    merged = list(spec.variants) + extra  # plain BASE first: the "minus BASE" tables compare with it
    order = sorted(range(len(merged)), key=lambda i: (rank.get(merged[i].method, 99),
                                                      merged[i].label != merged[i].method, i))
    return replace(spec, variants=[merged[i] for i in order], seeds=seeds, noise_rates=noise, lr_grid=lrs,
                   backbone_lr_grid=scales)


def at_chosen_settings(results: Results, chosen: dict[str, tuple[float, float]]) -> tuple[Results, list[str]]:
    """The results the tables may use, and the names of final / leak runs set aside because their
    method's selection now chooses another (lr, backbone-lr scale): a grid widened after the finals
    ran must not count a run at the old setting as one more seed."""
    kept, aside = {}, []
    for name, r in results.items():
        setting = chosen.get(r["variant"])
        if r["phase"] != "select" and setting is not None and (r["lr"], r["backbone_lr_scale"]) != setting:
            aside.append(name)
        else:
            kept[name] = r
    return kept, sorted(aside)


def write_fair_report(out: Path, spec: Any, results: Results, *, command: str, data_name: str,
                      splits: dict[str, int], pending: Sequence[str]) -> Path:
    from trainer.fair_protocol import chosen_settings

    spec = covering_spec(spec, results)
    chosen = chosen_settings(spec, results)
    lines = protocol_lines(spec, command, data_name, splits, results)
    lines += selection_lines(spec, results, chosen)
    every_run = results
    results, aside = at_chosen_settings(results, chosen)
    if aside:
        lines += [("Final runs at a setting the selection no longer chooses (kept in results/, left out of the "
                   "tables below):"), "", *[f"- {name}" for name in aside], ""]
    lines += map_lines(spec, results) + versus_base_lines(spec, results) + noise_change_lines(spec, results)
    lines += rare_lines(spec, results)
    lines += recall_lines(spec, results) + probe_lines(out) + leak_lines(spec, results)
    if pending:
        lines += ["## Pending (not run yet; the same command resumes)", "", *[f"- {p}" for p in pending], ""]
    lines += command_lines(every_run)
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
