"""The common interface every hashing method (BASE, MCPH, TriPAH, PromptHash) implements.

The engine, the checkpoint code and the app's encoder only talk to this interface. Rules
(DESIGN.md "Rules that keep retrieval honest"): `encode_image` sees only images, `encode_text`
only text tokens, and a sample's code never depends on the other samples of its batch.
Cross-modal and cross-sample interactions belong in `loss_terms` only.

Image metadata. `encode_image(images, meta=None)` / `embed_image(images, meta=None)`: `meta` is one
dict per image (keys "caption", "age", "sex", "view", "laterality", "modality", ...; see
captions.image_meta) holding what travels WITH the image, never the paired report. The engine
passes `Batch.extras["meta"]`; a method that does not use it ignores it.

Frozen-stem cache (trainer/feature_cache.py). The layers below `trainable_top_blocks` never change
during a fit, so the engine can compute `backbone.image_stem(x)` / `backbone.text_stem(tok)` once
per image/report, store them on disk and start the forward from them. A method opts in by listing
the modalities in its own class attribute `stem_cache` (e.g. `frozenset({"image", "text"})`; NOT
inherited: a subclass that reshapes the forward must opt in again, see `cached_stem_modalities`).
Listing a modality promises:
  1. its forward for that modality runs the backbone stem exactly once, through
     `self.image_stem_of(images, stem)` / `self.text_stem_of(tokens, stem)`, and continues with
     `backbone.image_top(...)` / `backbone.text_top(...)` (the stem depends on nothing but the input:
     no prompts, no metadata, no caption inside the stem layers);
  2. `encode_image` / `embed_image` accept a keyword `stem=` (and `encode_text` / `embed_text` a
     keyword `stem=` holding `(hidden, keep_mask)`); with a stem, `images` is a (B, 0) placeholder
     that only carries the batch size and device;
  3. `loss_terms` takes the stems from the batch with `self.batch_stems(batch)`.
The cached stems are eval-mode outputs of the deterministic eval transform (no augmentation, no
dropout in the frozen layers); `TrainConfig.feature_cache=False` keeps the augmented path.

Distributed training (trainer/distributed.py). Contrastive and pairwise terms should see the
global batch: `distributed.gather_with_grad(h)` (and `distributed.all_gather(labels)` for targets)
are the identity in a single process and the rank-ordered global batch under torchrun.

Training hooks the engine honours: a method may define `param_groups(train_cfg) -> list[dict]`
(AdamW groups; an "lr" or "lr_scale" per group is kept relative to the schedule) and a class
attribute `default_train_overrides` (TrainConfig fields the training service applies when the user
did not set them; engine.apply_method_defaults).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from trainer.config import ModelConfig, TrainConfig
from trainer.models.backbones import Backbone

if TYPE_CHECKING:
    from trainer.data.dataset import Batch


# Batch.extras keys of cached stems (trainer/feature_cache.py fills them).
IMAGE_STEM = "image_stem"  # (B, *stem shape) float16
TEXT_STEM = "text_stem"  # (B, L, D) float16, zero at padding
TEXT_STEM_MASK = "text_stem_mask"  # (B, L) bool keep-mask
TextStem = tuple[Tensor, Tensor]


class HashingModel(nn.Module, ABC):
    """Backbone + method-specific modules; continuous codes per code length."""

    method: ClassVar[str] = ""
    noise_handlings: ClassVar[tuple[str, ...]] = ("none",)  # TrainConfig.noise_handling values supported
    stem_cache: ClassVar[frozenset[str]] = frozenset()  # "image"/"text": forwards that start from cached stems
    default_train_overrides: ClassVar[dict[str, Any]] = {}  # TrainConfig fields this method prefers

    def __init__(self, cfg: ModelConfig, backbone: Backbone) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.bits = list(cfg.bits)

    @abstractmethod
    def encode_image(self, images: Tensor, meta: Sequence[dict[str, Any] | None] | None = None) -> dict[int, Tensor]:
        """Images (B, 3, S, S) -> {bits: (B, bits) codes in [-1, 1]} (sign = bit).

        `meta` is image-side information only (captions.image_meta: the image's own caption, header
        facts), one dict per image; methods that do not use it ignore it.
        """

    @abstractmethod
    def encode_text(self, tokens: dict[str, Tensor]) -> dict[int, Tensor]:
        """Tokenized reports -> {bits: (B, bits) codes in [-1, 1]}."""

    @abstractmethod
    def embed_image(self, images: Tensor, meta: Sequence[dict[str, Any] | None] | None = None) -> Tensor:
        """L2-normalised continuous image embedding (B, D) for optional re-ranking."""

    @abstractmethod
    def embed_text(self, tokens: dict[str, Tensor]) -> Tensor:
        """L2-normalised continuous text embedding (B, D), same space as embed_image."""

    def encode_embed_image(self, images: Tensor, meta: Sequence[dict[str, Any] | None] | None = None,
                           **stem: Any) -> tuple[dict[int, Tensor], Tensor]:
        """(codes, embedding) of the same images: what storing a case needs. Methods override it to
        run the tower once (both come from one forward); this default runs it twice."""
        return self.encode_image(images, meta, **stem), self.embed_image(images, meta, **stem)

    def encode_embed_text(self, tokens: dict[str, Tensor], **stem: Any) -> tuple[dict[int, Tensor], Tensor]:
        """(codes, embedding) of the same texts; one tower pass where the method overrides it."""
        return self.encode_text(tokens, **stem), self.embed_text(tokens, **stem)

    @abstractmethod
    def loss_terms(self, batch: Batch, train_cfg: TrainConfig, *, epoch: int) -> dict[str, Tensor]:
        """Weighted scalar loss terms for one batch; the engine sums them and reports each by name."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- frozen-stem cache ---------------------------------------------------------------------------
    @classmethod
    def cached_stem_modalities(cls) -> frozenset[str]:
        """Modalities whose forward can start from cached stems: the class's OWN `stem_cache` only,
        so a subclass with a different forward never receives stems it cannot use."""
        return frozenset(cls.__dict__.get("stem_cache", frozenset()))

    def image_stem_of(self, images: Tensor, stem: Tensor | None = None) -> Tensor:
        """Frozen image stem output: the cached `stem` (any float dtype) when given, else computed."""
        return self.backbone.image_stem(images) if stem is None else stem.float()

    def text_stem_of(self, tokens: dict[str, Tensor], stem: TextStem | None = None) -> TextStem:
        """Frozen text stem (hidden (B, L, D), keep-mask (B, L)): the cached one when given, else computed."""
        if stem is None:
            return self.backbone.text_stem(tokens)
        hidden, mask = stem
        return hidden.float(), mask.bool()

    @staticmethod
    def batch_stems(batch: Batch) -> tuple[Tensor | None, TextStem | None]:
        """(image stem, text stem) a cached Batch carries; None for a modality computed from its input."""
        extras = batch.extras
        text = extras.get(TEXT_STEM)
        return extras.get(IMAGE_STEM), (None if text is None else (text, extras[TEXT_STEM_MASK]))
