"""BASE: the papers' ablation baseline. Two encoders (frozen except the top blocks), a projection
per modality, and one tanh hash layer per code length; optional multi-label classifier.

Loss = contrastive + beta * similarity + alpha * quantization (+ bit balance, + classifier), each
averaged over the code lengths; weights and switches come from ModelConfig. Under torchrun the
batch-level terms (contrastive, similarity, bit balance) see the global batch.

BASE can start from cached frozen stems (both modalities; rules in trainer/models/hashing.py).

Long reports (trainer/data/long_text.py): `options["long_text"]` None (the tower truncates),
"truncate", "sections" or "chunks"; with "chunks" every window goes through the text tower and
the window globals of each report are pooled (`options["chunk_pool"]`: "mean" or "attention")
before the projection, so a report's code never depends on the other reports of its batch.
Chunked batches carry no per-report text stem (the feature cache drops it for them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from trainer import distributed, losses
from trainer.config import DEFAULT_LOSS_WEIGHTS, ModelConfig, TrainConfig, method_loss_weights
from trainer.data.long_text import LONG_TEXT_MODES, chunk_tokens, pool_chunks, wrap_tokenizer
from trainer.errors import MedHashError, TrainingError
from trainer.models.backbones import Backbone
from trainer.models.hashing import HashingModel, TextStem
from trainer.models.heads import FEATURE_NORMS, HashHeads, LabelClassifier, Projection
from trainer.models.registry import register_method

if TYPE_CHECKING:
    from trainer.data.dataset import Batch

BASE_OPTIONS: dict[str, Any] = {
    "long_text": None,  # None | "truncate" | "sections" | "chunks" (trainer/data/long_text.py)
    "chunk_pool": "mean",  # "mean" | "attention": how the windows of one chunked report are pooled
    "feature_norm": "layer",  # "layer" | "batch": the projections' input normalisation (heads.Projection)
}
CHUNK_POOLS = ("mean", "attention")


def base_options(cfg: ModelConfig) -> dict[str, Any]:
    """BASE_OPTIONS overridden by cfg.options; unknown keys and values are errors (usually typos)."""
    unknown = sorted(set(cfg.options) - set(BASE_OPTIONS))
    if unknown:
        raise MedHashError("model config", f"unknown BASE option(s): {', '.join(unknown)} "
                           f"(BASE takes {', '.join(BASE_OPTIONS)})")
    opts = {**BASE_OPTIONS, **cfg.options}
    if opts["long_text"] is not None and opts["long_text"] not in LONG_TEXT_MODES:
        raise MedHashError("model config", f"option long_text must be None or one of {', '.join(LONG_TEXT_MODES)}, "
                           f"not {opts['long_text']!r}")
    if opts["feature_norm"] not in FEATURE_NORMS:
        raise MedHashError("model config", f"option feature_norm must be one of {', '.join(FEATURE_NORMS)}, "
                           f"not {opts['feature_norm']!r}")
    if opts["chunk_pool"] not in CHUNK_POOLS:
        raise MedHashError("model config", f"option chunk_pool must be one of {', '.join(CHUNK_POOLS)}, "
                           f"not {opts['chunk_pool']!r}")
    return opts


@register_method("base")
class BaseHashing(HashingModel):
    """Per-modality projection + hash heads on the backbone's global features."""

    stem_cache: ClassVar[frozenset[str]] = frozenset({"image", "text"})

    def __init__(self, cfg: ModelConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        d = cfg.embed_dim
        opts = base_options(cfg) if type(self) is BaseHashing else None  # subclasses read their own options
        norm = opts["feature_norm"] if opts is not None else "layer"
        self.image_proj = Projection(backbone.image_global_dim, d, norm)
        self.text_proj = Projection(backbone.text_global_dim, d, norm)
        self.image_hash = HashHeads(d, self.bits)
        self.text_hash = HashHeads(d, self.bits)
        self.classifier = LabelClassifier(d, len(cfg.label_names)) if cfg.on("classifier") and cfg.label_names else None
        self.chunk_score: nn.Linear | None = None
        if opts is not None:
            self._setup_long_text(opts)

    def _setup_long_text(self, opts: dict[str, Any]) -> None:
        """Install the long-report tokenizer (the plain one for None) and the attention pool's scorer."""
        bb = self.backbone
        bb.tokenizer = wrap_tokenizer(bb.tokenizer, opts["long_text"], bb.max_text_length)
        if opts["long_text"] == "chunks" and opts["chunk_pool"] == "attention":
            self.chunk_score = nn.Linear(bb.text_global_dim, 1)
            nn.init.zeros_(self.chunk_score.weight)  # starts as the mean, learns which windows matter
            nn.init.zeros_(self.chunk_score.bias)

    # ---- per-modality paths (never see the other modality or other samples) --------------------
    def image_features(self, images: Tensor, *, stem: Tensor | None = None) -> Tensor:
        bb = self.backbone
        return self.image_proj(bb.image_pool(bb.image_top(self.image_stem_of(images, stem))))

    def text_features(self, tokens: dict[str, Tensor], *, stem: TextStem | None = None) -> Tensor:
        bb = self.backbone
        windows = chunk_tokens(tokens)
        if windows is None:
            return self.text_proj(bb.text_pool(bb.text_top(*self.text_stem_of(tokens, stem)), tokens))
        if stem is not None:
            raise TrainingError(self.method, "a cached text stem cannot stand in for a chunked report")
        g = bb.text_global(windows)  # every window through the whole tower
        scores = self.chunk_score(g) if self.chunk_score is not None else None
        return self.text_proj(pool_chunks(g, tokens["chunk_owner"], tokens["input_ids"].shape[0], scores))

    def encode_image(self, images: Tensor, meta: Sequence[dict[str, Any] | None] | None = None, *,
                     stem: Tensor | None = None) -> dict[int, Tensor]:
        return self.image_hash(self.image_features(images, stem=stem))  # BASE uses no image metadata

    def encode_text(self, tokens: dict[str, Tensor], *, stem: TextStem | None = None) -> dict[int, Tensor]:
        return self.text_hash(self.text_features(tokens, stem=stem))

    # Embeddings for re-ranking and the data audit: the continuous (pre-sign) code of the longest
    # length. The projections themselves are not aligned across modalities by any BASE loss; the
    # codes are (contrastive + similarity terms), so their cosine compares an image with a report.
    def embed_image(self, images: Tensor, meta: Sequence[dict[str, Any] | None] | None = None, *,
                    stem: Tensor | None = None) -> Tensor:
        return F.normalize(self.encode_image(images, meta, stem=stem)[max(self.bits)], dim=-1)

    def embed_text(self, tokens: dict[str, Tensor], *, stem: TextStem | None = None) -> Tensor:
        return F.normalize(self.encode_text(tokens, stem=stem)[max(self.bits)], dim=-1)

    def encode_embed_image(self, images: Tensor, meta: Sequence[dict[str, Any] | None] | None = None, *,
                           stem: Tensor | None = None) -> tuple[dict[int, Tensor], Tensor]:
        if type(self).embed_image is not BaseHashing.embed_image:  # a subclass with its own embedding
            return super().encode_embed_image(images, meta, stem=stem)
        codes = self.encode_image(images, meta, stem=stem)
        return codes, F.normalize(codes[max(self.bits)], dim=-1)

    def encode_embed_text(self, tokens: dict[str, Tensor], *, stem: TextStem | None = None
                          ) -> tuple[dict[int, Tensor], Tensor]:
        if type(self).embed_text is not BaseHashing.embed_text:
            return super().encode_embed_text(tokens, stem=stem)
        codes = self.encode_text(tokens, stem=stem)
        return codes, F.normalize(codes[max(self.bits)], dim=-1)

    # ---- training ------------------------------------------------------------------------------
    def loss_terms(self, batch: Batch, train_cfg: TrainConfig, *, epoch: int) -> dict[str, Tensor]:
        cfg, w = self.cfg, method_loss_weights(self.cfg, DEFAULT_LOSS_WEIGHTS)
        img_stem, txt_stem = self.batch_stems(batch)
        f_img, f_txt = self.image_features(batch.images, stem=img_stem), self.text_features(batch.tokens, stem=txt_stem)
        h_img, h_txt = self.image_hash(f_img), self.text_hash(f_txt)
        # Global batch under torchrun (identity in one process): pairs across ranks are negatives too.
        g_img = {b: distributed.gather_with_grad(h) for b, h in h_img.items()}
        g_txt = {b: distributed.gather_with_grad(h) for b, h in h_txt.items()}
        terms: dict[str, Tensor] = {}

        def per_bits(fn, img: dict[int, Tensor] = g_img, txt: dict[int, Tensor] = g_txt) -> Tensor:
            return sum(fn(img[b], txt[b]) for b in self.bits) / len(self.bits)

        if cfg.on("contrastive"):
            terms["contrastive"] = w["contrastive"] * per_bits(lambda a, b: losses.info_nce(a, b, cfg.temperature))
        if cfg.on("similarity"):
            labels = distributed.all_gather(batch.labels)
            s = losses.label_similarity(labels, labels)
            terms["similarity"] = w["similarity"] * per_bits(lambda a, b: losses.similarity_nll(a, b, s))
        if cfg.on("quantization"):
            q = per_bits(lambda a, b: losses.quantization_loss(a) + losses.quantization_loss(b), h_img, h_txt)
            terms["quantization"] = w["quantization"] * q
        if cfg.on("bit_balance"):
            bb = per_bits(lambda a, b: losses.bit_balance_loss(a) + losses.bit_balance_loss(b))
            terms["bit_balance"] = w["bit_balance"] * bb
        if self.classifier is not None:
            c = losses.multilabel_bce(self.classifier(f_img), batch.labels)
            c = c + losses.multilabel_bce(self.classifier(f_txt), batch.labels)
            terms["classifier"] = w["classifier"] * c
        if not terms:
            raise ValueError("every loss component of BASE is switched off")
        return terms
