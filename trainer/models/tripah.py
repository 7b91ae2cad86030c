"""TriPAH: Imbalance-Aware Tri-Prompt Affinity Hashing for Cross-Modal Medical Retrieval (2026).

Three prompts: the semantic context prompt of a report (Eqs. 1-2, trainer/data/context_prompt.py),
the metadata prompt that travels with an image, and deep visual prompts in the image tower. Each
modality fuses its own three views (global, tokens, prompt) with the selective state-space +
attention block Psi and GRN gating (Eqs. 3-4, trainer/models/fusion.py); a cross-modal fused
teacher (the two modalities of the same pair) exists in training only. Objectives (Eqs. 5-12):
multi-positive global InfoNCE on the codes (Eq. 5), local alignment of the image view with the
prompt view under the per-sample temperature tau / (1 + JSD) (Eqs. 6-7), intra-text consistency
1 - cos(report, its context prompt) (Eq. 8), asymmetric progressive quantization (Eq. 9),
class-balanced BCE on the codes (Eq. 10) and the pairwise KL(S || sigma(b^v . b^t / K)) (Eq. 11),
weighted as Eq. 12. How we read each equation and where we deviate from the public code (which
computes codes from the paired report and from other samples, and picks epochs on the test split)
is in docs/methods.md. The diagnostic option "leak_paired_report" (leak study only; the app refuses
it) reproduces the public code's leak: the image code is computed from the image AND its paired report.

Switches (ModelConfig.components) for the paper's ablation (Table IV): "triview", "iahash",
"context_prompt", "visual_prompt"; all on by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer import distributed, losses
from trainer.config import ModelConfig, TrainConfig
from trainer.data.context_prompt import (
    GENERIC_CONTEXT_PROMPT,
    GENERIC_IMAGE_PROMPT,
    ContextPromptTokenizer,
    image_prompt,
)
from trainer.data.long_text import unwrap_tokenizer, wrap_tokenizer
from trainer.errors import MedHashError
from trainer.models.backbones import Backbone
from trainer.models.fusion import TriViewFusion, cross_modal_teacher
from trainer.models.hashing import HashingModel
from trainer.models.heads import HashHeads
from trainer.models.registry import register_method
from trainer.models.towers import masked_mean
from trainer.models.views import (
    LEAK_OPTION,
    ImageViews,
    TextViews,
    component_on,
    leaks_paired_report,
    paired_report_texts,
    param_groups,
    tokens_to,
    weight,
)

if TYPE_CHECKING:
    from trainer.data.dataset import Batch

Meta = Sequence[Mapping[str, Any] | None] | None

COMPONENTS = {"triview": True, "iahash": True, "context_prompt": True, "visual_prompt": True}
# Eq. 12: L = L_global + alpha L_local + mu L_intra + xi L_cls + kappa L_q + eta L_bayes, with
# alpha = 1 (local), mu = 1 (intra-text, Eq. 8), xi = 0.3 (classification, Eq. 10), kappa = 0.1
# (quantization, Eq. 9) and eta = 0.01 (the Eq. 11 KL, "bayesian"). The project's first reading had
# the letters shifted (mu on classification, kappa on intra-text, xi on quantization); with mu and xi
# placed as the paper gives them, kappa = 0.1 is the one left for quantization.
# The global InfoNCE is the unit-weight anchor; "distill" (the training-only teacher) is our addition.
LOSS_WEIGHTS = {"global": 1.0, "local": 1.0, "intra_text": 1.0, "quantization": 0.1, "classification": 0.3,
                "bayesian": 0.01, "distill": 0.1}
OPTIONS: dict[str, Any] = {
    "tau": 0.05,  # InfoNCE temperature of Eq. 5 and the base temperature of Eqs. 6-7
    "context_keep_prob": 0.8,  # rho: P(delta = 1), the context prompt is kept
    "context_domain": "auto",  # Extract(report): "auto" | "chest" | "fundus" | "text"
    "zeta": 0.999,  # class-balanced weights
    "class_counts": None,  # N_c per label name (list or {name: count}); else counted from the batches
    "quant_steepness": 1.0,  # k of lambda(e)
    "quant_midpoint": None,  # e0 of lambda(e); None = half the training epochs
    "n_visual_prompts": 4,
    "d_state": 16,
    "ssm_backend": "auto",  # "auto" | "torch" | "kernel" (mamba-ssm)
    "backbone_lr_scale": 0.1,  # 1e-5 backbone / 1e-4 heads
    "long_text": None,  # None | "truncate" | "sections" | "chunks"
    "chunk_pool": "mean",  # "mean" | "attention"
    # Leak study only (diagnostic): the IMAGE code is the cross-modal teacher fusion of the image and
    # its paired report, as in the public code. Refused by the app (views.refuse_leak).
    LEAK_OPTION: False,
}


def _pad_to(ids: Tensor, mask: Tensor, width: int) -> tuple[Tensor, Tensor]:
    extra = width - ids.shape[1]
    if extra <= 0:
        return ids, mask
    return F.pad(ids, (0, extra)), F.pad(mask, (0, extra))


@register_method("tripah")
class TriPAH(HashingModel):
    """Tri-prompt views per modality -> tri-view fusion -> hash heads; imbalance-aware objectives."""

    # The paper: AdamW, batch 128, lr 1e-4 for the heads and 1e-5 for the backbone (param_groups).
    default_train_overrides: ClassVar[dict[str, Any]] = {"batch_size": 128, "lr": 1e-4}
    stem_cache: ClassVar[frozenset[str]] = frozenset({"image"})  # prompts enter above the stem

    def __init__(self, cfg: ModelConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.opt = {**OPTIONS, **cfg.options}
        self.use = {name: component_on(cfg, name, COMPONENTS) for name in COMPONENTS}
        # Leak study only: encode_image reads the paired report from the meta (engine.encode_dataset
        # has the loaders fill it for such a model); off, nothing of this path runs.
        self.needs_paired_report = leaks_paired_report(self.opt)
        self.prompt_tokenizer = unwrap_tokenizer(backbone.tokenizer)
        reports = wrap_tokenizer(backbone.tokenizer, self.opt["long_text"], backbone.max_text_length)
        backbone.tokenizer = (ContextPromptTokenizer(reports, self.opt["context_domain"])
                              if self.use["context_prompt"] else reports)
        d = cfg.embed_dim
        self.image_views = ImageViews(backbone, d, self.use["visual_prompt"], int(self.opt["n_visual_prompts"]))
        self.text_views = TextViews(backbone, d, self.opt["chunk_pool"])
        fusion_kw = {"d_state": int(self.opt["d_state"]), "backend": self.opt["ssm_backend"]}
        if self.use["triview"]:
            self.fuse_image, self.fuse_text = TriViewFusion(d, **fusion_kw), TriViewFusion(d, **fusion_kw)
            self.teacher_image, self.teacher_text = TriViewFusion(d, **fusion_kw), TriViewFusion(d, **fusion_kw)
            self.teacher_hash = HashHeads(d, self.bits)
        elif self.use["context_prompt"]:
            self.prompt_mix_image, self.prompt_mix_text = nn.Linear(d, d), nn.Linear(d, d)
        self.image_hash, self.text_hash = HashHeads(d, self.bits), HashHeads(d, self.bits)
        n_cls = len(cfg.label_names)
        self.classifier = nn.ModuleDict({str(b): nn.Linear(b, n_cls) for b in self.bits}) if n_cls else None
        self.register_buffer("class_counts", torch.zeros(n_cls), persistent=False)
        self._fixed_counts = self._given_counts(cfg, self.opt["class_counts"])

    # ---- views -----------------------------------------------------------------------------------
    @staticmethod
    def _given_counts(cfg: ModelConfig, given: Any) -> Tensor | None:
        if given is None:
            return None
        if isinstance(given, Mapping):
            given = [float(given.get(name, 0)) for name in cfg.label_names]
        counts = torch.tensor([float(c) for c in given])
        if counts.numel() != len(cfg.label_names):
            raise MedHashError("model config", f"class_counts has {counts.numel()} entries for {len(cfg.label_names)} labels")
        return counts

    def _keep(self, n: int, device: torch.device) -> Tensor:
        """delta_i ~ Bernoulli(rho) in training (stochastic gating), all ones otherwise."""
        if not self.training:
            return torch.ones(n, dtype=torch.bool, device=device)
        return torch.rand(n, device=device) < float(self.opt["context_keep_prob"])

    def _tokenize_prompts(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        tok = self.prompt_tokenizer(texts)
        return tok["input_ids"].to(device), tok["attention_mask"].to(device)

    def _image_prompt_view(self, meta: Meta, n: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor] | None:
        """The image's own metadata prompt (never the report), through the text tower."""
        if not self.use["context_prompt"]:
            return None
        metas = list(meta) if meta is not None else [None] * n
        keep = self._keep(n, device).tolist()
        texts = [image_prompt(m) if k else GENERIC_IMAGE_PROMPT for m, k in zip(metas, keep, strict=True)]
        return self.text_views.prompt(*self._tokenize_prompts(texts, device))

    def _text_prompt_view(self, tokens: dict[str, Tensor]) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor] | None:
        """The report's context prompt (gated to the generic prompt per sample in training)."""
        if not self.use["context_prompt"]:
            return None
        n, device = tokens["input_ids"].shape[0], tokens["input_ids"].device
        gen_ids, gen_mask = self._tokenize_prompts([GENERIC_CONTEXT_PROMPT], device)
        if "ctx_input_ids" in tokens:
            ids, mask = tokens["ctx_input_ids"], tokens["ctx_attention_mask"]
            keep = self._keep(n, device)
        else:  # plain tokens (no metadata wrapper in front): the fallback prompt for everyone
            ids, mask = gen_ids.expand(n, -1), gen_mask.expand(n, -1)
            keep = torch.zeros(n, dtype=torch.bool, device=device)
        width = max(ids.shape[1], gen_ids.shape[1])
        ids, mask = _pad_to(ids, mask, width)
        gen_ids, gen_mask = _pad_to(gen_ids, gen_mask, width)
        if not bool(keep.all()):
            ids = torch.where(keep[:, None], ids, gen_ids)
            mask = torch.where(keep[:, None], mask, gen_mask)
        return self.text_views.prompt(ids, mask), keep

    # ---- fusion (one modality at a time) --------------------------------------------------------
    def _fuse(self, fusion: nn.Module | None, mix: nn.Module | None, glob: Tensor, tokens: Tensor,
              mask: Tensor | None, prompt: tuple[Tensor, Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """(fused embedding, local view) of one modality from its own global, token and prompt views."""
        if fusion is not None:
            p_tok, p_mask = (prompt[1], prompt[2]) if prompt is not None else (None, None)
            return fusion(glob, tokens, mask, p_tok, p_mask)
        local = masked_mean(tokens, mask)
        fused = glob if prompt is None or mix is None else glob + mix(prompt[0])
        return fused, local

    def _image(self, images: Tensor, meta: Meta, stem: Tensor | None = None,
               paired: dict[str, Any] | None = None) -> dict[str, Any]:
        """An image's views and fused embedding. `paired` (the paired report's `_text` views) is given
        only for a model built with LEAK_OPTION; then the fused embedding is the leaky one."""
        glob, tokens = self.image_views(self.image_stem_of(images, stem))
        prompt = self._image_prompt_view(meta, images.shape[0], images.device)
        fused, local = self._fuse(getattr(self, "fuse_image", None), getattr(self, "prompt_mix_image", None),
                                  glob, tokens, None, prompt)
        out = {"glob": glob, "tokens": tokens, "mask": None, "fused": fused, "local": local}
        if paired is not None:
            out["fused"] = self._leaky_fused(out, paired)
        return out

    def _leaky_fused(self, img: dict[str, Any], txt: dict[str, Any]) -> Tensor:
        """LEAK_OPTION only: the image's fused embedding made from the image AND its paired report, as
        the public code does: the cross-modal teacher fusion (without tri-view fusion: the mean of
        the two modalities' fused embeddings)."""
        if self.use["triview"]:
            return cross_modal_teacher(self.teacher_image, self.teacher_text, (img["glob"], img["tokens"], img["mask"]),
                                       (txt["glob"], txt["tokens"], txt["mask"]))
        return 0.5 * (img["fused"] + txt["fused"])

    def _paired(self, meta: Meta, n: int, device: torch.device) -> dict[str, Any] | None:
        """LEAK_OPTION only: the `_text` views of each image's paired report (meta PAIRED_REPORT_KEY)."""
        if not self.needs_paired_report:
            return None
        return self._text(tokens_to(self.backbone.tokenizer(paired_report_texts(meta, n)), device))

    def _text(self, tokens: dict[str, Tensor]) -> dict[str, Any]:
        glob, toks, mask = self.text_views(tokens)
        viewed = self._text_prompt_view(tokens)
        prompt, keep = viewed if viewed is not None else (None, None)
        fused, local = self._fuse(getattr(self, "fuse_text", None), getattr(self, "prompt_mix_text", None),
                                  glob, toks, mask, prompt)
        return {"glob": glob, "tokens": toks, "mask": mask, "fused": fused, "local": local,
                "prompt": prompt, "keep": keep}

    # ---- HashingModel interface -------------------------------------------------------------------
    def encode_image(self, images: Tensor, meta: Meta = None, *, stem: Tensor | None = None) -> dict[int, Tensor]:
        paired = self._paired(meta, images.shape[0], images.device)
        return self.image_hash(self._image(images, meta, stem, paired)["fused"])

    def encode_text(self, tokens: dict[str, Tensor]) -> dict[int, Tensor]:
        return self.text_hash(self._text(tokens)["fused"])

    def embed_image(self, images: Tensor, meta: Meta = None, *, stem: Tensor | None = None) -> Tensor:
        paired = self._paired(meta, images.shape[0], images.device)
        return F.normalize(self._image(images, meta, stem, paired)["fused"], dim=-1)

    def embed_text(self, tokens: dict[str, Tensor]) -> Tensor:
        return F.normalize(self._text(tokens)["fused"], dim=-1)

    def encode_embed_image(self, images: Tensor, meta: Meta = None, *, stem: Tensor | None = None
                           ) -> tuple[dict[int, Tensor], Tensor]:
        paired = self._paired(meta, images.shape[0], images.device)
        fused = self._image(images, meta, stem, paired)["fused"]
        return self.image_hash(fused), F.normalize(fused, dim=-1)

    def encode_embed_text(self, tokens: dict[str, Tensor]) -> tuple[dict[int, Tensor], Tensor]:
        fused = self._text(tokens)["fused"]
        return self.text_hash(fused), F.normalize(fused, dim=-1)

    def param_groups(self, train_cfg: TrainConfig) -> list[dict[str, Any]]:
        """Backbone at lr * backbone_lr_scale (paper: 1e-5 vs 1e-4), heads at lr; see views.param_groups."""
        return param_groups(self, self.backbone, train_cfg, float(self.opt["backbone_lr_scale"]))

    # ---- training -----------------------------------------------------------------------------------
    def _class_weights(self, labels: Tensor) -> Tensor:
        """Class-balanced weights omega_c (Eq. 10) from the given or the running counts."""
        if self._fixed_counts is not None:
            counts = self._fixed_counts.to(labels.device)
        else:
            if self.training:
                self.class_counts += labels.detach().sum(dim=0).to(self.class_counts.dtype)
            counts = self.class_counts
        return (losses.class_balanced_weights(counts, float(self.opt["zeta"])) if self.use["iahash"]
                else torch.ones_like(counts))

    def loss_terms(self, batch: Batch, train_cfg: TrainConfig, *, epoch: int) -> dict[str, Tensor]:
        """Eq. 12: the weighted sum of Eqs. 5-11 (each averaged over the code lengths) + distillation."""
        w = {k: weight(self.cfg, k, LOSS_WEIGHTS) for k in LOSS_WEIGHTS}
        tau = float(self.opt["tau"])
        img_stem, _ = self.batch_stems(batch)
        img, txt = self._image(batch.images, batch.extras.get("meta"), img_stem), self._text(batch.tokens)
        if self.needs_paired_report:  # LEAK_OPTION: the training image code is the leaky one too
            img["fused"] = self._leaky_fused(img, txt)
        h_img, h_txt = self.image_hash(img["fused"]), self.text_hash(txt["fused"])
        gather = distributed.gather_with_grad  # the global batch under torchrun, identity otherwise
        labels = distributed.all_gather(batch.labels)
        positives = losses.label_similarity(labels, labels)
        terms: dict[str, Tensor] = {}
        per_bits = lambda fn: sum(fn(b) for b in self.bits) / len(self.bits)

        terms["global"] = w["global"] * per_bits(
            lambda b: losses.multi_positive_info_nce(gather(h_img[b]), gather(h_txt[b]), positives, tau))
        if txt["prompt"] is not None:
            # h^p: the pair's context-prompt embedding (built from the report: a loss target only).
            h_p = gather(txt["prompt"][0])
            kept = distributed.all_gather(txt["keep"].to(torch.uint8)).bool()
            terms["local"] = w["local"] * losses.local_prompt_alignment(gather(img["local"]), h_p, tau, kept)
            terms["intra_text"] = w["intra_text"] * losses.intra_text_consistency(gather(txt["glob"]), h_p, kept)
        else:  # no context prompts (ablation): the report's local view stands in for the prompt view
            terms["local"] = w["local"] * losses.local_prompt_alignment(gather(img["local"]), gather(txt["local"]), tau)
        terms["quantization"] = w["quantization"] * per_bits(lambda b: self._quantization(h_img[b], h_txt[b],
                                                                                         epoch, train_cfg))
        h_teacher = None
        if self.use["triview"]:
            fused = cross_modal_teacher(self.teacher_image, self.teacher_text,
                                        (img["glob"], img["tokens"], img["mask"]),
                                        (txt["glob"], txt["tokens"], txt["mask"]))
            h_teacher = self.teacher_hash(fused)
            terms["distill"] = w["distill"] * per_bits(lambda b: 0.5 * (
                losses.code_distillation_loss(h_img[b], h_teacher[b])
                + losses.code_distillation_loss(h_txt[b], h_teacher[b])))
        if self.classifier is not None:
            terms.update(self._label_terms(batch.labels, positives, h_img, h_txt, h_teacher, w))
        return terms

    def _quantization(self, h_img: Tensor, h_txt: Tensor, epoch: int, train_cfg: TrainConfig) -> Tensor:
        if not self.use["iahash"]:
            return losses.quantization_loss(h_img) + losses.quantization_loss(h_txt)
        midpoint = self.opt["quant_midpoint"]
        midpoint = 0.5 * train_cfg.epochs if midpoint is None else float(midpoint)
        lam = losses.progressive_quantization_weight(epoch, midpoint, float(self.opt["quant_steepness"]))
        return losses.asymmetric_quantization_loss(h_img, h_txt, lam)

    def _label_terms(self, labels: Tensor, positives: Tensor, h_img: dict[int, Tensor], h_txt: dict[int, Tensor],
                     h_teacher: dict[int, Tensor] | None, w: dict[str, float]) -> dict[str, Tensor]:
        """Eq. 10 (class-balanced BCE of the image, text and teacher codes' logits) and Eq. 11 (pairwise
        KL between the global batch's label similarity `positives` and its image-text code products)."""
        omega = self._class_weights(distributed.all_gather(labels))  # the same weights on every rank
        gather = distributed.gather_with_grad
        cls_terms, bayes_terms = [], []
        for b in self.bits:
            views = [h_img[b], h_txt[b]] + ([h_teacher[b]] if h_teacher is not None else [])
            logits = [self.classifier[str(b)](h) for h in views]
            cls_terms.append(sum(losses.class_balanced_bce(z, labels, omega) for z in logits) / len(logits))
            bayes_terms.append(losses.bayesian_similarity_kl(gather(h_img[b]), gather(h_txt[b]), positives))
        return {"classification": w["classification"] * sum(cls_terms) / len(cls_terms),
                "bayesian": w["bayesian"] * sum(bayes_terms) / len(bayes_terms)}
