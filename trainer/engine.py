"""The fit loop: AdamW, AMP on CUDA, gradient clipping, per-epoch validation mAP, atomic
checkpoints (`last/` every epoch with resume state, `best/` chosen on the validation split only),
resume, cancellation and throttled progress events; the frozen-stem cache (trainer/feature_cache.py)
and data-parallel training under torchrun (trainer/distributed.py: every rank runs `fit`, rank 0
alone validates, writes files and reports progress).

Method hooks honoured: `param_groups(train_cfg)` (AdamW groups; each group's lr relative to
TrainConfig.lr is kept through the schedule) and `default_train_overrides` (applied by
`apply_method_defaults`, which the app's training service calls before `fit`).

Progress events are dicts (the CLI prints them as JSON lines):
    {"event": "start", "epoch", "epochs", "steps", "resumed"}
    {"event": "cache_fill", "done", "total"}                     (while filling the feature cache, ~10/s)
    {"event": "cache", "hits", "computed", "damaged", "seconds"}     (feature cache on, once)
    {"event": "step", "epoch", "step", "steps", "losses", "lr", "eta_s"}       (at most ~10/s)
    {"event": "epoch", "epoch", "epochs", "step", "steps", "losses", "val_map", "best_val_map", "eta_s"}
    {"event": "done", "epoch", "best_val_map", "checkpoint_dir", "cancelled"}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model

from trainer import distributed
from trainer.checkpoint import STATE_JSON, STATE_TENSORS, WEIGHTS, save_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data.captions import load_captions
from trainer.data.dataset import Batch, make_loader
from trainer.data.manifest import Sample
from trainer.data.noise import NoiseRecord, inject_noise
from trainer.data.splits import Splits, save_splits
from trainer.distributed import DistInfo
from trainer.errors import DataError, TrainingError
from trainer.evaluate import distance_histograms, map_at_all, pack_signs, per_query_ap
from trainer.feature_cache import FeatureCache, default_cache_dir
from trainer.models import HashingModel, build_model, get_method
from trainer.models.backbones import Backbone
from trainer.resume import optimizer_from_files, optimizer_to_files

resolve_device = distributed.resolve_device  # kept here for callers of the engine's old helper
Progress = Callable[[dict[str, Any]], None]
STEP_EVENT_INTERVAL_S = 0.1
# Train settings that must match to resume a run (epochs may grow, workers/device may change).
_RESUME_KEYS = ("batch_size", "lr", "weight_decay", "seed", "grad_clip", "noise_rate", "noise_handling", "warmup_steps",
                "backbone_lr_scale")


@dataclass
class FitResult:
    checkpoint_dir: Path | None  # best/ (chosen on val); None if cancelled before the first epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_map: float = float("nan")
    epochs_run: int = 0  # epochs completed in this run folder, resumed ones included
    cancelled: bool = False
    last_dir: Path | None = None
    main_process: bool = True  # False on torchrun ranks > 0: they must not register, encode or print


# ---- small helpers -------------------------------------------------------------------------------
def _cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    return bool(cancel.is_set() if hasattr(cancel, "is_set") else cancel())


def _with_label_names(cfg: ModelConfig, splits: Splits) -> ModelConfig:
    if cfg.label_names:
        return cfg
    names = sorted({lab for part in (splits.train, splits.val, splits.retrieval, splits.query) for s in part for lab in s.labels})
    if not names:
        raise DataError("training data", "no sample has labels; derive them from the reports (label_fn) first")
    return dataclasses.replace(cfg, label_names=names)


def _check_splits(splits: Splits) -> None:
    if len(splits.train) < 2:
        raise DataError("training data", f"the train split has {len(splits.train)} pairs; at least 2 are needed")
    if not splits.val:
        raise DataError("training data", "the validation split is empty; model selection needs it")


def data_hash(train: Sequence[Sample], val: Sequence[Sample]) -> str:
    """SHA-256 over the pairs trained and validated on (ids, reports, labels; after noise)."""
    h = hashlib.sha256()
    for part, samples in (("train", train), ("val", val)):
        for s in samples:
            h.update(json.dumps([part, s.id, s.report, sorted(s.labels)]).encode())
    return h.hexdigest()


def _param_groups(model: HashingModel, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm parameters (1-D), the usual AdamW practice."""
    params = model.trainable_parameters()
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_groups(model: HashingModel, train_cfg: TrainConfig) -> list[dict[str, Any]]:
    """The method's `param_groups(train_cfg)` when it has one, else decay / no-decay groups.

    Every group gets "lr_scale" (its own lr, or the given "lr_scale", relative to train_cfg.lr) so
    that the warm-up/cosine schedule keeps e.g. TriPAH's backbone at a tenth of its heads' rate.
    """
    hook = getattr(model, "param_groups", None)
    groups = [dict(g) for g in hook(train_cfg)] if callable(hook) else _param_groups(model, train_cfg.weight_decay)
    given = [id(p) for g in groups for p in g["params"]]
    if len(given) != len(set(given)) or set(given) != {id(p) for p in model.trainable_parameters()}:
        raise TrainingError(model.cfg.method, "param_groups must list every trainable parameter exactly once")
    for g in groups:
        g["params"] = list(g["params"])
        g["lr_scale"] = float(g.get("lr_scale", float(g.get("lr", train_cfg.lr)) / train_cfg.lr))
        g["lr"] = train_cfg.lr * g["lr_scale"]
    if train_cfg.backbone_lr_scale is not None:
        groups = _with_backbone_scale(groups, {id(p) for p in model.backbone.parameters()}, train_cfg)
    return groups


def _with_backbone_scale(groups: list[dict[str, Any]], backbone_ids: set[int], train_cfg: TrainConfig
                         ) -> list[dict[str, Any]]:
    """Each group split into its backbone and other parameters; the backbone part learns at
    `train_cfg.backbone_lr_scale` x lr (replacing the method's own backbone scale: an explicit,
    recorded setting of a tuning protocol), the rest keeps its group's scale."""
    out = []
    for g in groups:
        for in_backbone in (False, True):
            params = [p for p in g["params"] if (id(p) in backbone_ids) == in_backbone]
            if params:
                scale = float(train_cfg.backbone_lr_scale) if in_backbone else g["lr_scale"]
                out.append({**g, "params": params, "lr_scale": scale, "lr": train_cfg.lr * scale})
    return out


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def apply_method_defaults(model_cfg: ModelConfig, train_cfg: TrainConfig, user_set: Iterable[str]) -> TrainConfig:
    """`train_cfg` with the method's `default_train_overrides` for every field NOT in `user_set`.

    The training service calls it with the names of the settings the user gave explicitly (CLI
    options, trainer-tab fields), so a paper's lr / batch size is the default, never a surprise.
    """
    overrides = dict(getattr(get_method(model_cfg.method), "default_train_overrides", {}) or {})
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TrainingError(model_cfg.method, f"default_train_overrides names unknown setting(s): {', '.join(unknown)}")
    explicit = set(user_set)
    chosen = {k: v for k, v in overrides.items() if k not in explicit}
    return dataclasses.replace(train_cfg, **chosen) if chosen else train_cfg


def _captions(model_cfg: ModelConfig) -> dict[str, str] | None:
    """Image captions from the method's `captions_file` option (MCPH), read once per fit."""
    path = model_cfg.options.get("captions_file")
    return load_captions(path) if path else None


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to 10 % of `base` at the last step."""
    warmup = min(warmup, max(1, total // 10))
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class _Reporter:
    """Sends progress events; step events throttled, ETA from this run's mean step time."""

    def __init__(self, progress: Progress | None, total_steps: int, done_steps: int) -> None:
        self.progress, self.total, self.done = progress, total_steps, done_steps
        self.started, self.steps_here, self.last_step_event = time.monotonic(), 0, 0.0

    def eta(self) -> float | None:
        if not self.steps_here:
            return None
        per_step = (time.monotonic() - self.started) / self.steps_here
        return round(per_step * max(0, self.total - self.done), 1)

    def step_done(self) -> None:
        self.steps_here += 1
        self.done += 1

    def emit(self, event: dict[str, Any], throttle: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if throttle and now - self.last_step_event < STEP_EVENT_INTERVAL_S:
            return
        if throttle:
            self.last_step_event = now
        self.progress({**event, "eta_s": self.eta()})

    def restart_clock(self) -> None:
        """Start the ETA clock again (after one-off work such as filling the feature cache)."""
        self.started, self.steps_here = time.monotonic(), 0


# ---- evaluation ----------------------------------------------------------------------------------
def mean_average_precision(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray) -> float:
    """mAP@all of continuous codes (sign = bit) by trainer.evaluate's protocol (packed codes, tie rule)."""
    return map_at_all(pack_signs(q_codes), pack_signs(db_codes), q_labels, db_labels)


def map_without_self(q_codes: np.ndarray, db_codes: np.ndarray, labels: np.ndarray, n_queries: int) -> np.ndarray:
    """Per-query AP of rows 0..n_queries-1 of `q_codes` against every row of `db_codes` (the same
    items, other modality), each query's own row left out of its ranking (continuous codes, sign = bit)."""
    q, db = pack_signs(q_codes[:n_queries]), pack_signs(db_codes)
    n, r = distance_histograms(q, db, labels[:n_queries], labels)
    own = np.unpackbits(q ^ db[:n_queries], axis=1).sum(axis=1)  # Hamming distance to the own item
    rows = np.arange(n_queries)
    n[rows, own] -= 1
    r[rows, own] -= labels[:n_queries].any(axis=1).astype(r.dtype)  # the own item is relevant iff labelled
    return per_query_ap(n, r)


def _labels_matrix(samples: Sequence[Sample], names: Sequence[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(samples), len(names)), dtype=bool)
    for r, s in enumerate(samples):
        for lab in s.labels:
            if lab in index:
                out[r, index[lab]] = True
    return out


@torch.no_grad()
def encode_dataset(
    model: HashingModel,
    samples: Sequence[Sample],
    backbone: Backbone | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    captions: Mapping[str, str] | None = None,
    cache: FeatureCache | None = None,
    reports: bool = True,
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Continuous codes (float32, (N, bits)) of every sample's image and report, in sample order.

    Images are encoded with their image-side metadata (and caption from `captions`, if given).
    `cache`: a FeatureCache already prepared for these samples; the forward starts from its stems.
    `reports=False` encodes the images only (the report dict comes back empty).
    Only a model built with the leak study's diagnostic option (`needs_paired_report`, see
    models.views.LEAK_OPTION) gets each image's paired report in its meta.
    """
    backbone = backbone or model.backbone
    device = torch.device(device)
    was_training = model.training
    model.eval()
    paired = bool(getattr(model, "needs_paired_report", False))
    if cache is not None:
        loader = cache.loader(samples, backbone.tokenizer, [], batch_size=batch_size, captions=captions,
                              paired_report=paired)
    else:
        loader = make_loader(samples, backbone.eval_transform, backbone.tokenizer, [], batch_size=batch_size,
                             num_workers=num_workers, pin_memory=device.type == "cuda", captions=captions,
                             paired_report=paired)
    img: dict[int, list[np.ndarray]] = {b: [] for b in model.bits}
    txt: dict[int, list[np.ndarray]] = {b: [] for b in model.bits}
    try:
        for batch in loader:
            batch = batch.to(device)
            if reports:
                encoded = encode_batch(model, batch)
            else:
                img_kw, _ = stem_kwargs(model, batch)
                encoded = (model.encode_image(batch.images, meta=batch.extras.get("meta"), **img_kw), {})
            for store, codes in zip((img, txt), encoded, strict=True):
                for b, c in codes.items():
                    store[b].append(c.float().cpu().numpy())
    finally:
        model.train(was_training)
    return ({b: np.concatenate(v) for b, v in img.items()},
            {b: np.concatenate(v) for b, v in txt.items() if v})


def encode_batch(model: HashingModel, batch: Batch) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """(image codes, text codes) of a batch, each from its own modality (the image with its own
    meta), starting from the cached stems when the batch carries them."""
    img_kw, txt_kw = stem_kwargs(model, batch)
    return (model.encode_image(batch.images, meta=batch.extras.get("meta"), **img_kw),
            model.encode_text(batch.tokens, **txt_kw))


def stem_kwargs(model: HashingModel, batch: Batch) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments (image side, text side) that start a model's forward from the cached stems
    a batch carries (`stem=`), empty for a modality computed from its input."""
    img_stem, txt_stem = model.batch_stems(batch)
    return ({} if img_stem is None else {"stem": img_stem}), ({} if txt_stem is None else {"stem": txt_stem})


def validate(model: HashingModel, samples: Sequence[Sample], batch_size: int, device: torch.device, *,
             cache: FeatureCache | None = None, captions: Mapping[str, str] | None = None,
             database: Sequence[Sample] = ()) -> dict[str, Any]:
    """I->T and T->I mAP@all of `samples` as queries at the largest code length.

    Without `database` the queries rank each other (the val items only). With it they rank
    `database` + `samples`, each query's own item left out (TrainConfig.val_database "train+val":
    the test's database holds the training set, so validation should too).
    """
    bits = max(model.bits)
    every = [*samples, *database]
    img, txt = encode_dataset(model, every, batch_size=batch_size, device=device, cache=cache, captions=captions)
    labels = _labels_matrix(every, model.cfg.label_names)
    if not database:
        q = slice(0, len(samples))
        i2t = mean_average_precision(img[bits][q], txt[bits][q], labels[q], labels[q])
        t2i = mean_average_precision(txt[bits][q], img[bits][q], labels[q], labels[q])
    else:
        i2t = float(map_without_self(img[bits], txt[bits], labels, len(samples)).mean())
        t2i = float(map_without_self(txt[bits], img[bits], labels, len(samples)).mean())
    return {"bits": bits, "i2t": i2t, "t2i": t2i, "mean": 0.5 * (i2t + t2i), "database": len(every)}


# ---- one optimisation step -----------------------------------------------------------------------
def _raise_if_not_finite(terms: dict[str, torch.Tensor], epoch: int, step: int, lr: float) -> None:
    for name, value in terms.items():
        if not bool(torch.isfinite(value).all()):
            kind = "NaN" if bool(torch.isnan(value).any()) else "infinite"
            raise TrainingError(
                f"epoch {epoch}, step {step}",
                f"loss term '{name}' became {kind}; lower the learning rate (now {lr:.3g}) "
                "or keep gradient clipping on",
            )


class _LossModule(torch.nn.Module):
    """forward = model.loss_terms, so DistributedDataParallel can hook a training step's backward."""

    def __init__(self, model: HashingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, train_cfg: TrainConfig, epoch: int) -> dict[str, torch.Tensor]:
        return self.model.loss_terms(batch, train_cfg, epoch=epoch)


def _train_step(model: HashingModel, batch: Batch, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                autocast: Callable[[], AbstractContextManager], train_cfg: TrainConfig, epoch: int, step: int,
                lr: float, forward: torch.nn.Module | None = None) -> dict[str, float]:
    """One optimiser step; `forward` is the DDP-wrapped `_LossModule` under torchrun."""
    with autocast():
        terms = forward(batch, train_cfg, epoch) if forward is not None else model.loss_terms(batch, train_cfg,
                                                                                            epoch=epoch)
    _raise_if_not_finite(terms, epoch, step, lr)
    loss = sum(terms.values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if train_cfg.grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), train_cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return {**{k: float(v.detach()) for k, v in terms.items()}, "total": float(loss.detach())}


def _oom_error(batch_size: int) -> TrainingError:
    smaller = max(2, batch_size // 2)
    return TrainingError("training", f"out of memory at batch size {batch_size}; try batch size {smaller}")


# ---- run state -----------------------------------------------------------------------------------
@dataclass
class _RunState:
    epoch: int = 0  # last completed epoch
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_map: float = -1.0
    best_epoch: int = 0


def _state_json(state: _RunState, model_cfg: ModelConfig, train_cfg: TrainConfig, dhash: str,
                scaler: torch.amp.GradScaler, opt_json: dict[str, Any]) -> dict[str, Any]:
    return {**dataclasses.asdict(state), "model_config": model_cfg.to_dict(), "train_config": train_cfg.to_dict(),
            "data_hash": dhash, "scaler": scaler.state_dict(), "optimizer": opt_json}


def _restore(last: Path, model: HashingModel, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             model_cfg: ModelConfig, train_cfg: TrainConfig, dhash: str) -> _RunState:
    """Load weights, optimizer and counters from last/, refusing a folder that holds another run."""
    data = json.loads((last / STATE_JSON).read_text(encoding="utf-8"))
    old_train = data["train_config"]
    new_train = train_cfg.to_dict()
    changed = [k for k in _RESUME_KEYS if old_train.get(k) != new_train.get(k)]
    if data["model_config"] != model_cfg.to_dict() or data["data_hash"] != dhash or changed:
        what = ", ".join(changed) or ("model settings" if data["data_hash"] == dhash else "training data")
        raise TrainingError(last.parent, f"holds a run with different {what}; use another folder or resume=False")
    load_model(model, str(last / WEIGHTS), strict=True)
    tensors = load_file(str(last / STATE_TENSORS))
    optimizer_from_files(optimizer, tensors, data["optimizer"])
    if data.get("scaler"):
        scaler.load_state_dict(data["scaler"])
    return _RunState(data["epoch"], data["global_step"], data["history"], data["best_val_map"], data["best_epoch"])


def _prepare_training_data(splits: Splits, train_cfg: TrainConfig, out_dir: Path, write: bool = True) -> list[Sample]:
    """Train samples after seeded noise injection; splits and the noise record are saved beside the run
    (by rank 0 only under torchrun; the seeded noise is the same on every rank)."""
    if write:
        save_splits(splits, out_dir / "splits.json")
    if train_cfg.noise_rate <= 0:
        return list(splits.train)
    noisy, record = inject_noise(splits.train, train_cfg.noise_rate, train_cfg.seed)
    if write:
        record.save(out_dir / "noise.json")
    return noisy


def _open_cache(model: HashingModel, train_cfg: TrainConfig, out_dir: Path, samples: Sequence[Sample],
                device: torch.device, autocast: Callable[[], AbstractContextManager], info: DistInfo,
                reporter: _Reporter, cancel: Any) -> tuple[FeatureCache | None, bool]:
    """(the frozen-stem cache filled for `samples` or None when it is off / unusable, cancelled?)."""
    if not train_cfg.feature_cache:
        return None, False
    cache = FeatureCache.for_model(model, Path(train_cfg.cache_dir) if train_cfg.cache_dir else default_cache_dir(out_dir))
    if cache is None:
        return None, False

    def fill_progress(done: int, total: int) -> None:
        reporter.emit({"event": "cache_fill", "done": done, "total": total}, throttle=done < total)

    try:
        report = cache.prepare(samples, device=device, batch_size=train_cfg.batch_size,
                               num_workers=train_cfg.num_workers, autocast=autocast, info=info,
                               progress=fill_progress, cancel=None if info.active else lambda: _cancelled(cancel))
    except torch.OutOfMemoryError as exc:
        raise _oom_error(train_cfg.batch_size) from exc
    reporter.emit(report.to_event())
    reporter.restart_clock()
    return cache, report.cancelled


def _steps_per_epoch(n: int, local_bs: int, info: DistInfo) -> int:
    """Optimiser steps per epoch: the same on 1 or N processes for the same global batch."""
    local = n // info.world_size
    if local < 1:
        raise DataError("training data", f"{n} training pairs cannot be shared by {info.world_size} processes")
    return local // local_bs if local >= local_bs else 1


def _train_loader(model: HashingModel, samples: Sequence[Sample], label_names: Sequence[str], train_cfg: TrainConfig,
                  local_bs: int, epoch: int, info: DistInfo, device: torch.device, cache: FeatureCache | None,
                  captions: Mapping[str, str] | None) -> Any:
    """This epoch's batches: seeded shuffle (a DistributedSampler share under torchrun), cached or augmented."""
    sampler = distributed.sampler(len(samples), info, seed=train_cfg.seed, epoch=epoch)
    drop_last = len(samples) // info.world_size >= local_bs
    kw = {"batch_size": local_bs, "shuffle": True, "seed": train_cfg.seed + epoch, "sampler": sampler,
          "drop_last": drop_last, "captions": captions}
    if cache is not None:
        return cache.loader(samples, model.backbone.tokenizer, label_names, **kw)
    return make_loader(samples, model.backbone.train_transform, model.backbone.tokenizer, label_names,
                       num_workers=train_cfg.num_workers, pin_memory=device.type == "cuda", **kw)


def _validate_on_main(model: HashingModel, samples: Sequence[Sample], batch_size: int, device: torch.device,
                      info: DistInfo, cache: FeatureCache | None, captions: Mapping[str, str] | None,
                      database: Sequence[Sample] = ()) -> dict | None:
    """Validation by rank 0; every rank gets its result (the others wait for it)."""
    val = None
    if info.is_main:
        try:
            val = validate(model, samples, batch_size, device, cache=cache, captions=captions, database=database)
        except torch.OutOfMemoryError as exc:
            raise _oom_error(batch_size) from exc
    return distributed.broadcast_object(val)


# ---- the loop --------------------------------------------------------------------------------------
def fit(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    splits: Splits,
    out_dir: str | Path,
    progress: Progress | None = None,
    cancel: Any = None,
    resume: bool = True,
) -> FitResult:
    """Train `model_cfg.method` on splits.train, select on splits.val, write out_dir/{best,last}/.

    `cancel` is a callable returning True or an object with `is_set()` (threading.Event); a
    cancelled epoch is discarded and the run can be resumed from last/. Raises TrainingError for
    NaN/Inf losses and out-of-memory, DataError for unusable splits.

    Under torchrun every process calls `fit` with the same arguments: TrainConfig.batch_size is the
    global batch, split evenly over the ranks; rank 0 alone validates, writes files and calls
    `progress`; every rank returns the same FitResult.
    """
    out_dir = Path(out_dir)
    _check_splits(splits)
    model_cfg = _with_label_names(model_cfg, splits)
    info, device = distributed.setup(train_cfg.device)
    try:
        return _fit(model_cfg, train_cfg, splits, out_dir, progress if info.is_main else None, cancel, resume,
                    info, device)
    finally:
        distributed.teardown(info)


def _fit(model_cfg: ModelConfig, train_cfg: TrainConfig, splits: Splits, out_dir: Path, progress: Progress | None,
         cancel: Any, resume: bool, info: DistInfo, device: torch.device) -> FitResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_cfg.seed)
    train_samples = _prepare_training_data(splits, train_cfg, out_dir, write=info.is_main)
    dhash = data_hash(train_samples, splits.val)
    last, best = out_dir / "last", out_dir / "best"
    can_resume = resume and (last / STATE_JSON).is_file()

    model = build_model(model_cfg, pretrained=not can_resume).to(device)
    if train_cfg.noise_handling not in type(model).noise_handlings:
        raise TrainingError(model_cfg.method, f"does not support noise handling '{train_cfg.noise_handling}'")
    optimizer = torch.optim.AdamW(optimizer_groups(model, train_cfg), lr=train_cfg.lr)
    use_amp = train_cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else nullcontext
    state = _restore(last, model, optimizer, scaler, model_cfg, train_cfg, dhash) if can_resume else _RunState()
    forward = distributed.wrap_for_training(_LossModule(model), info, device)

    bs = train_cfg.batch_size
    local_bs = distributed.per_rank_batch(bs, info)
    steps = _steps_per_epoch(len(train_samples), local_bs, info)
    reporter = _Reporter(progress, steps * train_cfg.epochs, state.global_step)
    reporter.emit({"event": "start", "epoch": state.epoch + 1, "epochs": train_cfg.epochs, "steps": steps,
                   "resumed": can_resume})
    captions = _captions(model_cfg)
    val_database = list(splits.train) if train_cfg.val_database == "train+val" else []  # clean reports
    cache, cancelled = _open_cache(model, train_cfg, out_dir, [*train_samples, *splits.val, *val_database], device,
                                   autocast, info, reporter, cancel)
    if cancelled:
        return _cancelled_result(state, best, last, reporter)
    meta = {"training_data_hash": dhash, "train_config": train_cfg.to_dict(), "splits": splits.counts(),
            "noise": {"rate": train_cfg.noise_rate, "seed": train_cfg.seed}}

    for epoch in range(state.epoch + 1, train_cfg.epochs + 1):
        epoch_started = time.perf_counter()
        torch.manual_seed(train_cfg.seed + epoch)
        model.train()
        loader = _train_loader(model, train_samples, model_cfg.label_names, train_cfg, local_bs, epoch, info, device,
                               cache, captions)
        sums: dict[str, float] = {}
        lr = train_cfg.lr
        for step, batch in enumerate(loader, start=1):
            if distributed.any_rank(_cancelled(cancel), device):
                return dataclasses.replace(_cancelled_result(state, best, last, reporter), main_process=info.is_main)
            lr = lr_at(state.global_step, steps * train_cfg.epochs, train_cfg.warmup_steps, train_cfg.lr)
            _set_lr(optimizer, lr)
            try:
                values = _train_step(model, batch.to(device, non_blocking=True), optimizer, scaler, autocast,
                                     train_cfg, epoch, step, lr, forward)
            except torch.OutOfMemoryError as exc:
                raise _oom_error(bs) from exc
            state.global_step += 1
            reporter.step_done()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            reporter.emit({"event": "step", "epoch": epoch, "step": step, "steps": steps, "losses": values,
                           "lr": lr}, throttle=step < steps)
        mean_losses = {k: v / max(1, steps) for k, v in sums.items()}
        val = None
        if epoch % train_cfg.val_every == 0 or epoch == train_cfg.epochs:
            val = _validate_on_main(model, splits.val, bs, device, info, cache, captions, val_database)
        state.epoch = epoch
        # wall seconds of the epoch, validation included: a run's cost survives resumes in last/
        state.history.append({"epoch": epoch, "losses": mean_losses, "val_map": val, "lr": lr,
                              "seconds": round(time.perf_counter() - epoch_started, 2)})
        epoch_meta = {**meta, "epoch": epoch, "metrics": {"val_map": val}}
        if val is not None and val["mean"] > state.best_val_map:
            state.best_val_map, state.best_epoch = val["mean"], epoch
            if info.is_main:
                save_checkpoint(best, model, meta=epoch_meta)
        if info.is_main:
            opt_tensors, opt_json = optimizer_to_files(optimizer)
            save_checkpoint(last, model, meta=epoch_meta,
                            extra_tensors=opt_tensors,
                            extra_json=_state_json(state, model_cfg, train_cfg, dhash, scaler, opt_json))
        reporter.emit({"event": "epoch", "epoch": epoch, "epochs": train_cfg.epochs, "step": steps, "steps": steps,
                       "losses": mean_losses, "val_map": val, "best_val_map": state.best_val_map})

    distributed.barrier()  # rank 0's files are complete before any rank returns
    reporter.emit({"event": "done", "epoch": state.epoch, "best_val_map": state.best_val_map,
                   "checkpoint_dir": str(best), "cancelled": False})
    return FitResult(best, state.history, state.best_val_map, state.epoch, False, last, info.is_main)


def _cancelled_result(state: _RunState, best: Path, last: Path, reporter: _Reporter) -> FitResult:
    best_dir = best if state.best_epoch > 0 and best.is_dir() else None  # never a stale folder of another run
    reporter.emit({"event": "done", "epoch": state.epoch, "best_val_map": state.best_val_map,
                   "checkpoint_dir": str(best_dir) if best_dir else None, "cancelled": True})
    return FitResult(best_dir, state.history, state.best_val_map, state.epoch, True, last if last.is_dir() else None)


def noise_record(out_dir: str | Path) -> NoiseRecord | None:
    """The noise record a fit saved in `out_dir` (None when no noise was injected)."""
    path = Path(out_dir) / "noise.json"
    return NoiseRecord.load(path) if path.is_file() else None
