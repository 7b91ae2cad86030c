"""Data audit: per-pair scores of how unlikely it is that an image and its report belong together.

Two scores, both "higher = more suspicious":

* ``rank`` (every method). With cosine similarities s_ij between image i and report j over the N
  audited pairs, r^{i->t}_i is the mid-rank of report i in image i's ranking of all N reports
  (1 = first; reports scoring within 1e-6 of s_ii count half, so identical report texts share a
  rank) and r^{t->i}_i the same for report i's ranking of all images. Then

      score_i = ( (r^{i->t}_i - 1) + (r^{t->i}_i - 1) + (1 - s_ii) / 5 ) / ( 2 (N - 1) )

  i.e. the mean of the two rank percentiles, plus the raw cosine scaled to at most 0.4 (rank sums
  move in steps of 0.5), so the cosine only orders pairs whose rank sums tie. 0 = each is the
  other's best match; about 1 = the pair's own report is the last one its image would pick, and
  vice versa.
* ``mcph`` (MCPH models): minus MCPH's relative match score (trainer.models.mcph):
  -(s_ii - 1/2 (max_{j!=i} s_ij + max_{j!=i} s_ji)) on MCPH's aligned embeddings.

The vectors: the hash codes ({-1, +1} at the largest code length; cosine = 1 - 2 d / K) for the
rank score, because the codes are the one space every method trains across modalities (BASE's
`embed_*` outputs are per-modality projections that no loss aligns: their image-report cosines
carry no pairing signal); MCPH's aligned embeddings (`embed_image` / `embed_text`, trained by
NRCL) for the MCPH score. `uses_embeddings(method, components)` picks; the app reads the same
vectors from the library (stored codes and embeddings).
Cost: O(N^2 D) in row blocks, O(block x N) memory.

Injected-noise check (``audit_noisy_pairs``): the training pairs a noisy run trained on are
rebuilt from its saved noise record (``apply_noise(splits.train, noise.json)``: the shuffled
reports, labels following the image), scored with the trained model, and the top fraction is
compared with the record's shuffled indices (``audit_precision``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.data.dataset import make_loader
from trainer.data.manifest import Sample
from trainer.data.noise import NoiseRecord, apply_noise
from trainer.engine import encode_dataset, stem_kwargs
from trainer.errors import DataError
from trainer.feature_cache import FeatureCache
from trainer.models.hashing import HashingModel

TIE_TOLERANCE = 1e-6
SCORE_KINDS = ("rank", "mcph")


@dataclass
class PairScores:
    """Per-pair audit numbers, aligned with the pairs given (no sorting)."""

    score: np.ndarray  # float64 (N,), higher = more likely NOT a true pair
    rank_i2t: np.ndarray  # float64 (N,), mid-rank of the pair's report in its image's ranking (1 = best)
    rank_t2i: np.ndarray  # float64 (N,), mid-rank of the pair's image in its report's ranking
    cosine: np.ndarray  # float64 (N,), cosine of the pair itself
    kind: str  # "rank" | "mcph"

    def order(self) -> np.ndarray:
        """Indices from most to least suspicious (ties: lower cosine first, then position)."""
        return np.lexsort((np.arange(len(self.score)), self.cosine, -self.score))


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2 or not np.isfinite(arr).all():
        raise DataError(name, "audit vectors must be a finite (N, D) array")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def _ranks(image: np.ndarray, text: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank_i2t, rank_t2i, cosine) by blocks of rows: counts of better / tied other items."""
    n = len(image)
    diag = np.einsum("nd,nd->n", image, text).astype(np.float64)
    rank_i2t, rank_t2i = np.ones(n), np.ones(n)
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        for out, q, db in ((rank_i2t, image, text), (rank_t2i, text, image)):
            sims = (q[rows] @ db.T).astype(np.float64) - diag[rows, None]
            better = (sims > TIE_TOLERANCE).sum(axis=1)
            tied = (np.abs(sims) <= TIE_TOLERANCE).sum(axis=1) - 1  # minus the pair itself
            out[rows] += better + 0.5 * tied
    return rank_i2t, rank_t2i, diag


def rank_scores(image_vecs: np.ndarray, text_vecs: np.ndarray, block: int = 1024) -> PairScores:
    """The ``rank`` score (module docstring) of pairs (image_vecs[i], text_vecs[i])."""
    image, text = _unit(image_vecs, "image vectors"), _unit(text_vecs, "text vectors")
    if image.shape != text.shape:
        raise DataError("audit", f"image vectors {image.shape} and text vectors {text.shape} do not pair up")
    rank_i2t, rank_t2i, cosine = _ranks(image, text, block)
    steps = max(1, len(image) - 1)
    score = ((rank_i2t - 1) + (rank_t2i - 1) + (1.0 - cosine) / 5.0) / (2.0 * steps)
    return PairScores(score, rank_i2t, rank_t2i, cosine, "rank")


def pair_scores(image_vecs: np.ndarray, text_vecs: np.ndarray, kind: str = "rank") -> PairScores:
    """Ranks and cosines always; ``score`` by `kind` ("mcph": minus MCPH's relative match score)."""
    if kind not in SCORE_KINDS:
        raise DataError("audit", f"unknown score kind {kind!r} (use {', '.join(SCORE_KINDS)})")
    scores = rank_scores(image_vecs, text_vecs)
    if kind == "mcph":
        from trainer.models.mcph import relative_match_scores

        match = relative_match_scores(torch.from_numpy(np.asarray(image_vecs, np.float32)),
                                      torch.from_numpy(np.asarray(text_vecs, np.float32)))
        scores.score, scores.kind = -match.astype(np.float64), "mcph"
    return scores


def uses_embeddings(method: str, components: Mapping[str, bool] | None = None) -> bool:
    """True when the audit reads the model's embeddings (MCPH with NRCL: its aligned space, scored by
    MCPH's relative match), False when it reads the codes (every other model, rank score)."""
    return method == "mcph" and bool((components or {}).get("nrcl", True))


def audit_precision(scores: np.ndarray, noisy_mask: np.ndarray, top_fraction: float = 0.05) -> float:
    """Fraction of truly shuffled pairs among the top `top_fraction` most suspicious pairs.

    k = max(1, round(top_fraction * N)); pairs tied with the k-th score count by their expected
    share (random order inside the tie), the same tie convention as trainer.evaluate.
    """
    s, noisy = np.asarray(scores, np.float64), np.asarray(noisy_mask, bool)
    if s.shape != noisy.shape or s.ndim != 1 or not len(s):
        raise DataError("audit", "scores and noisy_mask must be non-empty (N,) arrays of the same length")
    if not 0.0 < top_fraction <= 1.0:
        raise DataError("audit", f"top_fraction must be in (0, 1], got {top_fraction}")
    k = max(1, round(top_fraction * len(s)))
    threshold = np.sort(s)[::-1][k - 1]
    above, tied = s > threshold, s == threshold
    hits = noisy[above].sum() + (k - above.sum()) * noisy[tied].mean()
    return float(hits / k)


@torch.no_grad()
def embed_pairs(model: HashingModel, samples: Sequence[Sample], *, batch_size: int = 64,
                device: str | torch.device = "cpu", captions: Mapping[str, str] | None = None,
                cache: FeatureCache | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image, report) continuous embeddings (float32, (N, D)) of every pair, each from its own side.
    `cache`: a FeatureCache prepared for these samples; the forward starts from its stems."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    if cache is not None:
        loader = cache.loader(samples, model.backbone.tokenizer, [], batch_size=batch_size, captions=captions)
    else:
        loader = make_loader(samples, model.backbone.eval_transform, model.backbone.tokenizer, [],
                             batch_size=batch_size, captions=captions)
    images, texts = [], []
    try:
        for batch in loader:
            batch = batch.to(device)
            img_kw, txt_kw = stem_kwargs(model, batch)
            images.append(model.embed_image(batch.images, meta=batch.extras.get("meta"), **img_kw)
                          .float().cpu().numpy())
            texts.append(model.embed_text(batch.tokens, **txt_kw).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(images), np.concatenate(texts)


def noisy_training_pairs(train: Sequence[Sample], record: NoiseRecord) -> tuple[list[Sample], np.ndarray]:
    """The pairs a noisy run trained on (reports shuffled as recorded) and the mask of shuffled ones."""
    noisy = apply_noise(train, record)
    mask = np.zeros(len(noisy), bool)
    mask[record.indices] = True
    return noisy, mask


def label_changing_share(train: Sequence[Sample], record: NoiseRecord) -> float:
    """Share of shuffled pairs whose new report came from a pair with other labels: the others
    (same labels, e.g. two "normal" studies) cannot be told apart by a label-trained model."""
    if not record.indices:
        return 0.0
    changed = [set(train[i].labels) != set(train[src].labels) for i, src in zip(record.indices, record.sources,
                                                                                strict=True)]
    return float(np.mean(changed))


def pair_vectors(model: HashingModel, samples: Sequence[Sample], *, batch_size: int = 64,
                 device: str | torch.device = "cpu", captions: Mapping[str, str] | None = None,
                 cache: FeatureCache | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(image vectors, report vectors, score kind) the audit uses for this model (module docstring)."""
    if uses_embeddings(model.cfg.method, model.cfg.components):
        image, text = embed_pairs(model, samples, batch_size=batch_size, device=device, captions=captions,
                                  cache=cache)
        return image, text, "mcph"
    image, text = encode_dataset(model, samples, batch_size=batch_size, device=device, captions=captions,
                                 cache=cache)
    bits = max(image)
    return np.where(image[bits] >= 0, 1.0, -1.0), np.where(text[bits] >= 0, 1.0, -1.0), "rank"


def audit_noisy_pairs(model: HashingModel, train: Sequence[Sample], noise_file: str | Path, *,
                      top_fraction: float = 0.05, batch_size: int = 64, device: str | torch.device = "cpu",
                      captions: Mapping[str, str] | None = None, cache: FeatureCache | None = None) -> dict[str, Any]:
    """Score the noisy training pairs of a run with its trained model; precision at the top fraction.
    `cache`: a FeatureCache prepared for `train` (stems are keyed by content, so shuffled pairs hit it)."""
    record = NoiseRecord.load(noise_file)
    pairs, mask = noisy_training_pairs(train, record)
    image, text, kind = pair_vectors(model, pairs, batch_size=batch_size, device=device, captions=captions,
                                     cache=cache)
    scores = pair_scores(image, text, kind)
    return {"top_fraction": top_fraction, "precision": audit_precision(scores.score, mask, top_fraction),
            "base_rate": float(mask.mean()), "pairs": len(pairs), "shuffled": int(mask.sum()),
            "top_k": max(1, round(top_fraction * len(pairs))), "score_kind": scores.kind,
            "label_changing_share": label_changing_share(train, record),
            "mean_score_shuffled": _mean_or_none(scores.score[mask]),
            "mean_score_clean": _mean_or_none(scores.score[~mask])}


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None
