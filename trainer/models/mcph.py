"""MCPH: Medical Cross-Modal Prompt Hashing with Robust Noisy Correspondence Learning (MICCAI 2024).

No public code exists; the paper is the specification and docs/methods.md ("MCPH") writes out
every equation as implemented, every reading where the paper is ambiguous, and every deviation.

- VPL (Eq. 1): a linear visual adapter turns the image caption's tokens at text layer j-1 into
  context prompts for image layers j = k..n (a TokenTower on CNN towers).
- TPL (Eq. 2): a down-ReLU-up textual adapter makes prompts for text layers k..n from the caption,
  and the global caption token rectifies the global text token.
- NRCL (Eqs. 3-4): ResMLP-aligned global embeddings z, symmetric InfoNCE with a learnable tau and,
  with noise handling "adaptive_temperature", tau_i = tau + gamma * JSD(g^t_i || g^c_i). The
  global hash heads read z, so the alignment reaches the codes.
- LTA + codes (Eqs. 5-8): global codes h = tanh(W z), local codes f from the top-m tokens; each
  modality's code c = 1/2 (h + f) (stored and queried); the fused training code
  B = sign(lambda (h^v + h^t) + (1 - lambda) (f^v + f^t)) exists only inside the losses:
  quantization of c^v and c^t to B, inter-modal similarity on h (and a memory of B), intra-modal
  similarity on f.
- NRCL on the codes (our addition, component "contrastive"): InfoNCE of c^v against c^t with
  NRCL's per-pair temperature shift. It is what ties a code to its own pair's code; without it the
  beta = 10 label likelihood alone shapes the codes and rare-class images take the majority
  class's code (docs/methods.md, "Rare classes").

Honest retrieval: the image side sees the image and its own caption (a captions file entry, else
the built-in captioner's sentence from the image), never the report; the text side sees the
report only (textual prompts fall back to learned null prompts without a caption).
Components "vpl", "tpl", "nrcl", "lta" default to on; all four off is exactly BASE.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer import distributed, losses
from trainer.config import DEFAULT_LOSS_WEIGHTS, ModelConfig, TrainConfig, method_loss_weights
from trainer.data.captions import BuiltinCaptioner, captions_from_meta
from trainer.data.long_text import (
    chunk_tokens,
    gather_chunk_tokens,
    pool_chunks,
    unwrap_tokenizer,
    wrap_tokenizer,
)
from trainer.data.manifest import Sample
from trainer.errors import MedHashError, TrainingError
from trainer.models.backbones import Backbone
from trainer.models.base import BaseHashing
from trainer.models.hashing import TextStem
from trainer.models.heads import Projection
from trainer.models.mcph_parts import (
    Bottleneck,
    CaptionPrompts,
    CaptionStates,
    CodeMemory,
    LocalTokenAggregation,
    ResMLP,
    caption_states,
    image_prefix,
    image_suffix,
    prompt_start,
    source_layer,
    text_prompted,
)
from trainer.models.registry import register_method
from trainer.models.towers import TokenTower

if TYPE_CHECKING:
    from trainer.data.dataset import Batch

COMPONENTS = ("vpl", "tpl", "nrcl", "lta")
MCPH_OPTIONS: dict[str, Any] = {
    "prompt_k": 10,  # prompts enter layers k..n of an n = prompt_n layer tower (scaled to other depths)
    "prompt_n": 12,
    "n_prompts": 4,  # context prompts per prompted layer
    "adapter_reduction": 4,  # textual adapter bottleneck: dim -> dim / r -> dim
    "tau_init": 0.07,  # learnable InfoNCE temperature, initial value
    "tau_min": 0.01,
    "tau_max": 1.0,
    "gamma": 200.0,  # adaptive temperature: tau_i = tau + gamma * JSD
    "fusion_lambda": 0.99,  # weight of the global codes in the fused training code B (Eq. 6)
    "top_m": 8,  # local token aggregation: tokens kept
    "lta_depth": 2,
    "lta_dim": 256,
    "lta_heads": 4,
    "token_tower_dim": 256,  # transformer on a CNN tower's feature map, where visual prompts enter
    "token_tower_depth": 2,
    "token_tower_heads": 4,
    "caption_dropout": 0.3,  # training: P(image side trains without its caption)
    "text_caption_dropout": 0.5,  # training: P(text side trains without the caption); queries never have one
    "memory_warmup_epochs": 1,  # the code memory joins L_inter after this many epochs (its first codes are untrained)
    "builtin_captioner": True,  # caption images without a captions-file entry from the image itself
    "captioner_hidden": 256,
    "captioner_threshold": 0.5,
    "captioner_lr_scale": 10.0,  # the captioner probe learns at 10x the model's rate (paper lr 5e-5 -> 5e-4)
    "captions_file": None,  # read by the engine (load_captions -> loaders' image meta), not by the model
    "long_text": None,  # None | "truncate" | "sections" | "chunks" (trainer/data/long_text.py)
}
MCPH_LOSS_WEIGHTS = {"quantization": 0.1, "inter": 10.0, "intra": 1.0, "nrcl": 1.0, "captioner": 1.0}
# With components switched off MCPH falls back to BASE's terms (contrastive, similarity, ...) and weights.
MCPH_ALL_WEIGHTS = {**DEFAULT_LOSS_WEIGHTS, **MCPH_LOSS_WEIGHTS}


def mcph_options(cfg: ModelConfig) -> dict[str, Any]:
    """MCPH_OPTIONS overridden by cfg.options; unknown keys are an error (they are usually typos)."""
    unknown = sorted(set(cfg.options) - set(MCPH_OPTIONS))
    if "lambda_init" in unknown:
        raise MedHashError("model config", "MCPH option 'lambda_init' is now 'fusion_lambda': lambda is the fixed "
                           "weight of the global codes in the fused training code (docs/methods.md, MCPH)")
    if unknown:
        raise MedHashError("model config", f"unknown MCPH option(s): {', '.join(unknown)}")
    opts = {**MCPH_OPTIONS, **cfg.options}
    if not 0.0 <= float(opts["fusion_lambda"]) <= 1.0:
        raise MedHashError("model config", f"MCPH option fusion_lambda must be in [0, 1], not {opts['fusion_lambda']!r}")
    return opts


@dataclass
class _Side:
    """One modality's forward: embedding e (before alignment), aligned embedding z (= e without
    NRCL; the global hash heads read it), global codes h and local codes f (None without LTA)."""

    embedding: Tensor
    aligned: Tensor
    global_codes: dict[int, Tensor]
    local_codes: dict[int, Tensor] | None

    @property
    def codes(self) -> dict[int, Tensor]:
        """The modality's continuous code c = 1/2 (h + f) per length (h without LTA): sign(c) is stored/queried."""
        if self.local_codes is None:
            return self.global_codes
        return {b: losses.mean_code(h, self.local_codes[b]) for b, h in self.global_codes.items()}


@register_method("mcph")
class MCPH(BaseHashing):
    """BASE + caption-conditioned prompts (VPL/TPL), NRCL, local aggregation and code fusion."""

    noise_handlings: ClassVar[tuple[str, ...]] = ("none", "adaptive_temperature")
    # Cached stems where the prompts enter at or above the stem (rules in trainer/models/hashing.py);
    # `cached_stem_modalities` narrows this per instance.
    stem_cache: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    # Paper settings (supplementary C) the training service applies when the user gives none.
    default_train_overrides: ClassVar[dict[str, Any]] = {"lr": 5e-5, "weight_decay": 0.01, "batch_size": 32}

    def __init__(self, cfg: ModelConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.opts = mcph_options(cfg)
        self._caption_tokenizer = unwrap_tokenizer(backbone.tokenizer)
        backbone.tokenizer = wrap_tokenizer(backbone.tokenizer, self.opts["long_text"], backbone.max_text_length)
        self.use = {k: bool(cfg.components.get(k, True)) for k in COMPONENTS}
        self.image_tower: TokenTower | None = None
        self.visual_prompts: CaptionPrompts | None = None
        self.textual_prompts: CaptionPrompts | None = None
        self.rectifier: Bottleneck | None = None
        self.image_align: ResMLP | None = None
        self.text_align: ResMLP | None = None
        self.image_lta: LocalTokenAggregation | None = None
        self.text_lta: LocalTokenAggregation | None = None
        self.captioner: BuiltinCaptioner | None = None
        self.v_start = self.t_start = 0
        if self.use["vpl"]:
            self._build_vpl()
        if self.use["tpl"]:
            self._build_tpl()
        if self.use["nrcl"]:
            self._build_nrcl()
        if self.use["lta"]:
            self._build_lta()
        needs_captions = self.use["vpl"] or self.use["tpl"] or self.use["nrcl"]
        if needs_captions and self.opts["builtin_captioner"] and cfg.label_names:
            self.captioner = BuiltinCaptioner(backbone.image_token_dim, cfg.label_names,
                                              self.opts["captioner_hidden"], self.opts["captioner_threshold"])
        self.memory = CodeMemory()
        self._captions_on = True  # False inside `captions_withheld`

    @property
    def uses_captions(self) -> bool:
        """True when an image's code depends on its caption (VPL on)."""
        return self.visual_prompts is not None

    @contextmanager
    def captions_withheld(self) -> Iterator[None]:
        """Encode images as if no caption existed (learned null prompts): the "without captions"
        evaluation, i.e. no captions file and no built-in captioner."""
        before, self._captions_on = self._captions_on, False
        try:
            yield
        finally:
            self._captions_on = before

    # ---- construction -------------------------------------------------------------------------------
    def _build_vpl(self) -> None:
        bb, o = self.backbone, self.opts
        if bb.image_prompts_supported:
            n_v, dim_v = len(bb.image_blocks()), bb.image_token_dim
        else:  # CNN: prompts enter a small transformer on the feature-map tokens (DESIGN.md)
            self.image_tower = TokenTower(bb.image_token_dim, o["token_tower_dim"], o["token_tower_depth"],
                                          o["token_tower_heads"])
            n_v, dim_v = o["token_tower_depth"], self.image_tower.dim
            self.image_proj = Projection(dim_v, self.cfg.embed_dim)
        self.v_start = prompt_start(n_v, o["prompt_k"], o["prompt_n"])
        n_t = len(bb.text_blocks())
        sources = [source_layer(i, n_v, n_t) for i in range(self.v_start, n_v)]
        self.visual_prompts = CaptionPrompts(sources, bb.text_token_dim, dim_v, o["n_prompts"], "linear")

    def _build_tpl(self) -> None:
        bb, o = self.backbone, self.opts
        if not bb.text_prompts_supported:
            raise MedHashError("model config", f"the {bb.spec} text tower does not take prompts; switch off 'tpl'")
        n_t = len(bb.text_blocks())
        self.t_start = prompt_start(n_t, o["prompt_k"], o["prompt_n"])
        self.textual_prompts = CaptionPrompts(range(self.t_start, n_t), bb.text_token_dim, bb.text_token_dim,
                                              o["n_prompts"], "bottleneck", o["adapter_reduction"])
        self.rectifier = Bottleneck(bb.text_global_dim, bb.text_global_dim, o["adapter_reduction"], zero_init=True)

    def _build_nrcl(self) -> None:
        self.image_align = ResMLP(self.cfg.embed_dim)
        self.text_align = ResMLP(self.cfg.embed_dim)
        self.log_tau = nn.Parameter(torch.tensor(math.log(self.opts["tau_init"])))

    def _build_lta(self) -> None:
        o, bb = self.opts, self.backbone
        image_dim = self.image_tower.dim if self.image_tower is not None else bb.image_token_dim
        self.image_lta = LocalTokenAggregation(image_dim, o["lta_dim"], self.bits, o["top_m"], o["lta_depth"],
                                               o["lta_heads"])
        self.text_lta = LocalTokenAggregation(bb.text_token_dim, o["lta_dim"], self.bits, o["top_m"], o["lta_depth"],
                                              o["lta_heads"])

    # ---- captions -------------------------------------------------------------------------------------
    def _image_captions(self, pooled: Tensor, given: list[str | None]) -> list[str | None]:
        """Each image's caption: the given one, else the built-in captioner's sentence (image only)."""
        if not self._captions_on:
            return [None] * len(given)
        missing = [i for i, c in enumerate(given) if c is None]
        if not missing or self.captioner is None:
            return list(given)
        sentences = self.captioner.sentences(pooled[missing])
        out = list(given)
        for i, s in zip(missing, sentences, strict=True):
            out[i] = s
        return out

    def _encode_captions(self, captions: Sequence[str | None], device: torch.device) -> CaptionStates | None:
        if all(c is None for c in captions):
            return None
        tok = self._caption_tokenizer([c or "" for c in captions])  # captions are short: no long-text handling
        return caption_states(self.backbone, {k: v.to(device) for k, v in tok.items()})

    # ---- frozen-stem cache ----------------------------------------------------------------------------
    def cached_stem_modalities(self) -> frozenset[str]:  # type: ignore[override]
        """The stem of a modality can be cached when no prompt enters below the end of the stem:
        always on CNN towers (prompts go to the TokenTower on top), and on a prompted tower when the
        first prompted layer is at or above the frozen/trainable split (k = 10 of 12 with the last
        two layers trainable prompts layer 10, inside the stem: not cacheable)."""
        bb, kinds = self.backbone, set(type(self).stem_cache)
        if self.use["vpl"] and self.image_tower is None and self.v_start < bb._image_split:
            kinds.discard("image")
        if self.use["tpl"] and self.t_start < bb._text_split:
            kinds.discard("text")
        return frozenset(kinds)

    # ---- image side -----------------------------------------------------------------------------------
    def _image_pre(self, images: Tensor, stem: Tensor | None = None) -> Tensor:
        """Caption-free image tokens: the input of the first prompted layer (all tokens without VPL).
        `stem`: the cached frozen image stem (only given when `cached_stem_modalities` allows it)."""
        bb = self.backbone
        if self.use["vpl"] and self.image_tower is None:
            if stem is None:
                return image_prefix(bb, images, self.v_start)
            return bb._image_run(self.image_stem_of(images, stem), bb.image_blocks()[bb._image_split:self.v_start], None)
        return bb.image_top(self.image_stem_of(images, stem))

    def _image_side(self, pre: Tensor, caption: CaptionStates | None, present: Tensor | None) -> _Side:
        bb = self.backbone
        if self.visual_prompts is None:
            tokens, mask = pre, None
            g = bb.image_pool(tokens)
        else:
            prompts = self.visual_prompts(caption, present, pre.shape[0])
            if self.image_tower is not None:
                tokens = self.image_tower(pre, prompts=[None] * self.v_start + prompts)
                g = tokens.mean(dim=1)
            else:
                tokens = image_suffix(bb, pre, self.v_start, prompts)
                g = bb.image_pool(tokens)
            mask = None
        return self._side(self.image_proj(g), self.image_align, self.image_hash, self.image_lta, tokens, mask)

    def _image_forward(self, images: Tensor, meta: Sequence[dict | None] | None, stem: Tensor | None = None) -> _Side:
        pre = self._image_pre(images, stem)
        caption, present = None, None
        if self.visual_prompts is not None:
            captions = self._image_captions(pre.mean(dim=1), captions_from_meta(meta, images.shape[0]))
            caption = self._encode_captions(captions, images.device)
            present = torch.tensor([c is not None for c in captions], device=images.device)
        return self._image_side(pre, caption, present)

    # ---- text side ------------------------------------------------------------------------------------
    def _text_tower(self, tok: dict[str, Tensor], caption: CaptionStates | None, present: Tensor | None,
                    n_texts: int, owner: Tensor | None = None, stem: TextStem | None = None) -> tuple[Tensor, Tensor]:
        """(tokens, global) of each text or window; `owner[w]` = the report of window w (chunked reports);
        `stem`: the cached frozen text stem of unchunked reports."""
        bb = self.backbone
        prompts = None
        if self.textual_prompts is not None:
            prompts = self.textual_prompts(caption, present, n_texts)
            if owner is not None:
                prompts = [p[owner] for p in prompts]
        if stem is None:
            tokens = bb.text_tokens(tok) if prompts is None else text_prompted(bb, tok, self.t_start, prompts)
        else:
            hidden, mask = self.text_stem_of(tok, stem)
            blocks = bb.text_blocks()
            start = bb._text_split if prompts is None else self.t_start
            hidden = bb._text_run(hidden, mask, blocks[bb._text_split:start], None)
            tokens = bb._text_finish(bb._text_run(hidden, mask, blocks[start:], prompts), mask)
        return tokens, bb.text_pool(tokens, tok)

    def _text_side(self, tok: dict[str, Tensor], caption: CaptionStates | None, present: Tensor | None,
                   stem: TextStem | None = None) -> _Side:
        n = tok["input_ids"].shape[0]
        windows = chunk_tokens(tok)
        if windows is None:
            tokens, g = self._text_tower(tok, caption, present, n, stem=stem)
            mask = tok["attention_mask"].bool()
        else:  # long_text "chunks": every window through the tower, pooled per report
            owner = tok["chunk_owner"]
            tokens, g = self._text_tower(windows, caption, present, n, owner)
            g = pool_chunks(g, owner, n)
            tokens, mask = gather_chunk_tokens(tokens, windows["attention_mask"].bool(), owner, n)
        if self.rectifier is not None and caption is not None and present is not None:
            g = g + self.rectifier(caption.global_feature) * present.to(g.dtype).unsqueeze(-1)
        return self._side(self.text_proj(g), self.text_align, self.text_hash, self.text_lta, tokens, mask)

    # ---- global and local codes ---------------------------------------------------------------------------
    def fusion_weight(self) -> float | None:
        """lambda, the weight of the global codes in the fused training code B (None without LTA)."""
        return float(self.opts["fusion_lambda"]) if self.use["lta"] else None

    @staticmethod
    def _side(e: Tensor, align: ResMLP | None, hash_heads: nn.Module, lta: LocalTokenAggregation | None,
              tokens: Tensor, mask: Tensor | None) -> _Side:
        """e -> z = ResMLP(e) (NRCL on; else z = e) -> h = tanh(W z); f = LTA(tokens) with LTA on."""
        z = align(e) if align is not None else e
        return _Side(e, z, hash_heads(z), lta(tokens, mask) if lta is not None else None)

    # ---- public interface (one modality each, per sample) -------------------------------------------------
    def image_features(self, images: Tensor, meta: Sequence[dict | None] | None = None, *,
                       stem: Tensor | None = None) -> Tensor:
        return self._image_forward(images, meta, stem).embedding

    def text_features(self, tokens: dict[str, Tensor], *, stem: TextStem | None = None) -> Tensor:
        return self._text_side(tokens, None, None, stem).embedding

    def encode_image(self, images: Tensor, meta: Sequence[dict | None] | None = None, *,
                     stem: Tensor | None = None) -> dict[int, Tensor]:
        """Continuous image codes c^v = 1/2 (h^v + f^v) in (-1, 1); `meta` may carry each image's own
        caption, never a report."""
        return self._image_forward(images, meta, stem).codes

    def encode_text(self, tokens: dict[str, Tensor], *, stem: TextStem | None = None) -> dict[int, Tensor]:
        return self._text_side(tokens, None, None, stem).codes

    def embed_image(self, images: Tensor, meta: Sequence[dict | None] | None = None, *,
                    stem: Tensor | None = None) -> Tensor:
        return F.normalize(self._image_forward(images, meta, stem).aligned, dim=-1)

    def embed_text(self, tokens: dict[str, Tensor], *, stem: TextStem | None = None) -> Tensor:
        return F.normalize(self._text_side(tokens, None, None, stem).aligned, dim=-1)

    def encode_embed_image(self, images: Tensor, meta: Sequence[dict | None] | None = None, *,
                           stem: Tensor | None = None) -> tuple[dict[int, Tensor], Tensor]:
        side = self._image_forward(images, meta, stem)
        return side.codes, F.normalize(side.aligned, dim=-1)

    def encode_embed_text(self, tokens: dict[str, Tensor], *, stem: TextStem | None = None
                          ) -> tuple[dict[int, Tensor], Tensor]:
        side = self._text_side(tokens, None, None, stem)
        return side.codes, F.normalize(side.aligned, dim=-1)

    # ---- training -------------------------------------------------------------------------------------
    def param_groups(self, train_cfg: TrainConfig) -> list[dict[str, Any]]:
        """AdamW groups (engine hook): the built-in captioner, a probe on detached features, learns at
        `captioner_lr_scale` times the rate of the rest; no weight decay on biases / norms."""
        own = {id(p) for p in self.captioner.parameters()} if self.captioner is not None else set()
        groups: list[dict[str, Any]] = []
        for scale, in_captioner in ((1.0, False), (float(self.opts["captioner_lr_scale"]), True)):
            params = [p for p in self.trainable_parameters() if (id(p) in own) == in_captioner]
            for decay in (True, False):
                chosen = [p for p in params if (p.ndim >= 2) == decay]
                if chosen:
                    groups.append({"params": chosen, "weight_decay": train_cfg.weight_decay if decay else 0.0,
                                   "lr_scale": scale})
        return groups

    def temperature(self) -> Tensor:
        """The learnable tau of NRCL, clamped to [tau_min, tau_max]."""
        return self.log_tau.exp().clamp(self.opts["tau_min"], self.opts["tau_max"])

    def pair_temperatures(self, text_aligned: Tensor, caption_aligned: Tensor, has_caption: Tensor) -> Tensor:
        """tau_i = tau + gamma * JSD(softmax(g^t_i) || softmax(g^c_i)) on L2-normalised aligned embeddings (Eq. 4).

        Pairs without a caption keep the plain tau.
        """
        jsd = losses.jensen_shannon(F.normalize(text_aligned.float(), dim=-1), F.normalize(caption_aligned.float(), dim=-1))
        jsd = jsd * has_caption.float()
        return losses.adaptive_temperature(self.temperature(), jsd, self.opts["gamma"])

    def _weight(self, name: str) -> float:
        return method_loss_weights(self.cfg, MCPH_ALL_WEIGHTS)[name]

    def _keep(self, present: Tensor, p_drop: float) -> Tensor:
        """Caption dropout: each caption is kept with probability 1 - p_drop (training only)."""
        if p_drop <= 0 or not bool(present.any()):  # no draw without captions: all-off MCPH stays BASE
            return present
        return present & (torch.rand(present.shape, device=present.device) >= p_drop)

    def loss_terms(self, batch: Batch, train_cfg: TrainConfig, *, epoch: int) -> dict[str, Tensor]:
        """Eqs. 3-8 on one batch. Batch-level terms see the global batch under torchrun (the
        distributed helpers are the identity in one process)."""
        adaptive = train_cfg.noise_handling == "adaptive_temperature"
        if adaptive and not self.use["nrcl"]:
            raise TrainingError("mcph", "noise handling 'adaptive_temperature' needs the 'nrcl' component")
        device = batch.images.device
        img_stem, txt_stem = self.batch_stems(batch)
        pre = self._image_pre(batch.images, img_stem)
        pooled = pre.mean(dim=1)
        caption, present = None, torch.zeros(len(batch), dtype=torch.bool, device=device)
        if self.use["vpl"] or self.use["tpl"] or self.use["nrcl"]:
            captions = self._image_captions(pooled, captions_from_meta(batch.extras.get("meta"), len(batch)))
            caption = self._encode_captions(captions, device)
            present = torch.tensor([c is not None for c in captions], device=device)
        img = self._image_side(pre, caption, self._keep(present, self.opts["caption_dropout"]))
        txt = self._text_side(batch.tokens, caption, self._keep(present, self.opts["text_caption_dropout"]), txt_stem)

        labels = distributed.all_gather(batch.labels)
        terms = self._contrastive_terms(img, txt, caption, present, adaptive)
        terms.update(self._hashing_terms(img, txt, labels, batch, epoch))
        if self.classifier is not None:
            c = losses.multilabel_bce(self.classifier(img.embedding), batch.labels)
            c = c + losses.multilabel_bce(self.classifier(txt.embedding), batch.labels)
            terms["classifier"] = self._weight("classifier") * c
        if self.captioner is not None:
            cap = losses.multilabel_bce(self.captioner(pooled.detach()), batch.labels)
            terms["captioner"] = self._weight("captioner") * cap
        if not terms:
            raise ValueError("every loss component of MCPH is switched off")
        return terms

    def _per_bits(self, fn) -> Tensor:
        return sum(fn(b) for b in self.bits) / len(self.bits)

    def _contrastive_terms(self, img: _Side, txt: _Side, caption: CaptionStates | None, present: Tensor,
                           adaptive: bool) -> dict[str, Tensor]:
        cfg, gather = self.cfg, distributed.gather_with_grad
        if not self.use["nrcl"]:  # BASE's contrastive term on the codes
            if not cfg.on("contrastive"):
                return {}
            loss = self._per_bits(lambda b: losses.info_nce(gather(img.codes[b]), gather(txt.codes[b]), cfg.temperature))
            return {"contrastive": self._weight("contrastive") * loss}
        z_img, z_txt = img.aligned, txt.aligned  # what the global hash heads read
        tau = self.temperature()
        shift: Tensor | float = 0.0  # gamma * JSD_i of each pair (adaptive temperature), detached
        if adaptive and caption is not None:
            z_cap = self.text_align(self.text_proj(caption.global_feature))
            shift = distributed.all_gather(self.pair_temperatures(z_txt, z_cap, present).detach() - tau.detach())
        terms = {"nrcl": self._weight("nrcl") * losses.info_nce_per_sample(gather(z_img), gather(z_txt), tau + shift)}
        if cfg.on("contrastive"):  # NRCL on the codes: ties each code to its own pair's (docs/methods.md, MCPH)
            code_tau = torch.as_tensor(cfg.temperature, device=z_img.device) + shift
            terms["contrastive"] = self._weight("contrastive") * self._per_bits(
                lambda b: losses.info_nce_per_sample(gather(img.codes[b]), gather(txt.codes[b]), code_tau))
        return terms

    def _hashing_terms(self, img: _Side, txt: _Side, labels: Tensor, batch: Batch, epoch: int) -> dict[str, Tensor]:
        cfg, w, gather = self.cfg, method_loss_weights(self.cfg, MCPH_ALL_WEIGHTS), distributed.gather_with_grad
        s = losses.label_similarity(labels, labels)
        u_img, u_txt = img.codes, txt.codes  # c = 1/2 (h + f) with LTA, h without
        g_img = {b: gather(u_img[b]) for b in self.bits}
        g_txt = {b: gather(u_txt[b]) for b in self.bits}
        terms: dict[str, Tensor] = {}
        if not self.use["lta"]:  # BASE's hashing objective
            if cfg.on("similarity"):
                terms["similarity"] = w["similarity"] * self._per_bits(
                    lambda b: losses.similarity_nll(g_img[b], g_txt[b], s))
            if cfg.on("quantization"):
                terms["quantization"] = w["quantization"] * self._per_bits(
                    lambda b: losses.quantization_loss(u_img[b]) + losses.quantization_loss(u_txt[b]))
        else:  # Eqs. 6-7: quantization of c = 1/2 (h + f) to B, inter on h, intra on f
            lam = self.fusion_weight()
            gh_img = {b: gather(img.global_codes[b]) for b in self.bits}
            gh_txt = {b: gather(txt.global_codes[b]) for b in self.bits}
            gf_img = {b: gather(img.local_codes[b]) for b in self.bits}
            gf_txt = {b: gather(txt.local_codes[b]) for b in self.bits}
            fused = {b: losses.fused_code(gh_img[b], gf_img[b], gh_txt[b], gf_txt[b], lam) for b in self.bits}
            self.memory.update(distributed.all_gather(batch.index), fused, labels)
            if cfg.on("quantization"):
                terms["quantization"] = self._weight("quantization") * self._per_bits(
                    lambda b: losses.fused_quantization_loss(g_img[b], g_txt[b], fused[b]))
            if cfg.on("similarity"):
                use_memory = epoch > self.opts["memory_warmup_epochs"]
                terms["inter"] = self._weight("inter") * self._per_bits(
                    lambda b: self._inter(gh_img[b], gh_txt[b], s, b, labels, use_memory))
                terms["intra"] = self._weight("intra") * self._per_bits(
                    lambda b: losses.intra_modal_similarity_loss(gf_img[b], gf_txt[b], s))
        if cfg.on("bit_balance"):
            terms["bit_balance"] = w["bit_balance"] * self._per_bits(
                lambda b: losses.bit_balance_loss(g_img[b]) + losses.bit_balance_loss(g_txt[b]))
        return terms

    def _inter(self, h_img: Tensor, h_txt: Tensor, s: Tensor, bits: int, labels: Tensor, use_memory: bool) -> Tensor:
        """L_inter on the global codes h, with the code memory of B after the warm-up."""
        if not use_memory:
            return losses.inter_modal_similarity_loss(h_img, h_txt, s)
        mem_codes, mem_labels = self.memory.view(bits)
        s_mem = losses.label_similarity(labels, mem_labels)
        return losses.inter_modal_similarity_loss(h_img, h_txt, s, mem_codes.to(h_img.dtype), s_mem)


# ---- data audit --------------------------------------------------------------------------------------------
def relative_match_scores(image_emb: Tensor, text_emb: Tensor, block: int = 1024) -> np.ndarray:
    """score_i = s_ii - 1/2 ( max_{j != i} s_ij + max_{j != i} s_ji ), s = cosine similarity.

    Positive when image i and report i are each other's best match; strongly negative when some
    other report fits image i (and some other image fits report i) much better: a likely mismatch.
    """
    a, b = F.normalize(image_emb.float(), dim=-1), F.normalize(text_emb.float(), dim=-1)
    n = a.shape[0]
    diag = (a * b).sum(dim=-1)
    if n == 1:
        return diag.cpu().numpy()
    best_txt, best_img = torch.empty(n), torch.empty(n)
    for start in range(0, n, block):
        rows = torch.arange(start, min(n, start + block))
        for out, q, db in ((best_txt, a, b), (best_img, b, a)):
            s = q[rows] @ db.T
            s[torch.arange(len(rows)), rows] = float("-inf")
            out[rows] = s.max(dim=1).values.cpu()
    return (diag.cpu() - 0.5 * (best_txt + best_img)).numpy()


@torch.no_grad()
def mcph_correspondence_scores(model: MCPH, samples: Sequence[Sample], *, captions: dict[str, str] | None = None,
                               batch_size: int = 64, device: str | torch.device | None = None) -> np.ndarray:
    """Per-pair correspondence score after training (higher = more likely a true image-report pair).

    Embeds every image (with its own caption from `captions` or its metadata, else the built-in
    captioner) and every report with the trained model, then scores each pair against each item's
    best other match (`relative_match_scores`). For the data audit: the lowest scores are the
    pairs to check first.
    """
    from trainer.audit import embed_pairs  # the shared embedding pass (imported late: audit uses the engine)

    device = torch.device(device) if device is not None else next(model.parameters()).device
    images, texts = embed_pairs(model, samples, batch_size=batch_size, device=device, captions=captions)
    return relative_match_scores(torch.from_numpy(images), torch.from_numpy(texts))
