"""The fair comparison of methods (DESIGN.md "Comparing methods fairly"), as one resumable grid.

What makes it fair, and where each rule lives:
- One split for every run (`split_seed`), patient-disjoint; training seeds vary the initialisation,
  the batch order and the injected noise, so per-query results of different seeds pair up.
- The same optimizer-step budget and batch size for every method (`steps`, `batch_size`; the
  epochs are ceil(steps / steps per epoch), the actual steps are recorded), best epoch chosen on
  validation that mirrors the test: val queries against train + val items
  (TrainConfig.val_database "train+val"), validated about `val_points` times per run.
- lr and backbone-lr scale chosen per method on that validation from one declared grid (phase
  "select": `select_bits`, `select_seed`, no noise), recorded in the report; every later run uses
  the method's chosen pair.
- Phase "final": every method x noise rate x seed at `bits` with the chosen settings. Each result
  keeps the per-query AP of the test queries, so method - BASE gets a paired per-query bootstrap
  interval (trainer/fair_report.py) and "beats"/"ties"/"loses" only where the interval says so.
- Phase "probe": the linear-probe reference of the frozen features (trainer/linear_probe.py).
- Phase "leak": the diagnostic variants that build image codes with the paired report (as the
  public code of TriPAH and PromptHash does), same split and settings: how much of a published
  gain the leak alone gives. Never offered in the app.

Every run writes `results/<name>.json` when finished and is skipped on the next call, so a grid
spans sessions; `runs/` (checkpoints) and the stem cache stay out of git.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.checkpoint import load_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data.manifest import Sample
from trainer.data.splits import Splits, make_splits, save_splits
from trainer.distributed import resolve_device
from trainer.engine import apply_method_defaults, encode_dataset, fit
from trainer.errors import DataError
from trainer.evaluate import distance_histograms, hamming_distances, pack_signs, per_query_ap
from trainer.experiment import Variant, machine_info, multi_hot, per_class_ap, samples_hash
from trainer.models.registry import get_method
from trainer.models.views import LEAK_OPTION  # TriPAH / PromptHash option: image codes see the paired report

Progress = Callable[[dict[str, Any]], None]
PHASES = ("select", "final", "probe", "leak")
DIRECTIONS = ("i2t", "t2i")
RECALL_K = (1, 5, 10)
# What evaluate_fair records. 2: per-query AP inside each class (rare-class intervals). A finished
# run evaluated by an older version is evaluated again from its best checkpoint when that is on disk.
EVALUATION_VERSION = 2


@dataclass
class FairSpec:
    """The declared protocol. Defaults: what the issue asks for (>= 1,500 steps, 3 seeds)."""

    variants: list[Variant]
    bits: list[int] = field(default_factory=lambda: [64])
    noise_rates: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.5])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    split_seed: int = 0
    steps: int = 1500
    batch_size: int = 32
    lr_grid: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])
    backbone_lr_grid: list[float] = field(default_factory=lambda: [0.1, 1.0])
    select_bits: int = 64
    select_seed: int = 0
    select_steps: int | None = None  # None = `steps`
    val_points: int = 8
    backbone: str = "embedded"
    weights_path: str | None = None
    # Tower layers that train: None = each method's own (2, as the papers); 0 freezes both towers, the
    # regime where a 1,500-step grid fits a CPU (tuned top blocks cost ~70x more per step there).
    trainable_top_blocks: int | None = None
    device: str = "auto"
    num_workers: int = 2
    split_sizes: dict[str, int] | None = None
    leak_methods: list[str] = field(default_factory=lambda: ["tripah", "prompthash"])
    bootstrap: int = 2000

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["variants"] = [v.label for v in self.variants]
        return data


@dataclass(frozen=True)
class FairRun:
    """One training run of the protocol."""

    phase: str  # "select" | "final" | "leak"
    variant: Variant
    lr: float
    backbone_lr_scale: float
    noise_rate: float
    seed: int
    bits: tuple[int, ...]
    steps: int
    leak: bool = False

    @property
    def name(self) -> str:
        leak = "-leak" if self.leak else ""
        return (f"{self.phase}_{self.variant.slug}{leak}_lr{self.lr:g}_bb{self.backbone_lr_scale:g}"
                f"_n{round(self.noise_rate * 100):02d}_s{self.seed}")


# ---- configs -------------------------------------------------------------------------------------
def epochs_for(steps: int, n_train: int, batch_size: int) -> tuple[int, int]:
    """(epochs, steps per epoch) so that epochs x steps per epoch >= `steps` (whole epochs)."""
    per_epoch = max(1, n_train // batch_size)
    return max(1, math.ceil(steps / per_epoch)), per_epoch


def run_configs(spec: FairSpec, run: FairRun, splits: Splits, label_names: list[str], cache_dir: Path
                ) -> tuple[ModelConfig, TrainConfig]:
    options = {LEAK_OPTION: True} if run.leak else {}
    model_cfg = ModelConfig(method=run.variant.method, backbone=spec.backbone, weights_path=spec.weights_path,
                            bits=list(run.bits), components=run.variant.components, label_names=label_names,
                            options=options)
    if spec.trainable_top_blocks is not None:
        model_cfg = dataclasses.replace(model_cfg, trainable_top_blocks=spec.trainable_top_blocks)
    epochs, _ = epochs_for(run.steps, len(splits.train), spec.batch_size)
    train_kw: dict[str, Any] = {
        "epochs": epochs, "seed": run.seed, "device": spec.device, "batch_size": spec.batch_size, "lr": run.lr,
        "backbone_lr_scale": run.backbone_lr_scale, "noise_rate": run.noise_rate,
        "noise_handling": run.variant.handling(), "num_workers": spec.num_workers, "cache_dir": str(cache_dir),
        "val_every": max(1, round(epochs / max(1, spec.val_points))), "val_database": "train+val"}
    return model_cfg, apply_method_defaults(model_cfg, TrainConfig(**train_kw), set(train_kw))


def _fingerprint(model_cfg: ModelConfig, train_cfg: TrainConfig, spec: FairSpec, data_hash: str) -> dict[str, Any]:
    train = {k: v for k, v in train_cfg.to_dict().items() if k not in ("device", "num_workers", "cache_dir")}
    return {"model_config": model_cfg.to_dict(), "train_config": train, "split_sizes": spec.split_sizes,
            "split_seed": spec.split_seed, "data_hash": data_hash}


# ---- evaluation of one trained model ----------------------------------------------------------------
def expected_recall_own(dist: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """P(a query's own item is in its top k) per query under random order within distance ties.

    dist (Q, N) Hamming distances; own (Q,) column of each query's own item.
    """
    d_own = dist[np.arange(len(dist)), own][:, None]
    closer = (dist < d_own).sum(axis=1)
    tied = (dist == d_own).sum(axis=1)  # the own item included
    return np.clip((k - closer) / tied, 0.0, 1.0)


def expected_recall_group(dist: np.ndarray, same: np.ndarray, k: int) -> np.ndarray:
    """P(at least one item with same[q, j] True is in query q's top k), random order within ties."""
    out = np.zeros(len(dist))
    for q in range(len(dist)):
        if not same[q].any():
            continue
        d_first = dist[q][same[q]].min()
        before = int((dist[q] < d_first).sum())
        if before >= k:
            continue
        block = dist[q] == d_first
        n, s, m = int(block.sum()), int((block & same[q]).sum()), min(k - before, int(block.sum()))
        # 1 - C(n - s, m) / C(n, m): no group item among the m block places inside the top k
        miss = 1.0
        for i in range(m):
            miss *= max(0.0, (n - s - i) / (n - i))
        out[q] = 1.0 - miss
    return out


def instance_recall(image: np.ndarray, text: np.ndarray, groups: Sequence[str | None]) -> dict[str, float]:
    """R@k of each query image's own report (and T->I its own image) and of its own case/patient,
    within the query split (codes continuous; sign = bit)."""
    img, txt = pack_signs(image), pack_signs(text)
    own = np.arange(len(img))
    key = np.array([g if g is not None else f"#{i}" for i, g in enumerate(groups)], dtype=object)
    same = key[:, None] == key[None, :]
    out = {}
    for direction, (q, db) in (("i2t", (img, txt)), ("t2i", (txt, img))):
        dist = hamming_distances(q, db)
        for k in RECALL_K:
            out[f"{direction}_own_r@{k}"] = float(expected_recall_own(dist, own, k).mean())
            out[f"{direction}_case_r@{k}"] = float(expected_recall_group(dist, same, k).mean())
    return out


def evaluate_fair(model: Any, splits: Splits, *, batch_size: int, device: torch.device) -> dict[str, Any]:
    """Test metrics of one model: mAP@all per direction and length with per-query AP, rare-class AP,
    instance recall within the query split. Codes from the full forward (as the app stores them)."""
    pairs = [*splits.query, *splits.retrieval]
    image, text = encode_dataset(model, pairs, batch_size=batch_size, device=device)
    names = sorted({label for s in pairs for label in s.labels})
    labels = multi_hot(pairs, names)
    nq = len(splits.query)
    metrics, per_query, recall = {}, {}, {}
    for bits in sorted(image):
        codes = {"i2t": (image[bits], text[bits]), "t2i": (text[bits], image[bits])}
        for d, (src, dst) in codes.items():
            n, r = distance_histograms(pack_signs(src[:nq]), pack_signs(dst[nq:]), labels[:nq], labels[nq:])
            ap = per_query_ap(n, r)
            metrics[f"{d}@{bits}"] = {"map_all": float(ap.mean()), "queries": nq, "database": len(pairs) - nq}
            per_query[f"{d}@{bits}"] = [round(float(v), 6) for v in ap]
        recall[str(bits)] = instance_recall(image[bits][:nq], text[bits][:nq], [s.patient_id for s in splits.query])
    bits = max(image)
    q_idx, db_idx = np.arange(nq), np.arange(nq, len(pairs))
    rare = per_class_ap(pack_signs(image[bits]), pack_signs(text[bits]), labels, names, q_idx, db_idx, splits,
                        per_query=True)
    return {"metrics": metrics, "per_query_ap": per_query, "instance_recall": recall,
            "per_class": {"bits": bits, "classes": rare}, "query_ids": [s.id for s in splits.query],
            "evaluation_version": EVALUATION_VERSION}


# ---- one run ------------------------------------------------------------------------------------------
def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def run_one(samples: Sequence[Sample], splits: Splits, spec: FairSpec, run: FairRun, out: Path, *,
            data_hash: str, progress: Progress | None = None, cancel: Any = None,
            command: str = "") -> dict[str, Any] | None:
    """Train and evaluate one run (skipped when its result exists with the same settings); None when cancelled."""
    label_names = sorted({label for s in samples for label in s.labels})
    model_cfg, train_cfg = run_configs(spec, run, splits, label_names, out / ".feature-cache")
    key = _fingerprint(model_cfg, train_cfg, spec, data_hash)
    result_file = out / "results" / f"{run.name}.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text(encoding="utf-8"))
        if result.get("fingerprint") != key:
            raise DataError(result_file, "was made with other settings; use another output folder or delete it")
        return _refresh_evaluation(result, result_file, splits, spec, out)
    twin = _selection_twin(spec, run, out)
    if twin is not None:  # the same training was done to select: evaluate its model, do not train it again
        result = {**twin, "name": run.name, "phase": run.phase, "reused_from": twin["name"], "fingerprint": key}
        return _evaluate_checkpoint(result, out / "runs" / twin["name"] / "best", result_file, splits, spec)
    run_dir = out / "runs" / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_splits(splits, run_dir / "splits.json")
    started = time.perf_counter()
    relay = (lambda e: progress({**e, "run": run.name})) if progress is not None else None
    fitted = fit(model_cfg, train_cfg, splits, run_dir, progress=relay, cancel=cancel)
    if fitted.cancelled or fitted.checkpoint_dir is None:
        return None
    train_s = time.perf_counter() - started
    device = resolve_device(spec.device)
    best = Path(fitted.checkpoint_dir)
    shutil.copyfile(run_dir / "splits.json", best / "splits.json")
    _, per_epoch = epochs_for(run.steps, len(splits.train), spec.batch_size)
    best_epoch = max((h for h in fitted.history if h.get("val_map")), key=lambda h: h["val_map"]["mean"])["epoch"]
    result = {"name": run.name, "phase": run.phase, "variant": run.variant.label, "method": run.variant.method,
              "leak": run.leak, "lr": run.lr, "backbone_lr_scale": run.backbone_lr_scale,
              "noise_rate": run.noise_rate, "seed": run.seed, "bits": list(run.bits),
              "steps": train_cfg.epochs * per_epoch, "epochs": train_cfg.epochs, "batch_size": train_cfg.batch_size,
              "best_epoch": best_epoch, "best_val_map": fitted.best_val_map,
              "val_history": [{"epoch": h["epoch"], "val_map": h["val_map"]} for h in fitted.history if h.get("val_map")],
              "fingerprint": key, "splits": splits.counts(), "machine": machine_info(device),
              "train_s": train_seconds(fitted.history, train_s), "command": command}
    if run.phase == "select":  # judged on validation only: the test split stays unseen until the finals
        _write_json(result_file, result)
    else:
        result = _evaluate_checkpoint(result, best, result_file, splits, spec)
    shutil.rmtree(run_dir / "last", ignore_errors=True)
    return result


def train_seconds(history: Sequence[dict[str, Any]], this_call_s: float) -> float:
    """Training wall time of the whole run: the sum of its epochs' seconds, resumed calls included;
    a run resumed from epochs recorded before the engine kept seconds gets only this call's time."""
    if history and all("seconds" in h for h in history):
        return round(sum(h["seconds"] for h in history), 1)
    return round(this_call_s, 1)


def _refresh_evaluation(result: dict[str, Any], result_file: Path, splits: Splits, spec: FairSpec,
                        out: Path) -> dict[str, Any]:
    """Evaluate a finished run again when an older evaluate_fair made its numbers and its best
    checkpoint is still on disk (training is never repeated); otherwise return it as it is."""
    if result["phase"] == "select" or result.get("evaluation_version", 1) >= EVALUATION_VERSION:
        return result
    best = out / "runs" / (result.get("reused_from") or result["name"]) / "best"
    if not best.is_dir():
        return result
    return _evaluate_checkpoint(result, best, result_file, splits, spec)


def _evaluate_checkpoint(result: dict[str, Any], best: Path, result_file: Path, splits: Splits,
                         spec: FairSpec) -> dict[str, Any]:
    """`result` with the test metrics of the model saved in `best`, written to `result_file`."""
    device = resolve_device(spec.device)
    model, _, _ = load_checkpoint(best, device=str(device))
    result = {**result, **evaluate_fair(model, splits, batch_size=spec.batch_size, device=device)}
    _write_json(result_file, result)
    return result


def _selection_twin(spec: FairSpec, run: FairRun, out: Path) -> dict[str, Any] | None:
    """The finished selection run that trained exactly what `run` would (same method, lr, scale,
    seed, no noise, code lengths and steps) when its best checkpoint is still on disk; else None."""
    if run.phase != "final" or run.leak:
        return None
    twin = dataclasses.replace(run, phase="select", steps=spec.select_steps or spec.steps)
    if twin.steps != run.steps or run.noise_rate != 0.0 or run.seed != spec.select_seed:
        return None
    if run.bits != (spec.select_bits,):
        return None
    result_file, best = out / "results" / f"{twin.name}.json", out / "runs" / twin.name / "best"
    if not (result_file.is_file() and best.is_dir()):
        return None
    return json.loads(result_file.read_text(encoding="utf-8"))


# ---- phases ---------------------------------------------------------------------------------------------
def selection_runs(spec: FairSpec) -> list[FairRun]:
    steps = spec.select_steps or spec.steps
    return [FairRun("select", v, lr, bb, 0.0, spec.select_seed, (spec.select_bits,), steps)
            for v in spec.variants for lr in spec.lr_grid for bb in spec.backbone_lr_grid]


def chosen_settings(spec: FairSpec, results: dict[str, dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Per variant label: the (lr, backbone-lr scale) with the best mirrored val mAP among its
    finished selection runs (first in grid order on a tie)."""
    chosen = {}
    for v in spec.variants:
        done = [results[r.name] for r in selection_runs(spec) if r.variant == v and r.name in results]
        if done:
            best = max(done, key=lambda res: res["best_val_map"])
            chosen[v.label] = (best["lr"], best["backbone_lr_scale"])
    return chosen


def final_runs(spec: FairSpec, chosen: dict[str, tuple[float, float]]) -> list[FairRun]:
    return [FairRun("final", v, *chosen[v.label], n, s, tuple(spec.bits), spec.steps)
            for v in spec.variants if v.label in chosen for n in spec.noise_rates for s in spec.seeds]


def leak_runs(spec: FairSpec, chosen: dict[str, tuple[float, float]]) -> list[FairRun]:
    """The leak variants at their honest twin's chosen settings, no noise, every seed."""
    return [FairRun("leak", v, *chosen[v.label], 0.0, s, tuple(spec.bits), spec.steps, leak=True)
            for v in spec.variants if v.label in chosen and v.method in spec.leak_methods
            and _supports_leak(v.method) for s in spec.seeds]


def _supports_leak(method: str) -> bool:
    import sys
    options = getattr(sys.modules[get_method(method).__module__], "OPTIONS", {})
    return LEAK_OPTION in options


def load_results(out: Path) -> dict[str, dict[str, Any]]:
    folder = out / "results"
    if not folder.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}


@dataclass
class FairOutcome:
    out: Path
    report: Path | None
    ran: list[str]
    skipped: list[str]
    pending: list[str]
    cancelled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "report": str(self.report) if self.report else None, "ran": self.ran,
                "skipped": self.skipped, "pending": self.pending, "cancelled": self.cancelled}


def run_fair(samples: Sequence[Sample], spec: FairSpec, out: str | Path, *, phases: Sequence[str] = PHASES,
             progress: Progress | None = None, cancel: Any = None, command: str = "", data_name: str = "",
             max_runs: int | None = None, train: bool = True) -> FairOutcome:
    """Run the given phases in order (select -> final -> probe -> leak; a later phase uses what the
    earlier ones finished), at most `max_runs` new trainings in this call; then write report.md."""
    from trainer.fair_report import write_fair_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("runs/\n.feature-cache/\n", encoding="utf-8")
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise DataError("--phase", f"unknown phase(s) {', '.join(unknown)} (phases: {', '.join(PHASES)})")
    data_hash = samples_hash(samples)
    splits = make_splits(samples, sizes=spec.split_sizes, seed=spec.split_seed)
    _write_json(out / "protocol.json", {"spec": spec.to_dict(), "command": command, "data": data_name,
                                        "data_hash": data_hash, "splits": splits.counts()})
    ran, skipped, pending, cancelled = [], [], [], False
    budget = [max_runs if max_runs is not None else math.inf]

    def do(runs: list[FairRun]) -> bool:
        for run in runs:
            done = (out / "results" / f"{run.name}.json").is_file()
            if not done and (not train or budget[0] <= 0):
                pending.append(run.name)
                continue
            _emit(progress, {"event": "run", "name": run.name, "status": "skipped" if done else "started"})
            if run_one(samples, splits, spec, run, out, data_hash=data_hash, progress=progress, cancel=cancel,
                       command=command) is None:
                return False
            (skipped if done else ran).append(run.name)
            if not done:
                budget[0] -= 1
        return True

    for phase in PHASES:
        if phase not in phases or cancelled:
            continue
        chosen = chosen_settings(spec, load_results(out))
        if phase == "select":
            cancelled = not do(selection_runs(spec))
        elif phase == "final":
            missing = [v.label for v in spec.variants if v.label not in chosen]
            pending.extend(f"final_{label} (selection unfinished)" for label in missing)
            cancelled = not do(final_runs(spec, chosen))
        elif phase == "leak":
            cancelled = not do(leak_runs(spec, chosen))
        elif phase == "probe" and train and not (out / "probe.json").is_file():
            from trainer.linear_probe import probe_ceiling
            _emit(progress, {"event": "run", "name": "probe", "status": "started"})
            probe = probe_ceiling(splits, spec.backbone, str(out / ".feature-cache"), weights_path=spec.weights_path,
                                  device=str(resolve_device(spec.device)))
            _write_json(out / "probe.json", {**probe, "machine": machine_info(resolve_device(spec.device))})
    report = write_fair_report(out, spec, load_results(out), command=command, data_name=data_name,
                               splits=splits.counts(), pending=pending)
    return FairOutcome(out, report, ran, skipped, pending, cancelled)


def _emit(progress: Progress | None, event: dict[str, Any]) -> None:
    if progress is not None:
        progress(event)


__all__ = [
    "LEAK_OPTION",
    "PHASES",
    "FairOutcome",
    "FairRun",
    "FairSpec",
    "chosen_settings",
    "epochs_for",
    "evaluate_fair",
    "expected_recall_group",
    "expected_recall_own",
    "final_runs",
    "instance_recall",
    "leak_runs",
    "load_results",
    "run_fair",
    "run_one",
    "selection_runs",
]
