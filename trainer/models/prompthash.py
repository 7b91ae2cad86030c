"""PromptHash: Affinity-Prompted Collaborative Cross-Modal Learning for Adaptive Hashing Retrieval
(Zou, Cheng & Chen, CVPR 2025).

- TAAP (text affinity-aware prompt): one prompt per class, "[ctx_1 .. ctx_M] <class name>", whose
  context tokens are learned (the class name is not) and enter the last text-tower layers. A
  report attends to the class prompts by affinity (softmax of cosine similarity) and an adapter
  fuses the resulting foreground prompt feature with the report's own feature.
- AGSF (adaptive gated selection fusion, trainer/models/fusion.py): Mamba over a sample's tokens,
  attention to its global + prompt views, a gate that keeps retrieval-relevant features and drops
  redundant ones, gated token selection for pooling. Per sample and per modality: the image's
  prompt view is the class prompts weighted by the IMAGE's own affinity, never the report.
- PACL (prompt-alignment contrastive learning): global and local InfoNCE between the modalities
  plus intra-/inter-class affinity to the global and local class-prompt tokens.
- Hash learning: code InfoNCE (temperature `code_tau`, 0.3: see docs/methods.md), quantization,
  reconstruction; a cross-modal AGSF teacher of the pair (training only) is distilled into both codes.

Switches (ModelConfig.components) for the paper's ablation: "taap", "agsf", "pacl"; all on by
default. Deviations from the public code are listed in docs/methods.md. The diagnostic option
"leak_paired_report" (leak study only; the app refuses it) reproduces the public code's leak: the
image code is computed from the image AND its paired report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer import distributed, losses
from trainer.config import ModelConfig, TrainConfig
from trainer.data.labels import ODIR_CLASSES
from trainer.data.long_text import unwrap_tokenizer, wrap_tokenizer
from trainer.errors import MedHashError
from trainer.models.backbones import Backbone
from trainer.models.fusion import AGSF, cross_modal_teacher
from trainer.models.hashing import HashingModel
from trainer.models.heads import HashHeads
from trainer.models.registry import register_method
from trainer.models.towers import insert_prompts, masked_mean
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

COMPONENTS = {"taap": True, "agsf": True, "pacl": True}
LOSS_WEIGHTS = {"contrastive": 1.0, "pacl_global": 1.0, "pacl_local": 1.0, "quantization": 0.1,
                "reconstruction": 0.1, "distill": 0.1}
OPTIONS: dict[str, Any] = {
    "code_tau": 0.3,  # InfoNCE temperature on the tanh codes (as BASE: 0.07 learned far slower on codes)
    "tau": 0.07,  # InfoNCE temperature of PACL (continuous embeddings)
    "affinity_tau": 0.07,  # temperature of the class-prompt affinities
    "n_ctx": 4,  # learnable context tokens per class prompt
    "d_state": 16,
    "ssm_backend": "auto",
    "backbone_lr_scale": 0.1,
    "long_text": None,
    "chunk_pool": "mean",
    # Leak study only (diagnostic): the IMAGE code is the cross-modal AGSF teacher fusion of the image
    # and its paired report, as in the public code. Refused by the app (views.refuse_leak).
    LEAK_OPTION: False,
}


def class_prompt_names(label_names: list[str]) -> list[str]:
    """Words for each class: ODIR codes become their names, CheXpert names are lower-cased."""
    return [ODIR_CLASSES.get(n, n).replace("_", " ").lower() for n in label_names]


class ClassPrompts(nn.Module):
    """TAAP's class prompts: learned context tokens + the class name, through the top text layers.

    Returns global (C, D) and local (C, D) prompt features: the tower's pooled output and the mean
    of the context tokens' outputs.
    """

    def __init__(self, backbone: Backbone, views: TextViews, label_names: list[str], n_ctx: int, dim: int) -> None:
        super().__init__()
        self.backbone, self.views = [backbone], [views]
        tok = unwrap_tokenizer(backbone.tokenizer)(class_prompt_names(label_names))
        self.register_buffer("ids", tok["input_ids"], persistent=False)
        self.register_buffer("mask", tok["attention_mask"], persistent=False)
        self.ctx = nn.Parameter(torch.randn(n_ctx, backbone.text_token_dim) * 0.02)
        self.local_proj = nn.Sequential(nn.LayerNorm(backbone.text_token_dim), nn.Linear(backbone.text_token_dim, dim))

    def forward(self) -> tuple[Tensor, Tensor]:
        bb, m = self.backbone[0], self.ctx.shape[0]
        h, mask = bb.text_stem({"input_ids": self.ids, "attention_mask": self.mask})
        h, mask = insert_prompts(h, mask, self.ctx, keep_front=1)
        ids = torch.cat([self.ids[:, :1], self.ids.new_zeros(self.ids.shape[0], m), self.ids[:, 1:]], dim=1)
        tokens = bb.text_top(h, mask)
        glob = self.views[0].glob_proj(bb.text_pool(tokens, {"input_ids": ids, "attention_mask": mask.long()}))
        return glob, self.local_proj(tokens[:, 1:1 + m].mean(dim=1))


class AffinityAdapter(nn.Module):
    """t' = t + s * MLP([t; f]): fuses a report feature with its affinity-weighted prompt feature."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim))
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, feature: Tensor, prompt: Tensor) -> Tensor:
        return feature + self.scale * self.mlp(torch.cat([feature, prompt], dim=-1))


def affinity(features: Tensor, prompts: Tensor, tau: float) -> Tensor:
    """softmax_c(cos(f_i, p_c) / tau): how much of each class prompt sample i carries (B, C)."""
    return torch.softmax(F.normalize(features, dim=-1) @ F.normalize(prompts, dim=-1).T / tau, dim=-1)


@register_method("prompthash")
class PromptHash(HashingModel):
    """Image / text views -> (TAAP) -> AGSF per modality -> hash heads; PACL + hash losses."""

    stem_cache: ClassVar[frozenset[str]] = frozenset({"image", "text"})  # the engine drops "text" for chunked reports

    def __init__(self, cfg: ModelConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.opt = {**OPTIONS, **cfg.options}
        self.use = {name: component_on(cfg, name, COMPONENTS) for name in COMPONENTS}
        # Leak study only: encode_image reads the paired report from the meta (engine.encode_dataset
        # has the loaders fill it for such a model); off, nothing of this path runs.
        self.needs_paired_report = leaks_paired_report(self.opt)
        backbone.tokenizer = wrap_tokenizer(backbone.tokenizer, self.opt["long_text"], backbone.max_text_length)
        d = cfg.embed_dim
        self.image_views = ImageViews(backbone, d, prompts=False)
        self.text_views = TextViews(backbone, d, self.opt["chunk_pool"])
        if self.use["taap"]:
            if not cfg.label_names:
                raise MedHashError("model config", "PromptHash's text affinity prompts need the label names")
            self.class_prompts = ClassPrompts(backbone, self.text_views, list(cfg.label_names), int(self.opt["n_ctx"]), d)
            self.adapter = AffinityAdapter(d)
        kw = {"d_state": int(self.opt["d_state"]), "backend": self.opt["ssm_backend"]}
        if self.use["agsf"]:
            self.agsf_image, self.agsf_text = AGSF(d, **kw), AGSF(d, **kw)
            self.teacher_image, self.teacher_text = AGSF(d, **kw), AGSF(d, **kw)
            self.teacher_hash = HashHeads(d, self.bits)
        self.image_hash, self.text_hash = HashHeads(d, self.bits), HashHeads(d, self.bits)
        self.decoder = nn.ModuleDict({str(b): nn.Linear(b, d) for b in self.bits})

    # ---- per-modality paths ---------------------------------------------------------------------------
    def _prompts(self) -> tuple[Tensor, Tensor] | None:
        return self.class_prompts() if self.use["taap"] else None

    def _prompt_view(self, glob: Tensor, prompts: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor] | None:
        """(affinity-weighted class prompt tokens (B, C, D), foreground prompt feature (B, D)) of a sample."""
        if prompts is None:
            return None
        a = affinity(glob, prompts[0], float(self.opt["affinity_tau"]))
        return a.unsqueeze(-1) * prompts[0].unsqueeze(0), a @ prompts[0]

    def _fuse(self, fusion: nn.Module | None, glob: Tensor, tokens: Tensor, mask: Tensor | None,
              view: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        if fusion is None:
            return glob, masked_mean(tokens, mask)
        return fusion(glob, tokens, mask, view[0] if view is not None else None, None)

    def _image(self, images: Tensor, prompts: tuple[Tensor, Tensor] | None, stem: Tensor | None = None,
               paired: dict[str, Any] | None = None) -> dict[str, Any]:
        """An image's views and fused embedding. `paired` (the paired report's `_text` views) is given
        only for a model built with LEAK_OPTION; then the fused embedding is the leaky one."""
        glob, tokens = self.image_views(self.image_stem_of(images, stem))
        fused, local = self._fuse(getattr(self, "agsf_image", None), glob, tokens, None,
                                  self._prompt_view(glob, prompts))
        out = {"glob": glob, "tokens": tokens, "mask": None, "fused": fused, "local": local}
        if paired is not None:
            out["fused"] = self._leaky_fused(out, paired)
        return out

    def _leaky_fused(self, img: dict[str, Any], txt: dict[str, Any]) -> Tensor:
        """LEAK_OPTION only: the image's fused embedding made from the image AND its paired report, as
        the public AGSF does: the cross-modal AGSF teacher fusion (without AGSF: the mean of the two
        modalities' embeddings)."""
        if self.use["agsf"]:
            return cross_modal_teacher(self.teacher_image, self.teacher_text, (img["glob"], img["tokens"], img["mask"]),
                                       (txt["glob"], txt["tokens"], txt["mask"]))
        return 0.5 * (img["fused"] + txt["fused"])

    def _paired(self, meta: Any, n: int, device: torch.device,
                prompts: tuple[Tensor, Tensor] | None) -> dict[str, Any] | None:
        """LEAK_OPTION only: the `_text` views of each image's paired report (meta PAIRED_REPORT_KEY)."""
        if not self.needs_paired_report:
            return None
        return self._text(tokens_to(self.backbone.tokenizer(paired_report_texts(meta, n)), device), prompts)

    def _text(self, tokens: dict[str, Tensor], prompts: tuple[Tensor, Tensor] | None,
              stem: tuple[Tensor, Tensor] | None = None) -> dict[str, Any]:
        glob, toks, mask = self.text_views(tokens, None if stem is None else self.text_stem_of(tokens, stem))
        view = self._prompt_view(glob, prompts)
        if view is not None:
            glob = self.adapter(glob, view[1])  # TAAP: report + its foreground prompt feature
        fused, local = self._fuse(getattr(self, "agsf_text", None), glob, toks, mask, view)
        return {"glob": glob, "tokens": toks, "mask": mask, "fused": fused, "local": local}

    # ---- HashingModel interface -------------------------------------------------------------------------
    def encode_image(self, images: Tensor, meta: Any = None, *, stem: Tensor | None = None) -> dict[int, Tensor]:
        prompts = self._prompts()
        paired = self._paired(meta, images.shape[0], images.device, prompts)
        return self.image_hash(self._image(images, prompts, stem, paired)["fused"])

    def encode_text(self, tokens: dict[str, Tensor], *, stem: tuple[Tensor, Tensor] | None = None) -> dict[int, Tensor]:
        return self.text_hash(self._text(tokens, self._prompts(), stem)["fused"])

    def embed_image(self, images: Tensor, meta: Any = None, *, stem: Tensor | None = None) -> Tensor:
        prompts = self._prompts()
        paired = self._paired(meta, images.shape[0], images.device, prompts)
        return F.normalize(self._image(images, prompts, stem, paired)["fused"], dim=-1)

    def embed_text(self, tokens: dict[str, Tensor], *, stem: tuple[Tensor, Tensor] | None = None) -> Tensor:
        return F.normalize(self._text(tokens, self._prompts(), stem)["fused"], dim=-1)

    def encode_embed_image(self, images: Tensor, meta: Any = None, *, stem: Tensor | None = None
                           ) -> tuple[dict[int, Tensor], Tensor]:
        prompts = self._prompts()
        paired = self._paired(meta, images.shape[0], images.device, prompts)
        fused = self._image(images, prompts, stem, paired)["fused"]
        return self.image_hash(fused), F.normalize(fused, dim=-1)

    def encode_embed_text(self, tokens: dict[str, Tensor], *, stem: tuple[Tensor, Tensor] | None = None
                          ) -> tuple[dict[int, Tensor], Tensor]:
        fused = self._text(tokens, self._prompts(), stem)["fused"]
        return self.text_hash(fused), F.normalize(fused, dim=-1)

    def param_groups(self, train_cfg: TrainConfig) -> list[dict[str, Any]]:
        return param_groups(self, self.backbone, train_cfg, float(self.opt["backbone_lr_scale"]))

    # ---- training ---------------------------------------------------------------------------------------
    def loss_terms(self, batch: Batch, train_cfg: TrainConfig, *, epoch: int) -> dict[str, Tensor]:
        w = {k: weight(self.cfg, k, LOSS_WEIGHTS) for k in LOSS_WEIGHTS}
        tau, a_tau, code_tau = float(self.opt["tau"]), float(self.opt["affinity_tau"]), float(self.opt["code_tau"])
        prompts = self._prompts()
        img_stem, txt_stem = self.batch_stems(batch)
        img, txt = self._image(batch.images, prompts, img_stem), self._text(batch.tokens, prompts, txt_stem)
        if self.needs_paired_report:  # LEAK_OPTION: the training image code is the leaky one too
            img["fused"] = self._leaky_fused(img, txt)
        h_img, h_txt = self.image_hash(img["fused"]), self.text_hash(txt["fused"])
        gather = distributed.gather_with_grad  # the global batch under torchrun, identity otherwise
        labels = distributed.all_gather(batch.labels)
        per_bits = lambda fn: sum(fn(b) for b in self.bits) / len(self.bits)
        terms: dict[str, Tensor] = {
            "contrastive": w["contrastive"] * per_bits(
                lambda b: losses.info_nce(gather(h_img[b]), gather(h_txt[b]), code_tau)),
            "quantization": w["quantization"] * per_bits(
                lambda b: losses.quantization_loss(h_img[b]) + losses.quantization_loss(h_txt[b])),
            "reconstruction": w["reconstruction"] * per_bits(lambda b: 0.5 * (
                losses.code_reconstruction_loss(self.decoder[str(b)](h_img[b]), img["fused"])
                + losses.code_reconstruction_loss(self.decoder[str(b)](h_txt[b]), txt["fused"]))),
        }
        if self.use["pacl"]:
            views = {k: {"fused": gather(v["fused"]), "local": gather(v["local"])} for k, v in (("img", img), ("txt", txt))}
            terms.update(self._pacl(views["img"], views["txt"], prompts, labels, tau, a_tau, w))
        if self.use["agsf"]:
            fused = cross_modal_teacher(self.teacher_image, self.teacher_text,
                                        (img["glob"], img["tokens"], img["mask"]),
                                        (txt["glob"], txt["tokens"], txt["mask"]))
            h_x = self.teacher_hash(fused)
            s = losses.label_similarity(labels, batch.labels)
            terms["distill"] = w["distill"] * per_bits(lambda b: (
                losses.similarity_nll(gather(h_x[b]), h_x[b], s) + losses.quantization_loss(h_x[b])
                + 0.5 * (losses.code_distillation_loss(h_img[b], h_x[b])
                         + losses.code_distillation_loss(h_txt[b], h_x[b]))))
        return terms

    def _pacl(self, img: dict[str, Any], txt: dict[str, Any], prompts: tuple[Tensor, Tensor] | None, labels: Tensor,
              tau: float, a_tau: float, w: dict[str, float]) -> dict[str, Tensor]:
        """Prompt-alignment contrastive learning: global + local InfoNCE and prompt affinities."""
        glob = losses.info_nce(img["fused"], txt["fused"], tau)
        local = losses.info_nce(img["local"], txt["local"], tau)
        if prompts is not None:
            p_glob, p_local = prompts
            glob = glob + 0.5 * (losses.prompt_affinity_loss(img["fused"], p_glob, labels, a_tau)
                                 + losses.prompt_affinity_loss(txt["fused"], p_glob, labels, a_tau))
            local = local + 0.5 * (losses.prompt_affinity_loss(img["local"], p_local, labels, a_tau)
                                   + losses.prompt_affinity_loss(txt["local"], p_local, labels, a_tau))
        return {"pacl_global": w["pacl_global"] * glob, "pacl_local": w["pacl_local"] * local}
