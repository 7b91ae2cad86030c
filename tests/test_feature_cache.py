"""The frozen-stem cache: cached forwards equal uncached ones, keys follow the image bytes and the
backbone, damaged shards are recomputed, and fit reuses the cache across runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_synth import SHAPES, _draw, make_samples

from trainer.config import ModelConfig, TrainConfig
from trainer.data.dataset import make_loader
from trainer.data.splits import make_splits
from trainer.engine import encode_dataset, fit
from trainer.feature_cache import IMAGE, TEXT, FeatureCache, default_cache_dir
from trainer.models import build_model
from trainer.models.base import BaseHashing

TINY = ModelConfig(backbone="tiny", bits=[16, 32], embed_dim=64, label_names=sorted(SHAPES))
FP16_TOL = 2e-3  # codes from float16 stems vs float32 stems (measured: ~1e-4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: no thread hand-offs


@pytest.fixture()
def samples(tmp_path: Path):
    out = make_samples(tmp_path / "images", n=12, seed=3)
    for i, s in enumerate(out):
        s.report += f", case {i}" * (1 + i % 3)  # every report distinct, of different lengths
    return out


def _tiny_model(seed: int = 0, **cfg) -> BaseHashing:
    torch.manual_seed(seed)
    return build_model(ModelConfig(**{**TINY.to_dict(), **cfg})).eval()


def _prepared(model, samples, root: Path):
    cache = FeatureCache.for_model(model, root)
    report = cache.prepare(samples, device=torch.device("cpu"), batch_size=5)
    return cache, report


def _shards(root: Path, kind: str) -> list[Path]:
    return sorted(root.glob(f"{kind}-*/shard-*.npy"))


def test_cached_forward_gives_the_same_codes_and_losses_as_the_uncached_one(samples, tmp_path: Path) -> None:
    model = _tiny_model()
    cache, report = _prepared(model, samples, tmp_path / "cache")
    assert report.computed == {IMAGE: 12, TEXT: 12} and report.hits == {IMAGE: 0, TEXT: 0}
    cached_img, cached_txt = encode_dataset(model, samples, batch_size=5, cache=cache)
    plain_img, plain_txt = encode_dataset(model, samples, batch_size=5)
    for b in (16, 32):
        assert np.abs(cached_img[b] - plain_img[b]).max() < FP16_TOL
        assert np.abs(cached_txt[b] - plain_txt[b]).max() < FP16_TOL
    assert np.abs(plain_img[32]).mean() > 10 * FP16_TOL  # the codes are not all ~0, so the check means something

    cached = next(iter(cache.loader(samples, model.backbone.tokenizer, TINY.label_names, batch_size=6)))
    plain = next(iter(make_loader(samples, model.backbone.eval_transform, model.backbone.tokenizer, TINY.label_names,
                                  batch_size=6)))
    assert cached.images.numel() == 0 and cached.extras["image_stem"].dtype == torch.float16  # nothing decoded
    with torch.no_grad():
        lc = model.loss_terms(cached, TrainConfig(), epoch=1)
        lp = model.loss_terms(plain, TrainConfig(), epoch=1)
    assert lc.keys() == lp.keys()
    for name in lc:
        assert float(lc[name]) == pytest.approx(float(lp[name]), rel=1e-2, abs=1e-3), name


def test_embedded_backbone_text_and_image_stems_line_up_with_padding(tmp_path: Path) -> None:
    """The real default backbone: BERT stems of reports of different lengths, EfficientNet stems."""
    rng = random.Random(0)
    samples = make_samples(tmp_path / "images", n=4, seed=1)
    samples[0].report = "normal fundus"
    samples[1].report = "moderate non proliferative retinopathy with hard exudates in both the upper and lower arcades"
    model = build_model(ModelConfig(backbone="embedded", bits=[32], embed_dim=64, label_names=sorted(SHAPES))).eval()
    for i, s in enumerate(samples):  # the embedded tower wants real-sized pictures
        _draw(SHAPES[i % 3], rng, size=224).save(s.image_path)
    cache, _ = _prepared(model, samples, tmp_path / "cache")
    cached_img, cached_txt = encode_dataset(model, samples, batch_size=4, cache=cache)
    plain_img, plain_txt = encode_dataset(model, samples, batch_size=4)
    assert np.abs(cached_img[32] - plain_img[32]).max() < FP16_TOL
    assert np.abs(cached_txt[32] - plain_txt[32]).max() < FP16_TOL
    assert (np.sign(cached_txt[32]) == np.sign(plain_txt[32])).mean() > 0.95


def test_cache_is_reused_and_follows_the_image_bytes(samples, tmp_path: Path) -> None:
    model = _tiny_model()
    _prepared(model, samples, tmp_path / "cache")
    again, report = _prepared(model, samples, tmp_path / "cache")
    assert report.hits == {IMAGE: 12, TEXT: 12} and report.computed == {IMAGE: 0, TEXT: 0}

    _draw("square", random.Random(99)).save(samples[0].image_path)  # same path, new content
    changed, report = _prepared(model, samples, tmp_path / "cache")
    assert report.computed == {IMAGE: 1, TEXT: 0} and report.hits == {IMAGE: 11, TEXT: 12}
    batch = next(iter(changed.loader(samples[:1], model.backbone.tokenizer, [], batch_size=1)))
    fresh = model.backbone.image_stem(make_loader(samples[:1], model.backbone.eval_transform,
                                                  model.backbone.tokenizer, [], batch_size=1).__iter__().__next__().images)
    assert torch.allclose(batch.extras["image_stem"].float(), fresh, atol=1e-2)
    stale = again.image_stems([again.image_key(samples[1].image_path)])  # other items untouched
    assert torch.equal(stale, changed.image_stems([changed.image_key(samples[1].image_path)]))


@pytest.mark.parametrize("change", ["stem weights", "trainable split"])
def test_a_changed_backbone_gets_its_own_cache(samples, tmp_path: Path, change: str) -> None:
    model = _tiny_model()
    _prepared(model, samples, tmp_path / "cache")
    if change == "stem weights":
        other = _tiny_model()
        with torch.no_grad():
            other.backbone.stem[0].weight.add_(0.05)  # a frozen stem layer
    else:
        other = _tiny_model(trainable_top_blocks=1)
    cache, report = _prepared(other, samples, tmp_path / "cache")
    assert report.computed[IMAGE] == 12 and report.hits[IMAGE] == 0
    assert len({p.parent for p in _shards(tmp_path / "cache", IMAGE)}) == 2
    cached_img, _ = encode_dataset(other, samples, batch_size=6, cache=cache)
    plain_img, _ = encode_dataset(other, samples, batch_size=6)
    assert np.abs(cached_img[32] - plain_img[32]).max() < FP16_TOL


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated", "garbled sidecar", "missing data file"])
def test_a_damaged_shard_is_detected_and_recomputed(samples, tmp_path: Path, damage: str) -> None:
    model = _tiny_model()
    root = tmp_path / "cache"
    _prepared(model, samples, root)
    (npy,) = _shards(root, IMAGE)
    raw = bytearray(npy.read_bytes())
    if damage == "flipped bytes":
        raw[-50:] = bytes(b ^ 0xFF for b in raw[-50:])  # same size, same header: only the checksum sees it
        npy.write_bytes(bytes(raw))
    elif damage == "truncated":
        npy.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "garbled sidecar":
        npy.with_suffix(".json").write_text("{not json", encoding="utf-8")
    else:
        npy.unlink()
    cache, report = _prepared(model, samples, root)
    assert report.damaged == 1 and report.computed[IMAGE] == 12 and report.hits[TEXT] == 12
    assert len(_shards(root, IMAGE)) == 1  # the damaged shard is gone, a good one replaced it
    cached_img, _ = encode_dataset(model, samples, batch_size=6, cache=cache)
    plain_img, _ = encode_dataset(model, samples, batch_size=6)
    assert np.abs(cached_img[32] - plain_img[32]).max() < FP16_TOL


def test_sidecar_records_count_shape_and_checksum(samples, tmp_path: Path) -> None:
    _prepared(_tiny_model(), samples, tmp_path / "cache")
    (npy,) = _shards(tmp_path / "cache", TEXT)
    meta = json.loads(npy.with_suffix(".json").read_text(encoding="utf-8"))
    data = np.load(npy, mmap_mode="r")
    assert meta["count"] == 12 and meta["dtype"] == "float16" and data.dtype == np.float16
    assert meta["offsets"][-1] == data.shape[0] == meta["shape"][0] and len(meta["offsets"]) == 13


def test_only_methods_that_opt_in_with_a_frozen_stem_get_a_cache(tmp_path: Path) -> None:
    class Reshaped(BaseHashing):  # a subclass with its own forward does not inherit the promise
        pass

    assert BaseHashing.cached_stem_modalities() == {IMAGE, TEXT}
    assert Reshaped.cached_stem_modalities() == frozenset()
    assert FeatureCache.for_model(_tiny_model(trainable_top_blocks=-1), tmp_path) is None  # the stem trains
    assert FeatureCache.for_model(_tiny_model(), tmp_path) is not None


def test_fit_fills_the_cache_once_and_later_runs_reuse_it(tmp_path: Path) -> None:
    splits = make_splits(make_samples(tmp_path / "shapes", n=30, seed=0),
                         fractions={"query": 0.1, "val": 0.3, "train": 0.6}, seed=2)
    train = TrainConfig(epochs=2, batch_size=4, lr=1e-3, num_workers=0, device="cpu", warmup_steps=2, seed=2)
    events: dict[str, list[dict]] = {"a": [], "b": [], "off": []}
    first = fit(TINY, train, splits, tmp_path / "runs" / "a", progress=events["a"].append)
    fit(TINY, train, splits, tmp_path / "runs" / "b", progress=events["b"].append)
    n = len({s.image_path for s in [*splits.train, *splits.val]})
    (cache_a,) = [e for e in events["a"] if e["event"] == "cache"]
    n_reports = len({s.report for s in [*splits.train, *splits.val]})
    assert [e for e in events["a"] if e["event"] == "cache_fill"][-1]["done"] == n + n_reports
    (cache_b,) = [e for e in events["b"] if e["event"] == "cache"]
    assert cache_a["computed"][IMAGE] == n and cache_b["hits"][IMAGE] == n and cache_b["computed"][IMAGE] == 0
    assert default_cache_dir(tmp_path / "runs" / "a").is_dir()
    assert np.isfinite(first.best_val_map) and all(np.isfinite(h["losses"]["total"]) for h in first.history)

    off = TrainConfig(**{**train.to_dict(), "feature_cache": False, "cache_dir": str(tmp_path / "unused")})
    fit(TINY, off, splits, tmp_path / "runs" / "off", progress=events["off"].append)
    assert not any(e["event"] == "cache" for e in events["off"]) and not (tmp_path / "unused").exists()


def test_a_cancelled_fill_keeps_what_it_wrote_and_the_next_fill_resumes(samples, tmp_path: Path) -> None:
    model = _tiny_model()
    cache = FeatureCache.for_model(model, tmp_path / "cache")
    seen: list[tuple[int, int]] = []
    report = cache.prepare(samples, device=torch.device("cpu"), batch_size=4,
                           progress=lambda done, total: seen.append((done, total)), cancel=lambda: len(seen) >= 2)
    assert report.cancelled and seen == [(4, 24), (8, 24)]  # 12 images + 12 reports, stopped after 2 batches
    _, report = _prepared(model, samples, tmp_path / "cache")
    assert report.hits == {IMAGE: 8, TEXT: 0} and report.computed == {IMAGE: 4, TEXT: 12} and not report.cancelled


def test_long_report_rules_get_their_own_text_cache() -> None:
    """"truncate" and "sections" tokenize the same report differently: their stems must not be shared."""
    from trainer.data.long_text import wrap_tokenizer
    from trainer.feature_cache import tokenizer_identity

    base = _tiny_model().backbone.tokenizer
    keys = {mode: json.dumps(tokenizer_identity(wrap_tokenizer(base, mode, 32)), sort_keys=True)
            for mode in (None, "truncate", "sections")}
    assert len(set(keys.values())) == 3
    assert tokenizer_identity(wrap_tokenizer(base, "sections", 32)) != tokenizer_identity(wrap_tokenizer(base, "sections", 16))
