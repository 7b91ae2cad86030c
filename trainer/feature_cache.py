"""Frozen-feature cache: the backbone's frozen stems, computed once per image and per report,
kept on disk as float16 and memory-mapped in every later epoch and run.

Why: below `trainable_top_blocks` nothing changes during a fit, yet an uncached epoch decodes
every image and runs the whole image and text towers again. With the cache an epoch runs only the
trainable top (see benchmarks/results/feature_cache.md for the measured speed-up).

What is cached. `backbone.image_stem(eval_transform(image))` and `backbone.text_stem(tokens)` (the
real tokens of each report, padding dropped), computed in eval mode. Caching therefore implies the
deterministic eval transform for training images: augmentation (and dropout inside the frozen
layers) is OFF with the cache. `TrainConfig(feature_cache=False)` keeps the augmented path. Only
methods that list a modality in their `stem_cache` get cached stems (rules in
trainer/models/hashing.py); the rest train uncached.

Where. `TrainConfig.cache_dir`, by default `<out_dir>/../.feature-cache` (`default_cache_dir`): runs
are usually siblings in one folder, so they share it, it sits on the disk the user chose for
training output, and deleting the runs folder deletes it. Any part of it may be deleted at any time.

Layout and keys. `<cache_dir>/<kind>-<key>/` holds shards `shard-<id>.npy` (float16; images
(n, *stem shape), reports (total tokens, D)) each with a JSON sidecar `shard-<id>.json` (item keys,
shape, dtype, count, text offsets, SHA-256 of the .npy bytes), written after its shard, both
through temporary files and `os.replace`: a shard exists completely or not at all. `<key>` hashes
everything the stem depends on: backbone class/spec, the frozen weights (SHA-256 over every frozen
tensor), the stem/top split, the preprocessing (size, mean, std, eval transform) for images, the
tokenizer (class, max length, ids of a probe text) for reports. Items are keyed by content: SHA-256
of the image file's bytes, SHA-256 of the report text. A shard whose sidecar, shape, dtype, count
or checksum does not match is deleted and its items recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer import distributed
from trainer.data.captions import image_meta
from trainer.data.dataset import Batch, multi_hot, read_rgb
from trainer.data.manifest import Sample
from trainer.errors import TrainingError
from trainer.models.backbones import Backbone
from trainer.models.hashing import IMAGE_STEM, TEXT_STEM, TEXT_STEM_MASK, HashingModel

FORMAT = 1
IMAGE, TEXT = "image", "text"
CACHE_DIR_NAME = ".feature-cache"
SHARD_ITEMS = 2048  # items per shard ...
SHARD_BYTES = 256 * 2**20  # ... or bytes per shard: bound the memory used while filling the cache
ORPHAN_AGE_S = 3600  # temporary / sidecar-less files older than this are leftovers of a crash
_PROBE = "Probe 123: tokenizer identity, heart size normal; no effusion. Émoji-free Ünïcode."


# ---- content and identity keys --------------------------------------------------------------------
def default_cache_dir(out_dir: str | Path) -> Path:
    """`<out_dir>/../.feature-cache`: shared by sibling runs, on the disk chosen for training output."""
    return Path(out_dir).resolve().parent / CACHE_DIR_NAME


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def frozen_weights_digest(backbone: Backbone) -> str:
    """SHA-256 over every frozen parameter and buffer (name, dtype, shape, bytes) of the backbone."""
    h = hashlib.sha256()
    tensors = [(n, p) for n, p in backbone.named_parameters() if not p.requires_grad]
    tensors += list(backbone.named_buffers())
    for name, t in sorted(tensors, key=lambda item: item[0]):
        data = t.detach().cpu().contiguous()
        h.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        h.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes: any dtype, 0-d too
    return h.hexdigest()


def tokenizer_identity(tokenizer: Callable[[Sequence[str]], dict[str, Tensor]]) -> dict[str, Any]:
    """Class, max length and the ids of a probe text: a changed vocabulary or rule changes the ids."""
    ids = tokenizer([_PROBE])["input_ids"]
    ident = {"class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}",
             "max_length": getattr(tokenizer, "max_length", None),
             "probe_ids": hashlib.sha256(ids.cpu().numpy().astype(np.int64).tobytes()).hexdigest()}
    if hasattr(tokenizer, "base"):  # a wrapper (long-report handling): its rule and the wrapped tokenizer
        ident |= {"mode": getattr(tokenizer, "mode", None), "max_len": getattr(tokenizer, "max_len", None),
                  "base": tokenizer_identity(tokenizer.base)}
    return ident


def stem_identity(backbone: Backbone, kind: str, weights: str | None = None) -> dict[str, Any]:
    """Everything `kind`'s stem output depends on besides the item itself."""
    ident: dict[str, Any] = {"format": FORMAT, "kind": kind, "dtype": "float16",
                             "backbone": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
                             "spec": backbone.spec, "weights": weights or frozen_weights_digest(backbone)}
    if kind == IMAGE:
        ident |= {"split": backbone._image_split, "image_size": backbone.image_size, "mean": list(backbone.mean),
                  "std": list(backbone.std), "transform": repr(backbone.eval_transform)}
    else:
        ident |= {"split": backbone._text_split, "max_text_length": backbone.max_text_length,
                  "tokenizer": tokenizer_identity(backbone.tokenizer)}
    return ident


def identity_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def stem_is_frozen(backbone: Backbone, kind: str) -> bool:
    """A stem can be cached only when nothing in it trains."""
    modules = backbone._image_stem_modules() if kind == IMAGE else backbone._text_stem_modules()
    return not any(p.requires_grad for m in modules for p in m.parameters())


def _plain_tokens(tokens: Any) -> bool:
    return isinstance(tokens, dict) and set(tokens) == {"input_ids", "attention_mask"} and tokens["input_ids"].dim() == 2


# ---- atomic files ------------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---- one kind of stem on disk -------------------------------------------------------------------------
@dataclass
class _Shard:
    name: str
    data: np.ndarray  # memory-mapped, read-only
    offsets: np.ndarray | None  # text: row ranges per item


class StemStore:
    """Append-only float16 shards of one kind of stem ("image": fixed shape, "text": ragged rows)."""

    def __init__(self, folder: Path, kind: str, identity: dict[str, Any]) -> None:
        self.folder, self.kind = Path(folder), kind
        self.folder.mkdir(parents=True, exist_ok=True)
        ident = self.folder / "identity.json"
        if not ident.is_file():
            _atomic_write(ident, lambda fh: fh.write(json.dumps(identity, indent=2, sort_keys=True).encode()))
        self.shards: dict[str, _Shard] = {}
        self.index: dict[str, tuple[str, int]] = {}
        self.damaged = 0

    def load(self) -> int:
        """(Re)read every shard, deleting damaged ones; returns how many were damaged this time."""
        damaged_before = self.damaged
        self.shards, self.index = {}, {}
        for sidecar in sorted(self.folder.glob("shard-*.json")):
            shard = self._open(sidecar)
            if shard is None:
                self.damaged += 1
                sidecar.unlink(missing_ok=True)
                sidecar.with_suffix(".npy").unlink(missing_ok=True)
        self._clean_orphans()
        return self.damaged - damaged_before

    def _open(self, sidecar: Path) -> _Shard | None:
        """Map a shard after checking it against its sidecar; None when anything is off."""
        npy = sidecar.with_suffix(".npy")
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            keys, count = list(meta["keys"]), int(meta["count"])
            with open(npy, "rb") as fh:
                if hashlib.file_digest(fh, "sha256").hexdigest() != meta["sha256"]:
                    return None
            data = np.load(npy, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        offsets = np.asarray(meta["offsets"], dtype=np.int64) if meta.get("offsets") is not None else None
        if data.dtype != np.float16 or list(data.shape) != list(meta["shape"]) or len(keys) != count:
            return None
        if self.kind == IMAGE and data.shape[0] != count:
            return None
        if self.kind == TEXT and (offsets is None or len(offsets) != count + 1 or offsets[0] != 0
                                  or offsets[-1] != data.shape[0] or np.any(np.diff(offsets) < 0)):
            return None
        shard = _Shard(sidecar.stem, data, offsets)
        self.shards[shard.name] = shard
        for row, key in enumerate(keys):
            self.index.setdefault(key, (shard.name, row))
        return shard

    def _clean_orphans(self) -> None:
        """Remove leftovers of an interrupted write (old enough not to belong to a running writer)."""
        now = time.time()
        for path in self.folder.iterdir():
            orphan = path.name.startswith(".") and ".tmp-" in path.name
            orphan |= path.suffix == ".npy" and not path.with_suffix(".json").exists()
            try:
                if orphan and now - path.stat().st_mtime > ORPHAN_AGE_S:
                    path.unlink()
            except OSError:
                pass

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys not in the store, each once, in first-seen order."""
        return [k for k in dict.fromkeys(keys) if k not in self.index]

    def write(self, keys: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        """Add one shard (atomically: data first, then the sidecar that makes it visible)."""
        if not keys:
            return
        offsets = None
        if self.kind == IMAGE:
            data = np.stack([np.asarray(a, dtype=np.float16) for a in arrays])
        else:
            data = np.concatenate([np.asarray(a, dtype=np.float16) for a in arrays])
            offsets = np.cumsum([0, *[len(a) for a in arrays]]).tolist()
        if not np.isfinite(data).all():
            raise TrainingError("feature cache", "frozen features overflow float16; train with feature_cache off")
        name = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}"
        npy = self.folder / f"{name}.npy"
        _atomic_write(npy, lambda fh: np.save(fh, data, allow_pickle=False))
        with open(npy, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        meta = {"format": FORMAT, "kind": self.kind, "count": len(keys), "shape": list(data.shape),
                "dtype": "float16", "offsets": offsets, "sha256": digest, "keys": list(keys)}
        _atomic_write(self.folder / f"{name}.json", lambda fh: fh.write(json.dumps(meta).encode()))

    def get(self, key: str) -> np.ndarray:
        """One item's stem: (*shape) for images, (n_tokens, D) for reports (a view into the map)."""
        name, row = self.index[key]
        shard = self.shards[name]
        if shard.offsets is None:
            return shard.data[row]
        return shard.data[shard.offsets[row] : shard.offsets[row + 1]]


# ---- filling the cache --------------------------------------------------------------------------------
FillProgress = Callable[[int, int], None]


class _ShardWriter:
    """Buffers computed stems and writes a shard every SHARD_ITEMS items or SHARD_BYTES bytes."""

    def __init__(self, store: StemStore) -> None:
        self.store, self.keys, self.rows, self.nbytes = store, [], [], 0

    def add(self, keys: Sequence[str], rows: Sequence[np.ndarray]) -> None:
        self.keys.extend(keys)
        self.rows.extend(rows)
        self.nbytes += sum(r.nbytes for r in rows)
        if len(self.keys) >= SHARD_ITEMS or self.nbytes >= SHARD_BYTES:
            self.close()

    def close(self) -> None:
        self.store.write(self.keys, self.rows)
        self.keys, self.rows, self.nbytes = [], [], 0


class _Ticker:
    """Counts filled items, reports progress, and says when to stop (cancel)."""

    def __init__(self, total: int, progress: FillProgress | None, cancel: Callable[[], bool] | None) -> None:
        self.total, self.done, self.progress, self.cancel, self.stopped = total, 0, progress, cancel, False

    def __call__(self, n: int) -> bool:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)
        self.stopped = bool(self.cancel is not None and self.cancel())
        return self.stopped


class _Images(Dataset):
    def __init__(self, paths: Sequence[str], transform: Callable[[Any], Tensor]) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        return self.transform(read_rgb(self.paths[i]))


@dataclass
class CacheReport:
    """What `FeatureCache.prepare` found and did (the engine sends it as a progress event)."""

    hits: dict[str, int] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)
    damaged: int = 0
    seconds: float = 0.0
    cancelled: bool = False

    def to_event(self) -> dict[str, Any]:
        return {"event": "cache", "hits": self.hits, "computed": self.computed, "damaged": self.damaged,
                "seconds": round(self.seconds, 2), "cancelled": self.cancelled}


class FeatureCache:
    """The frozen stems of one backbone for the modalities a method can start from."""

    def __init__(self, root: str | Path, backbone: Backbone, modalities: Iterable[str]) -> None:
        self.root, self.backbone = Path(root), backbone
        self.modalities = frozenset(modalities)
        weights = frozen_weights_digest(backbone)
        self.stores: dict[str, StemStore] = {}
        for kind in sorted(self.modalities):
            identity = stem_identity(backbone, kind, weights)
            self.stores[kind] = StemStore(self.root / f"{kind}-{identity_key(identity)[:24]}", kind, identity)
        self._image_keys: dict[str, str] = {}

    @classmethod
    def for_model(cls, model: HashingModel, root: str | Path) -> FeatureCache | None:
        """The cache for `model`'s usable modalities, or None when its image stem cannot be cached
        (images are the expensive part; a text-only cache would still decode every image)."""
        kinds = {k for k in model.cached_stem_modalities() & {IMAGE, TEXT} if stem_is_frozen(model.backbone, k)}
        if TEXT in kinds and not _plain_tokens(model.backbone.tokenizer([_PROBE])):
            kinds.discard(TEXT)  # a wrapping tokenizer (chunks, context prompts) has no per-report stem
        return cls(root, model.backbone, kinds) if IMAGE in kinds else None

    # ---- keys ------------------------------------------------------------------------------------------
    def image_key(self, path: str) -> str:
        if path not in self._image_keys:
            try:
                self._image_keys[path] = file_sha256(path)
            except OSError as exc:
                raise TrainingError(path, f"cannot read image file ({exc.__class__.__name__})") from exc
        return self._image_keys[path]

    # ---- fill --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, samples: Sequence[Sample], *, device: torch.device, batch_size: int, num_workers: int = 0,
                autocast: Callable[[], AbstractContextManager] = nullcontext,
                info: distributed.DistInfo = distributed.SINGLE, progress: FillProgress | None = None,
                cancel: Callable[[], bool] | None = None) -> CacheReport:
        """Compute and store every missing stem of `samples`; each rank computes a share of them.

        `progress(done, total)` after each batch; `cancel()` True stops between batches (what was
        written stays valid and is reused next time) with `report.cancelled`. Collective under
        torchrun: every rank must call it with the same samples (and no `cancel`).
        """
        start = time.monotonic()
        report = CacheReport()
        report.damaged = sum(store.load() for store in self.stores.values())
        wanted = {IMAGE: [self.image_key(s.image_path) for s in samples] if IMAGE in self.stores else [],
                  TEXT: [text_sha256(s.report) for s in samples] if TEXT in self.stores else []}
        work: dict[str, list[str]] = {}
        for kind, store in self.stores.items():
            missing = store.missing(wanted[kind])
            report.hits[kind], report.computed[kind] = len(set(wanted[kind])) - len(missing), len(missing)
            mine = set(missing[info.rank :: info.world_size])
            if kind == IMAGE:  # one file per content key
                work[kind] = list({self.image_key(s.image_path): s.image_path for s in reversed(samples)
                                   if self.image_key(s.image_path) in mine}.values())
            else:
                work[kind] = sorted({s.report for s in samples if text_sha256(s.report) in mine}, key=len)
        tick = _Ticker(sum(len(v) for v in work.values()), progress, cancel)
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            if IMAGE in work:
                self._fill_images(work[IMAGE], device, batch_size, num_workers, autocast, tick)
            if TEXT in work and not tick.stopped:
                self._fill_texts(work[TEXT], device, batch_size, autocast, tick)
        finally:
            self.backbone.train(was_training)
        report.cancelled = tick.stopped
        distributed.barrier()
        for kind, store in self.stores.items():
            report.damaged += store.load()
            if store.missing(wanted[kind]) and not report.cancelled:
                raise TrainingError(store.folder, "feature cache is incomplete after filling it; delete the folder")
        report.seconds = time.monotonic() - start
        return report

    def _fill_images(self, paths: list[str], device: torch.device, batch_size: int, num_workers: int,
                     autocast: Callable[[], AbstractContextManager], tick: _Ticker) -> None:
        out = _ShardWriter(self.stores[IMAGE])
        loader = DataLoader(_Images(paths, self.backbone.eval_transform), batch_size=batch_size,
                            num_workers=num_workers, pin_memory=device.type == "cuda")
        done = 0
        for images in loader:
            with autocast():
                stem = self.backbone.image_stem(images.to(device, non_blocking=True))
            out.add([self.image_key(p) for p in paths[done : done + len(images)]],
                    list(stem.to(torch.float16).cpu().numpy()))
            done += len(images)
            if tick(len(images)):
                break
        out.close()

    def _fill_texts(self, texts: list[str], device: torch.device, batch_size: int,
                    autocast: Callable[[], AbstractContextManager], tick: _Ticker) -> None:
        out = _ShardWriter(self.stores[TEXT])
        for i in range(0, len(texts), batch_size):  # texts sorted by length: little padding
            chunk = texts[i : i + batch_size]
            tok = {k: v.to(device) for k, v in self.backbone.tokenizer(chunk).items()}
            with autocast():
                hidden, mask = self.backbone.text_stem(tok)
            if not torch.equal(mask.bool(), tok["attention_mask"].bool()):
                raise TrainingError(self.backbone.spec, "text stem mask differs from the attention mask; "
                                    "this backbone cannot cache text features")
            hidden, mask = hidden.to(torch.float16).cpu(), mask.bool().cpu()
            out.add([text_sha256(t) for t in chunk], [hidden[j][mask[j]].numpy() for j in range(len(chunk))])
            if tick(len(chunk)):
                break
        out.close()

    # ---- read --------------------------------------------------------------------------------------------
    def image_stems(self, keys: Sequence[str]) -> Tensor:
        """(B, *stem shape) float16 for images already in the cache."""
        store = self.stores[IMAGE]
        return torch.from_numpy(np.stack([store.get(k) for k in keys]))

    def text_stems(self, reports: Sequence[str], tokens: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(hidden (B, L, D) float16 zero at padding, keep-mask (B, L)) aligned with `tokens`."""
        store = self.stores[TEXT]
        mask = tokens["attention_mask"].bool()
        rows = [store.get(text_sha256(r)) for r in reports]
        hidden = torch.zeros(*mask.shape, rows[0].shape[-1], dtype=torch.float16)
        for i, row in enumerate(rows):
            if row.shape[0] != int(mask[i].sum()):
                raise TrainingError(store.folder, "cached report features do not match the tokenizer; "
                                    "delete the feature cache folder")
            hidden[i, mask[i]] = torch.from_numpy(np.array(row))  # a copy: the map is read-only
        return hidden, mask

    def loader(self, samples: Sequence[Sample], tokenizer: Callable[[Sequence[str]], dict[str, Tensor]],
               label_names: Sequence[str], *, batch_size: int, shuffle: bool = False, seed: int = 0,
               sampler: Sampler | None = None, drop_last: bool = False,
               captions: Mapping[str, str] | None = None, paired_report: bool = False) -> DataLoader:
        """Batches like data.dataset.make_loader, but carrying cached stems instead of decoded images.

        No worker processes: reading memory-mapped rows is far cheaper than starting workers.
        """
        generator = torch.Generator().manual_seed(seed) if shuffle and sampler is None else None
        return DataLoader(_CachedPairs(samples, label_names, captions, paired_report), batch_size=batch_size,
                          shuffle=shuffle and sampler is None, sampler=sampler, generator=generator,
                          collate_fn=_CachedCollate(self, tokenizer), drop_last=drop_last, num_workers=0)


class _CachedPairs(Dataset):
    """Item i -> (image path, report, multi-hot labels, i, image meta); the image is never decoded."""

    def __init__(self, samples: Sequence[Sample], label_names: Sequence[str],
                 captions: Mapping[str, str] | None, paired_report: bool = False) -> None:
        self.samples, self.label_names, self.captions = list(samples), list(label_names), captions
        self.paired_report = paired_report  # the leak study's diagnostic models only (data.dataset.make_loader)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[str, str, Tensor, int, dict[str, Any]]:
        s = self.samples[i]
        meta = image_meta(s, self.captions, paired_report=self.paired_report)
        return s.image_path, s.report, multi_hot(s.labels, self.label_names), i, meta


class _CachedCollate:
    def __init__(self, cache: FeatureCache, tokenizer: Callable[[Sequence[str]], dict[str, Tensor]]) -> None:
        self.cache, self.tokenizer = cache, tokenizer

    def __call__(self, items: list[tuple[str, str, Tensor, int, dict[str, Any]]]) -> Batch:
        paths, reports, labels, index, metas = zip(*items, strict=True)
        accepts_meta = getattr(self.tokenizer, "accepts_meta", False)  # as data.dataset.Collate
        tokens = self.tokenizer(list(reports), metas=list(metas)) if accepts_meta else self.tokenizer(list(reports))
        extras: dict[str, Any] = {"meta": list(metas)}
        if IMAGE in self.cache.stores:
            extras[IMAGE_STEM] = self.cache.image_stems([self.cache.image_key(p) for p in paths])
        if TEXT in self.cache.stores:
            extras[TEXT_STEM], extras[TEXT_STEM_MASK] = self.cache.text_stems(reports, tokens)
        return Batch(images=torch.empty(len(items), 0), tokens=tokens, labels=torch.stack(labels),
                     index=torch.tensor(index, dtype=torch.long), extras=extras)
