"""Linear-probe reference of the frozen features: how much label information the pretrained
towers already give, read out linearly, and what cross-modal retrieval through it would score.

Why: when no hashing method beats BASE, the question is whether any gain is there to find on this
backbone and data. A probe per modality (multi-label logistic regression on the frozen global
features, weight decay chosen on val) predicts each item's labels; ranking the other modality by
P(the two share a label) = 1 - prod_c (1 - p_q,c p_x,c) gives a retrieval mAP that uses the label
supervision directly, with continuous scores and no code-length limit: a practical ceiling for
label-supervised hash codes on these frozen features (not a proof of one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import ModelConfig
from trainer.data.manifest import Sample
from trainer.data.splits import Splits
from trainer.experiment import multi_hot
from trainer.feature_cache import FeatureCache
from trainer.models import build_model

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)


@torch.no_grad()
def frozen_features(samples: Sequence[Sample], backbone: str, cache_dir: str, *, weights_path: str | None = None,
                    batch_size: int = 64, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(image, text) global features of the pretrained towers, before any projection (float32)."""
    model = build_model(ModelConfig(method="base", backbone=backbone, weights_path=weights_path)).to(device).eval()
    bb = model.backbone
    cache = FeatureCache.for_model(model, cache_dir)
    if cache is not None:
        cache.prepare(samples, device=torch.device(device), batch_size=batch_size)
        loader = cache.loader(samples, bb.tokenizer, [], batch_size=batch_size)
    else:
        from trainer.data.dataset import make_loader
        loader = make_loader(samples, bb.eval_transform, bb.tokenizer, [], batch_size=batch_size)
    images, texts = [], []
    for batch in loader:
        batch = batch.to(device)
        img_stem, txt_stem = model.batch_stems(batch)
        images.append(bb.image_pool(bb.image_top(model.image_stem_of(batch.images, img_stem))).float().cpu())
        texts.append(bb.text_pool(bb.text_top(*model.text_stem_of(batch.tokens, txt_stem)), batch.tokens).float().cpu())
    return torch.cat(images).numpy(), torch.cat(texts).numpy()


def fit_probe(x: np.ndarray, y: np.ndarray, weight_decay: float, steps: int = 200) -> tuple[torch.nn.Linear, np.ndarray, np.ndarray]:
    """Multi-label logistic regression (full-batch L-BFGS) on standardised features; (layer, mean, std)."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt, yt = torch.from_numpy((x - mean) / std).float(), torch.from_numpy(y).float()
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(layer(xt), yt) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return layer, mean, std


@torch.no_grad()
def predict(probe: tuple[torch.nn.Linear, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    layer, mean, std = probe
    return torch.sigmoid(layer(torch.from_numpy((x - mean) / std).float())).numpy()


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Per-row AP of continuous `scores` (higher first) against boolean `relevant` (ties: stable order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    rel = np.take_along_axis(relevant, order, axis=1).astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    total = rel.sum(axis=1)
    return np.divide((precision * rel).sum(axis=1), total, out=np.zeros(len(rel)), where=total > 0)


def macro_auc(p: np.ndarray, y: np.ndarray) -> float:
    """Mean over classes with both outcomes present of the ROC AUC (Mann-Whitney, ties half)."""
    aucs = []
    for c in range(y.shape[1]):
        pos, neg = p[y[:, c] > 0, c], p[y[:, c] == 0, c]
        if len(pos) and len(neg):
            greater = (pos[:, None] > neg[None, :]).mean()
            equal = (pos[:, None] == neg[None, :]).mean()
            aucs.append(greater + 0.5 * equal)
    return float(np.mean(aucs)) if aucs else float("nan")


def share_probability(p_q: np.ndarray, p_db: np.ndarray) -> np.ndarray:
    """P(query and item share at least one label) = 1 - prod_c (1 - p_q,c p_x,c), labels independent."""
    return 1.0 - np.exp(np.log1p(-np.clip(p_q[:, None, :] * p_db[None, :, :], 0.0, 1.0 - 1e-7)).sum(axis=-1))


def probe_ceiling(splits: Splits, backbone: str, cache_dir: str, *, weights_path: str | None = None,
                  device: str = "cpu") -> dict[str, Any]:
    """Fit one probe per modality on train (weight decay chosen on val), report label AUC on the
    query split and the probes' cross-modal retrieval mAP (query split vs retrieval split)."""
    names = sorted({label for part in (splits.train, splits.val, splits.query, splits.retrieval)
                    for s in part for label in s.labels})
    parts = {"train": splits.train, "val": splits.val, "query": splits.query, "retrieval": splits.retrieval}
    every = [s for part in parts.values() for s in part]
    img, txt = frozen_features(every, backbone, cache_dir, weights_path=weights_path, device=device)
    bounds, start = {}, 0
    for name, part in parts.items():
        bounds[name] = slice(start, start + len(part))
        start += len(part)
    y = {name: multi_hot(part, names).astype(np.float32) for name, part in parts.items()}
    out: dict[str, Any] = {"labels": len(names), "feature_dims": {"image": img.shape[1], "text": txt.shape[1]}}
    probs = {}
    for modality, x in (("image", img), ("text", txt)):
        best = max(WEIGHT_DECAYS, key=lambda wd: _val_map(x, y, bounds, wd))
        probe = fit_probe(x[bounds["train"]], y["train"], best)
        probs[modality] = {part: predict(probe, x[bounds[part]]) for part in ("query", "retrieval")}
        out[modality] = {"weight_decay": best, "query_macro_auc": macro_auc(probs[modality]["query"], y["query"])}
    relevant = (y["query"] @ y["retrieval"].T) > 0
    for direction, (src, dst) in (("i2t", ("image", "text")), ("t2i", ("text", "image"))):
        scores = share_probability(probs[src]["query"], probs[dst]["retrieval"])
        out[f"{direction}_map"] = float(average_precision(scores, relevant).mean())
    return out


def _val_map(x: np.ndarray, y: dict[str, np.ndarray], bounds: dict[str, slice], weight_decay: float) -> float:
    """Mean per-class AP on val of a probe fit on train: how the weight decay is chosen."""
    p = predict(fit_probe(x[bounds["train"]], y["train"], weight_decay), x[bounds["val"]])
    yv = y["val"]
    keep = yv.sum(axis=0) > 0
    return float(average_precision(p.T[keep], yv.T[keep] > 0).mean()) if keep.any() else 0.0
