"""Train a hashing model on a library's own cases, register it, encode the library, evaluate.

library cases -> trainer Samples (stored model images + reports + labels) -> seeded,
patient-disjoint splits -> trainer.engine.fit (model selection on val only) -> checkpoint ->
registered model -> library codes -> mAP on the held-out query split against the retrieval split,
computed from the very codes that search uses.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medhash_app.core.domain_check import collapse_warnings, domain_report
from medhash_app.core.errors import DataError, JobCancelled, ModelError
from trainer.config import DEFAULT_METHOD, ModelConfig, TrainConfig
from trainer.data.captions import CAPTION_KEY
from trainer.data.manifest import Sample
from trainer.data.splits import load_splits, make_splits, save_splits
from trainer.engine import apply_method_defaults, fit
from trainer.evaluate import map_at_all, map_at_k, precision_at_k
from trainer.models.views import refuse_leak

SPLITS_FILE = "splits.json"
EVAL_K = (10, 50, 100)
DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image"), "i2i": ("image", "image"),
              "t2t": ("text", "text")}


@dataclass
class TrainRequest:
    """What the user asked for on the command line or in the trainer tab."""

    method: str = DEFAULT_METHOD
    bits: list[int] = field(default_factory=lambda: [16, 32, 64])
    epochs: int = 10
    seed: int = 0
    out: Path | None = None
    backbone: str = "embedded"
    weights_path: Path | None = None
    batch_size: int | None = None  # None: the method's default (the paper's), else 32
    lr: float | None = None
    noise_rate: float = 0.0
    noise_handling: str = "none"
    components: dict[str, bool] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    activate: bool = True
    split_sizes: dict[str, int] | None = None
    feature_cache: bool = True  # frozen-stem cache (no augmentation); off brings augmentation back


@dataclass
class TrainOutcome:
    model_id: int
    checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)  # core.domain_check: domains the model cannot tell apart

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "checkpoint": str(self.checkpoint), "metrics": self.metrics,
                "history": self.history, "warnings": self.warnings}


def method_switches() -> dict[str, dict[str, bool]]:
    """{method: {component switch: default}} for every method the trainer registers: what the trainer
    tab offers and `medhash train --components` accepts (imports every method: call it off the GUI thread)."""
    from trainer.experiment import method_components
    from trainer.models import available_methods

    return {m: method_components(m) for m in available_methods()}


def library_samples(library: Any) -> list[Sample]:
    """Cases usable for cross-modal training/evaluation: an image, a report and labels.

    An imported caption (`extra["caption"]`, core/captions.py) goes into the metadata under the
    trainer's caption key, so training sees the image with the caption its stored codes are made from."""
    samples = []
    for case in library.iter_cases():
        if not (case.get("report") or "").strip() or not case.get("labels") or not case.get("input_path"):
            continue
        metadata = {k: case.get(k) for k in ("domain", "view", "laterality", "sex", "age", "modality", "body_part")}
        caption = (case.get("extra") or {}).get(CAPTION_KEY)
        if isinstance(caption, str) and caption.strip():
            metadata[CAPTION_KEY] = caption.strip()
        samples.append(Sample(id=case["id"], image_path=str(library.path_of(case["input_path"])),
                              report=case["report"], labels=list(case["labels"]),
                              patient_id=case.get("patient_key"), metadata=metadata))
    return samples


def _configs(req: TrainRequest, label_names: list[str]) -> tuple[ModelConfig, TrainConfig]:
    model_cfg = ModelConfig(method=req.method, backbone=req.backbone,
                            weights_path=str(req.weights_path) if req.weights_path else None, bits=req.bits,
                            components=req.components, label_names=label_names, options=req.options)
    train_kw: dict[str, Any] = {"epochs": req.epochs, "seed": req.seed, "device": req.device,
                                "noise_rate": req.noise_rate, "noise_handling": req.noise_handling,
                                "feature_cache": req.feature_cache}
    explicit = {name: value for name, value in (("lr", req.lr), ("batch_size", req.batch_size))
                if value is not None}
    train_cfg = TrainConfig(**train_kw, **explicit)
    return model_cfg, apply_method_defaults(model_cfg, train_cfg, user_set=explicit)


def _out_dir(session: Any, req: TrainRequest) -> Path:
    if req.out is not None:
        return Path(req.out)
    existing = len(session.library.list_models())
    return session.library.models_dir / f"{req.method}-{'-'.join(map(str, req.bits))}-s{req.seed}-{existing + 1}"


def train_on_library(session: Any, req: TrainRequest, *, progress: Callable[[dict], None] | None = None,
                     cancel: threading.Event | None = None) -> TrainOutcome | None:
    """The whole training job; `progress` receives the engine's events (trainer/engine.py), then
    {"event": "encode", "model_id"} and {"event": "encode", "model_id", "done", "total", "eta_s"} while the
    library is encoded, {"event": "evaluate", "model_id"} and the final {"event": "done", ...}.

    Under torchrun every process trains; only the main one (rank 0) registers, encodes and
    evaluates, the others return None. The leak study's diagnostic option is refused before anything
    runs (ModelError naming it; `session.register_checkpoint` refuses such a model too).
    """
    refuse_leak(req.options, f"{req.method} training request", ModelError)
    samples = library_samples(session.library)
    if len(samples) < 20:
        raise DataError(str(session.library.folder), f"only {len(samples)} cases have an image, a report and "
                        "labels; training needs at least 20")
    label_names = sorted({label for s in samples for label in s.labels})
    splits = make_splits(samples, sizes=req.split_sizes, seed=req.seed)
    model_cfg, train_cfg = _configs(req, label_names)
    out_dir = _out_dir(session, req)
    out_dir.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        save_splits(splits, out_dir / SPLITS_FILE)
    result = fit(model_cfg, train_cfg, splits, out_dir, progress=progress, cancel=cancel)
    if not result.main_process:
        return None
    if result.cancelled or result.checkpoint_dir is None:
        raise JobCancelled(out_dir, f"training stopped after {result.epochs_run} epoch(s); nothing was "
                           f"registered. Run again with --out {out_dir} to resume")
    checkpoint = Path(result.checkpoint_dir)
    (checkpoint / SPLITS_FILE).write_bytes((out_dir / SPLITS_FILE).read_bytes())
    model_id = session.register_checkpoint(checkpoint, activate=req.activate, name=out_dir.name)
    _emit(progress, {"event": "encode", "model_id": model_id})
    session.encode_library(model_id, cancel=cancel, progress=_encode_events(progress, model_id))
    _emit(progress, {"event": "evaluate", "model_id": model_id})
    report = evaluate_model(session, model_id)
    session.library.set_model_metrics(model_id, report["metrics"])
    _emit(progress, {"event": "done", "model_id": model_id, "checkpoint": str(checkpoint),
                     "metrics": report["metrics"], "warnings": report["warnings"]})
    return TrainOutcome(model_id, checkpoint, report["metrics"], list(result.history), report["warnings"])


def _emit(progress: Callable[[dict], None] | None, event: dict) -> None:
    if progress is not None:
        progress(event)


def _encode_events(progress: Callable[[dict], None] | None, model_id: int) -> Callable[[int, int], None]:
    """Encode progress as events with an ETA from this encode's own pace (the window's trainer tab
    shows `eta_s`; without it the training's last estimate stood still through the encode)."""
    started = time.monotonic()

    def on_progress(done: int, total: int) -> None:
        elapsed = time.monotonic() - started
        eta = round(elapsed / done * (total - done), 1) if done else None
        _emit(progress, {"event": "encode", "model_id": model_id, "done": done, "total": total, "eta_s": eta})

    return on_progress


def _multi_hot(cases: list[dict], names: list[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(cases), len(names)), dtype=np.uint8)
    for row, case in enumerate(cases):
        for label in case.get("labels") or []:
            if label in index:
                out[row, index[label]] = 1
    return out


def _codes_for(library: Any, model_id: int, modality: str, bits: int, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Stored codes of `ids` (those that have one), in the order of `ids`."""
    all_ids, codes = library.get_codes(model_id, modality, bits)
    row = {cid: i for i, cid in enumerate(all_ids.tolist())}
    keep = [cid for cid in ids if cid in row]
    return codes[[row[c] for c in keep]] if keep else codes[:0], keep


def evaluate_model(session: Any, model_id: int | None = None, seed: int = 0) -> dict[str, Any]:
    """mAP@all / mAP@k / P@k per direction and code length on the model's held-out query split,
    from the codes stored in the library; plus the same for random codes (the chance level)."""
    model = session.resolve_model(model_id)
    splits_path = Path(model["checkpoint_path"]) / SPLITS_FILE
    if not splits_path.is_file():
        raise ModelError(splits_path, "this model has no saved splits, so it cannot be evaluated here")
    library = session.library
    samples = library_samples(library)
    splits = load_splits(splits_path, samples)
    q_ids, db_ids = [s.id for s in splits.query], [s.id for s in splits.retrieval]
    cases = {c["id"]: c for c in library.get_cases(q_ids + db_ids)}
    names = sorted({label for c in cases.values() for label in c.get("labels") or []})
    metrics: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    for bits in model["bits"]:
        for name, (q_mod, db_mod) in DIRECTIONS.items():
            qc, qk = _codes_for(library, model["id"], q_mod, bits, q_ids)
            dc, dk = _codes_for(library, model["id"], db_mod, bits, db_ids)
            ql, dl = _multi_hot([cases[i] for i in qk], names), _multi_hot([cases[i] for i in dk], names)
            metrics[f"{name}@{bits}"] = {
                "map_all": round(float(map_at_all(qc, dc, ql, dl)), 4),
                **{f"map@{k}": round(float(map_at_k(qc, dc, ql, dl, k)), 4) for k in EVAL_K},
                **{f"p@{k}": round(float(precision_at_k(qc, dc, ql, dl, k)), 4) for k in EVAL_K},
                "random_map_all": round(float(map_at_all(_random_like(qc, rng), _random_like(dc, rng), ql, dl)), 4),
                "queries": len(qk), "database": len(dk)}
    by_domain = _by_domain(library, model["id"], max(model["bits"]), q_ids, db_ids, cases, names, rng)
    return {"model_id": model["id"], "splits": splits.counts(), "metrics": metrics, "by_domain": by_domain,
            "warnings": collapse_warnings(by_domain)}


def _by_domain(library: Any, model_id: int, bits: int, q_ids: list[str], db_ids: list[str], cases: dict[str, dict],
               names: list[str], rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """core.domain_check.domain_report at the longest code length, on cases coded in both modalities."""
    tables = {}  # each modality's codes read once, for both splits
    for modality in ("image", "text"):
        all_ids, codes = library.get_codes(model_id, modality, bits)
        tables[modality] = (codes, {cid: i for i, cid in enumerate(all_ids.tolist())})

    def both(ids: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        keep = [cid for cid in ids if all(cid in rows for _, rows in tables.values())]
        return {m: codes[[rows[c] for c in keep]] for m, (codes, rows) in tables.items()}, keep

    (qc, qk), (dc, dk) = both(q_ids), both(db_ids)
    return domain_report(qc, dc, _multi_hot([cases[i] for i in qk], names), _multi_hot([cases[i] for i in dk], names),
                         [cases[i].get("domain") or "other" for i in qk], [cases[i].get("domain") or "other" for i in dk],
                         [cases[i].get("report") or "" for i in dk], bits, rng)


def _random_like(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=codes.shape, dtype=np.uint8)
