"""The papers' experiment grid: method variant x injected noise x seed, each run in its own folder.

One model per (variant, noise rate, seed) is trained with ALL code lengths at once: the hash heads
of every length sit on one shared backbone and train jointly (as in MCPH/TriPAH/PromptHash), so
the 16- to 128-bit columns of a table row come from the same model.

Each run follows the app's training path (medhash_app.core.training.train_on_library): the same
samples, `make_splits(samples, sizes, seed)`, ModelConfig/TrainConfig fields and `engine.fit`
(model selection on val; the method's `default_train_overrides` for settings not given), but the
model is never registered in a library. Its best checkpoint (with `splits.json`, like the app's)
is then evaluated in memory: `encode_dataset` codes of the held-out query split against the
retrieval split, by trainer.evaluate's protocol, which equals `evaluate_model` on stored codes.
Noisy runs also get the data-audit check (trainer.audit.audit_noisy_pairs).

Layout under `out/`: `runs/<name>/` (fit folder: best/, splits.json, noise.json; last/ is removed
once the run is finished unless `keep_last`), `results/<name>.json` (the finished marker: a re-run
skips it), `.feature-cache/` (shared frozen stems), `grid.json`, `report.md`, `pr-noise-*.png`
(trainer.experiment_report). `runs/` and the cache are git-ignored: only numbers and plots are
meant to be committed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.audit import audit_noisy_pairs
from trainer.checkpoint import load_checkpoint
from trainer.config import DEFAULT_COMPONENTS, NOISE_HANDLINGS, ModelConfig, TrainConfig
from trainer.data.manifest import Sample
from trainer.data.splits import Splits, load_splits, make_splits, save_splits
from trainer.distributed import resolve_device
from trainer.engine import apply_method_defaults, encode_dataset, fit
from trainer.errors import DataError
from trainer.evaluate import distance_histograms, evaluate_codes, pack_signs, per_query_ap
from trainer.feature_cache import FeatureCache
from trainer.models.registry import available_methods, get_method

EVAL_K = (10, 50, 100)  # as medhash_app.core.training.EVAL_K
DIRECTIONS = ("i2t", "t2i")
_SWITCH_VALUES = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
Progress = Callable[[dict[str, Any]], None]


# ---- the grid ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A method with component switches, e.g. `mcph:vpl=off,tpl=off` (Tables 3-4 ablations)."""

    method: str
    switches: tuple[tuple[str, bool], ...] = ()
    noise_handling: str | None = None  # None = "auto" (see `handling`)

    @property
    def components(self) -> dict[str, bool]:
        return dict(self.switches)

    @property
    def label(self) -> str:
        parts = [f"{k}={'on' if v else 'off'}" for k, v in self.switches]
        if self.noise_handling is not None:
            parts.append(f"noise_handling={self.noise_handling}")
        return self.method + (":" + ",".join(parts) if parts else "")

    @property
    def slug(self) -> str:
        return self.label.replace(":", "-").replace(",", "-").replace("=", "_")

    def handling(self) -> str:
        """The given noise handling, else the method's robust one when it has it (MCPH: the
        JSD-adaptive temperature, which needs NRCL on), else "none"."""
        if self.noise_handling is not None:
            return self.noise_handling
        supported = get_method(self.method).noise_handlings
        wants = "adaptive_temperature" in supported and self.components.get("nrcl", True)
        return "adaptive_temperature" if wants else "none"


def parse_methods(text: str | Sequence[str]) -> list[Variant]:
    """`base,mcph,mcph:vpl=off,tpl=off` -> variants; a `name=value` item without `:` adds to the
    switches of the variant before it. Values on/off (components) or `noise_handling=<name>`."""
    items = [p.strip() for part in ([text] if isinstance(text, str) else text) for p in part.split(",")]
    variants: list[tuple[str, list[str]]] = []
    for item in filter(None, items):
        if ":" in item:
            method, _, switch = item.partition(":")
            variants.append((method.strip().lower(), [switch.strip()] if switch.strip() else []))
        elif "=" in item:
            if not variants:
                raise DataError("--methods", f"{item!r} comes before any method")
            variants[-1][1].append(item)
        else:
            variants.append((item.lower(), []))
    if not variants:
        raise DataError("--methods", "name at least one method, e.g. base,mcph")
    out = [_variant(method, pairs) for method, pairs in variants]
    if len(set(out)) != len(out):
        raise DataError("--methods", "a method variant is listed twice")
    return out


def _variant(method: str, switches: list[str]) -> Variant:
    if method not in available_methods():
        raise DataError("--methods", f"unknown method {method!r} (available: {', '.join(available_methods())})")
    pairs, handling, known = [], None, method_components(method)
    for switch in switches:
        name, _, value = (s.strip() for s in switch.partition("="))
        if name == "noise_handling":
            if value not in NOISE_HANDLINGS:
                raise DataError("--methods", f"noise_handling must be one of {', '.join(NOISE_HANDLINGS)}")
            handling = value
        elif name not in known:
            raise DataError("--methods", f"{method} has no component {name!r} (it has {', '.join(sorted(known))})")
        elif value.lower() in _SWITCH_VALUES:
            pairs.append((name, _SWITCH_VALUES[value.lower()]))
        else:
            raise DataError("--methods", f"{method}:{switch}: write a switch as name=on or name=off")
    return Variant(method, tuple(pairs), handling)


def method_components(method: str) -> dict[str, bool]:
    """Every switch `method` reads, with its default: the shared ones (trainer.config) plus the
    method module's own `COMPONENTS` (a tuple of default-on names or a name -> default dict)."""
    own = getattr(sys.modules[get_method(method).__module__], "COMPONENTS", ())
    return {**DEFAULT_COMPONENTS, **(dict(own) if isinstance(own, dict) else dict.fromkeys(own, True))}


def parse_list(text: str, kind: type, name: str) -> list:
    """'0,0.2,0.5' -> [0.0, 0.2, 0.5] (sorted, unique); a DataError naming the option otherwise."""
    try:
        values = sorted({kind(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise DataError(name, f"expected comma-separated {kind.__name__} values, got {text!r}") from None
    if not values:
        raise DataError(name, "give at least one value")
    return values


@dataclass
class GridSpec:
    """What to run. `batch_size` / `lr` None: the method's default (else TrainConfig's)."""

    variants: list[Variant]
    bits: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    noise_rates: list[float] = field(default_factory=lambda: [0.0, 0.2, 0.5])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = 10
    backbone: str = "embedded"
    weights_path: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "auto"
    num_workers: int = 2
    split_sizes: dict[str, int] | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method: ModelConfig.options
    top_fraction: float = 0.05  # the audit's "top 5 %"
    rare_classes: int = 5  # classes with the fewest training positives shown in the report
    keep_last: bool = False
    # Evaluate from the frozen-stem cache (float16 stems: continuous codes within ~2e-3 of the full
    # forward, a few near-zero bits may flip): several times faster on CPU, but the numbers are then
    # not bit-identical to the app's stored codes. Off by default.
    eval_from_cache: bool = False

    def runs(self) -> list[GridRun]:
        return [GridRun(v, float(n), int(s)) for v in self.variants for n in self.noise_rates for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["variants"] = [v.label for v in self.variants]
        return data


@dataclass(frozen=True)
class GridRun:
    variant: Variant
    noise_rate: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant.slug}_n{round(self.noise_rate * 100):02d}_s{self.seed}"


@dataclass
class GridOutcome:
    out: Path
    report: Path | None
    results: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    cancelled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "report": str(self.report) if self.report else None, "ran": self.ran,
                "skipped": self.skipped, "cancelled": self.cancelled, "runs": len(self.results)}


# ---- one run -------------------------------------------------------------------------------------
def samples_hash(samples: Sequence[Sample]) -> str:
    """SHA-256 over (id, report, labels) of every sample: results of other data are not reused."""
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.id, s.report, sorted(s.labels)]).encode())
    return h.hexdigest()


def run_configs(spec: GridSpec, run: GridRun, label_names: list[str], cache_dir: Path) -> tuple[ModelConfig, TrainConfig]:
    """The app's ModelConfig/TrainConfig fields for one run, with the method's defaults applied."""
    variant = run.variant
    model_cfg = ModelConfig(method=variant.method, backbone=spec.backbone, weights_path=spec.weights_path,
                            bits=spec.bits, components=variant.components, label_names=label_names,
                            options=dict(spec.options.get(variant.method, {})))
    train_kw: dict[str, Any] = {"epochs": spec.epochs, "seed": run.seed, "device": spec.device,
                                "noise_rate": run.noise_rate, "noise_handling": variant.handling(),
                                "num_workers": spec.num_workers, "cache_dir": str(cache_dir)}
    if spec.batch_size is not None:
        train_kw["batch_size"] = spec.batch_size
    if spec.lr is not None:
        train_kw["lr"] = spec.lr
    return model_cfg, apply_method_defaults(model_cfg, TrainConfig(**train_kw), set(train_kw))


def fingerprint(model_cfg: ModelConfig, train_cfg: TrainConfig, spec: GridSpec, data_hash: str) -> dict[str, Any]:
    """What makes two runs the same experiment (device, workers and cache place do not)."""
    train = {k: v for k, v in train_cfg.to_dict().items() if k not in ("device", "num_workers", "cache_dir")}
    return {"model_config": model_cfg.to_dict(), "train_config": train, "split_sizes": spec.split_sizes,
            "data_hash": data_hash}


class _Timer:
    """Wall-clock marks from fit's progress events: the epoch loop without the cache fill."""

    def __init__(self, progress: Progress | None, extra: dict[str, Any]) -> None:
        self.progress, self.extra = progress, extra
        self.start = self.loop_start = time.perf_counter()
        self.cache_s: float | None = None
        self.epoch_marks: list[float] = []

    def __call__(self, event: dict[str, Any]) -> None:
        now = time.perf_counter()
        if event.get("event") == "cache":
            self.cache_s, self.loop_start = now - self.start, now
        elif event.get("event") == "start":
            self.start = self.loop_start = now
        elif event.get("event") == "epoch":
            self.epoch_marks.append(now)
        if self.progress is not None:
            self.progress({**event, **self.extra})

    def per_epoch(self) -> float | None:
        if not self.epoch_marks:
            return None  # every epoch was done by an earlier, interrupted call
        return (self.epoch_marks[-1] - self.loop_start) / len(self.epoch_marks)


def multi_hot(samples: Sequence[Sample], names: Sequence[str]) -> np.ndarray:
    """(N, C) uint8: row i has a 1 in the column of each of sample i's labels found in `names`."""
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(samples), len(names)), np.uint8)
    for row, s in enumerate(samples):
        for label in s.labels:
            if label in index:
                out[row, index[label]] = 1
    return out


def evaluate_in_memory(model: Any, splits: Splits, *, batch_size: int = 64, device: str | torch.device = "cpu",
                       num_workers: int = 0, cache: FeatureCache | None = None) -> dict[str, Any]:
    """The app's evaluation (query split vs retrieval split, labels of both) from in-memory codes.

    Returns {"metrics": {"i2t@16": {"map_all", "map@k", "p@k", "queries", "database"}, ...},
    "pr": {"i2t@16": {"precision", "recall"}}, "per_class": {...}, "encode_ms_per_pair"}, plus
    "metrics_without_captions" for a model whose image codes use captions (MCPH with VPL). Without
    `cache` codes come from the full forward, so they equal the app's stored codes; with a prepared
    `cache` they start from its float16 stems (GridSpec.eval_from_cache).
    """
    pairs = [*splits.query, *splits.retrieval]
    started = time.perf_counter()
    image, text = encode_dataset(model, pairs, batch_size=batch_size, device=device, num_workers=num_workers,
                                 cache=cache)
    encode_ms = (time.perf_counter() - started) * 1000.0 / len(pairs)
    names = sorted({label for s in pairs for label in s.labels})
    labels = multi_hot(pairs, names)
    q_idx, db_idx = np.arange(len(splits.query)), np.arange(len(splits.query), len(pairs))
    metrics, pr = _metrics(image, text, labels, q_idx, db_idx)
    bits = max(image)
    per_class = per_class_ap(pack_signs(image[bits]), pack_signs(text[bits]), labels, names, q_idx, db_idx, splits)
    out = {"metrics": metrics, "pr": pr, "per_class": {"bits": bits, "classes": per_class},
           "encode_ms_per_pair": encode_ms}
    if getattr(model, "uses_captions", False):
        with model.captions_withheld():
            bare, _ = encode_dataset(model, pairs, batch_size=batch_size, device=device, num_workers=num_workers,
                                     cache=cache, reports=False)  # report codes never see a caption
        out["metrics_without_captions"] = _metrics(bare, text, labels, q_idx, db_idx)[0]
    return out


QUERY_LATENCY_SAMPLES = 21  # the first of each kind warms up and is not counted


def query_latency(model: Any, queries: Sequence[Sample], device: str | torch.device = "cpu") -> dict[str, Any]:
    """Median ms to encode ONE query as the app does: batch 1, full forward, the image decoded from
    its file (with its metadata and, for MCPH, its built-in caption), the report tokenized.

    Why apart from `encode_ms_per_pair`: that one is batched and, with `--eval-from-cache`, starts
    from cached stems; a radiologist's query pays the whole forward (TriPAH's Table III reports this).
    """
    device = torch.device(device)
    picked = list(queries[:QUERY_LATENCY_SAMPLES])
    tokenizer, image_ms, text_ms = model.backbone.tokenizer, [], []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for sample in picked:
                started = time.perf_counter()
                encode_dataset(model, [sample], batch_size=1, device=device, reports=False)
                image_ms.append((time.perf_counter() - started) * 1000.0)
                started = time.perf_counter()
                tokens = {k: v.to(device) if torch.is_tensor(v) else v for k, v in tokenizer([sample.report]).items()}
                model.encode_text(tokens)
                text_ms.append((time.perf_counter() - started) * 1000.0)
    finally:
        model.train(was_training)
    counted = slice(1, None) if len(picked) > 1 else slice(None)
    return {"image_ms": float(np.median(image_ms[counted])) if picked else None,
            "text_ms": float(np.median(text_ms[counted])) if picked else None,
            "queries": len(image_ms[counted]), "threads": torch.get_num_threads(), "device": str(device)}


def _metrics(image: dict[int, np.ndarray], text: dict[int, np.ndarray], labels: np.ndarray, q_idx: np.ndarray,
             db_idx: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, PR curves) per direction and code length, keyed "i2t@16"."""
    metrics, pr = {}, {}
    for bits in sorted(image):
        res = evaluate_codes(image[bits], text[bits], labels, q_idx, db_idx, DIRECTIONS, EVAL_K)
        for d in DIRECTIONS:
            m = res[d]
            metrics[f"{d}@{bits}"] = {"map_all": m["map"], **{f"map@{k}": m[f"map@{k}"] for k in EVAL_K},
                                      **{f"p@{k}": m[f"p@{k}"] for k in EVAL_K},
                                      "queries": len(q_idx), "database": len(db_idx)}
            pr[f"{d}@{bits}"] = {"precision": m["pr_precision"], "recall": m["pr_recall"]}
    return metrics, pr


def per_class_ap(image: np.ndarray, text: np.ndarray, labels: np.ndarray, names: Sequence[str],
                 q_idx: np.ndarray, db_idx: np.ndarray, splits: Splits, *,
                 per_query: bool = False) -> dict[str, dict[str, Any]]:
    """Per class c: mean AP over the queries labelled c, relevant = retrieval items labelled c.

    `per_query` also keeps each of those queries' AP ("i2t_query_ap") and its position among the
    queries ("query_index"), so a paired bootstrap can put an interval on a class-level difference.
    """
    train_counts = multi_hot(splits.train, names).sum(axis=0)
    out = {}
    for c, name in enumerate(names):
        members = np.flatnonzero(labels[q_idx, c] > 0)
        rows = q_idx[members]
        entry: dict[str, Any] = {"train_positives": int(train_counts[c]), "query_positives": len(rows),
                                 "retrieval_positives": int(labels[db_idx, c].sum())}
        if per_query:
            entry["query_index"] = members.tolist()
        for d, (src, dst) in (("i2t", (image, text)), ("t2i", (text, image))):
            entry[f"{d}_ap"] = None
            if len(rows):
                n, r = distance_histograms(src[rows], dst[db_idx], np.ones((len(rows), 1)), labels[db_idx, c:c + 1])
                ap = per_query_ap(n, r)
                entry[f"{d}_ap"] = float(ap.mean())
                if per_query:
                    entry[f"{d}_query_ap"] = [round(float(v), 6) for v in ap]
        out[name] = entry
    return out


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _cancelled(cancel: Any) -> bool:
    return bool(cancel is not None and (cancel.is_set() if hasattr(cancel, "is_set") else cancel()))


def run_one(samples: Sequence[Sample], spec: GridSpec, run: GridRun, out: Path, *, progress: Progress | None = None,
            cancel: Any = None, data_hash: str | None = None) -> dict[str, Any] | None:
    """Train, evaluate and audit one run; its result dict (None when cancelled). Skips a run whose
    result file exists with the same settings; refuses one made with other settings."""
    data_hash = data_hash or samples_hash(samples)
    label_names = sorted({label for s in samples for label in s.labels})
    model_cfg, train_cfg = run_configs(spec, run, label_names, out / ".feature-cache")
    key = fingerprint(model_cfg, train_cfg, spec, data_hash)
    result_file = out / "results" / f"{run.name}.json"
    if result_file.is_file():
        return _finished(result_file, key)
    splits = make_splits(samples, sizes=spec.split_sizes, seed=run.seed)
    run_dir = out / "runs" / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    save_splits(splits, run_dir / "splits.json")
    timer = _Timer(progress, {"run": run.name})
    fitted = fit(model_cfg, train_cfg, splits, run_dir, progress=timer, cancel=cancel)
    if fitted.cancelled or fitted.checkpoint_dir is None or _cancelled(cancel):
        return None
    best = Path(fitted.checkpoint_dir)
    shutil.copyfile(run_dir / "splits.json", best / "splits.json")  # so the app can evaluate it, as its own
    result = _evaluate_run(best, splits, run, train_cfg, spec, run_dir)
    result.update(name=run.name, variant=run.variant.label, method=run.variant.method,
                  components=run.variant.components, noise_rate=run.noise_rate, seed=run.seed, bits=spec.bits,
                  noise_handling=train_cfg.noise_handling, fingerprint=key, splits=splits.counts(),
                  checkpoint=str(best.relative_to(out)),
                  fit={"best_val_map": fitted.best_val_map, "epochs_run": fitted.epochs_run},
                  timing={**result["timing"], "train_s_per_epoch": timer.per_epoch(), "cache_fill_s": timer.cache_s})
    result_file.parent.mkdir(parents=True, exist_ok=True)
    _write_json(result_file, result)
    if not spec.keep_last:
        shutil.rmtree(run_dir / "last", ignore_errors=True)
    return result


def _finished(result_file: Path, key: dict[str, Any]) -> dict[str, Any]:
    result = json.loads(result_file.read_text(encoding="utf-8"))
    if result.get("fingerprint") != key:
        changed = [k for k in key if result.get("fingerprint", {}).get(k) != key[k]]
        raise DataError(result_file, f"was made with other settings ({', '.join(changed) or 'unknown'}); "
                        "use another output folder or delete this file to run it again")
    return result


def _eval_cache(model: Any, splits: Splits, spec: GridSpec, train_cfg: TrainConfig, device: torch.device
                ) -> FeatureCache | None:
    """The grid's shared frozen-stem cache, filled for the query and retrieval pairs, when
    `spec.eval_from_cache` and the model can use it; else None (full forward)."""
    if not (spec.eval_from_cache and train_cfg.feature_cache and train_cfg.cache_dir):
        return None
    cache = FeatureCache.for_model(model, train_cfg.cache_dir)
    if cache is not None:
        cache.prepare([*splits.query, *splits.retrieval], device=device, batch_size=train_cfg.batch_size,
                      num_workers=spec.num_workers)
    return cache


def _evaluate_run(best: Path, splits: Splits, run: GridRun, train_cfg: TrainConfig, spec: GridSpec,
                  run_dir: Path) -> dict[str, Any]:
    device = resolve_device(spec.device)
    model, _, _ = load_checkpoint(best, device=str(device))
    cache = _eval_cache(model, splits, spec, train_cfg, device)
    evaluation = evaluate_in_memory(model, splits, batch_size=train_cfg.batch_size, device=device,
                                    num_workers=spec.num_workers, cache=cache)
    latency = query_latency(model, splits.query, device)
    audit = None
    if run.noise_rate > 0 and (run_dir / "noise.json").is_file():
        audit = audit_noisy_pairs(model, splits.train, run_dir / "noise.json", top_fraction=spec.top_fraction,
                                  batch_size=train_cfg.batch_size, device=device, cache=cache)
    return {"eval_from_cache": cache is not None,"metrics": evaluation["metrics"], "pr": evaluation["pr"], "per_class": evaluation["per_class"],
            "metrics_without_captions": evaluation.get("metrics_without_captions"),
            "audit": audit, "machine": machine_info(device),
            "timing": {"encode_ms_per_pair": evaluation["encode_ms_per_pair"], "epochs": train_cfg.epochs,
                       "batch_size": train_cfg.batch_size, "query_ms": latency}}


def _with_query_latency(result: dict[str, Any], samples: Sequence[Sample], spec: GridSpec, out: Path) -> dict[str, Any]:
    """A finished run's result, with `timing.query_ms` measured now (and saved) when it was made
    before the grid measured query latency and its checkpoint is still on disk; else unchanged."""
    best, splits_file = out / result.get("checkpoint", ""), out / "runs" / result["name"] / "splits.json"
    if result["timing"].get("query_ms") or not (best.is_dir() and splits_file.is_file()):
        return result
    device = resolve_device(spec.device)
    model, _, _ = load_checkpoint(best, device=str(device))
    result["timing"]["query_ms"] = query_latency(model, load_splits(splits_file, samples).query, device)
    _write_json(out / "results" / f"{result['name']}.json", result)
    return result


# ---- the whole grid ------------------------------------------------------------------------------
def machine_info(device: str | torch.device = "cpu") -> str:
    """One line: CPU, cores, OS, torch version and the GPU when the device is CUDA."""
    device = torch.device(device)
    parts = [_cpu_name(), f"{os.cpu_count()} logical cores", platform.platform(terse=True),
             f"torch {torch.__version__}"]
    if device.type == "cuda":
        parts.insert(0, f"GPU {torch.cuda.get_device_name(device)}")
    return ", ".join(p for p in parts if p)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_grid(samples: Sequence[Sample], spec: GridSpec, out: str | Path, *, progress: Progress | None = None,
             cancel: Any = None, command: str = "", data_name: str = "", train: bool = True) -> GridOutcome:
    """Every run of `spec` (finished ones skipped), then report.md and the PR plots from all results.

    `train=False` trains nothing: the report is written from the runs already finished (e.g. by
    several invocations that each ran part of the grid), and the header counts the missing ones.
    """
    from trainer.experiment_report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("runs/\n.feature-cache/\n", encoding="utf-8")
    runs, data_hash = spec.runs(), samples_hash(samples)
    _write_json(out / "grid.json", {"spec": spec.to_dict(), "command": command, "data": data_name,
                                    "data_hash": data_hash, "runs": [r.name for r in runs]})
    results, ran, skipped, cancelled = [], [], [], False
    for index, run in enumerate(runs):
        done_before = (out / "results" / f"{run.name}.json").is_file()
        if not (train or done_before):
            continue
        _emit(progress, {"event": "run", "index": index, "total": len(runs), "name": run.name,
                         "status": "skipped" if done_before else "started"})
        result = run_one(samples, spec, run, out, progress=progress, cancel=cancel, data_hash=data_hash)
        if result is None:
            cancelled = True
            break
        if done_before:
            result = _with_query_latency(result, samples, spec, out)
        results.append(result)
        (skipped if done_before else ran).append(run.name)
        _emit(progress, {"event": "run", "index": index + 1, "total": len(runs), "name": run.name,
                         "status": "finished"})
    machine = machine_info(resolve_device(spec.device))
    report = write_report(out, spec, results, command=command, machine=machine, data_name=data_name,
                          total_runs=len(runs)) if results else None
    return GridOutcome(out, report, results, ran, skipped, cancelled)


def _emit(progress: Progress | None, event: dict[str, Any]) -> None:
    if progress is not None:
        progress(event)


__all__ = ["EVAL_K", "GridOutcome", "GridRun", "GridSpec", "Variant", "evaluate_in_memory",
           "fingerprint", "machine_info", "method_components", "multi_hot", "parse_list", "parse_methods", "per_class_ap", "query_latency", "run_configs", "run_grid",
           "run_one", "samples_hash"]
