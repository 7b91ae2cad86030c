"""Per-modality views for the prompt-based methods (TriPAH, PromptHash): global, tokens, prompt text.

`ImageViews` gives an image's global embedding and its tokens with optional deep visual prompts
(in the backbone's own transformer top blocks for ViT towers, in a `TokenTower` for CNN towers).
`TextViews` gives a report's global embedding and tokens (pooled over windows for chunked long
reports) and encodes short prompt texts (metadata / context prompts) with the same tower.
Everything is per sample and per modality; the methods decide what to fuse.

The leak study's diagnostic option (`LEAK_OPTION`) lives here too: a TriPAH / PromptHash model
built with it computes IMAGE codes from the paired report, as the papers' public code does. The
report reaches `encode_image` only through the image meta key `PAIRED_REPORT_KEY`, which the data
loaders fill only for such a model; the app refuses to train or register one (`refuse_leak`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from trainer.config import ModelConfig, TrainConfig, method_loss_weights
from trainer.data.captions import PAIRED_REPORT_KEY
from trainer.data.long_text import chunk_tokens, gather_chunk_tokens, pool_chunks
from trainer.errors import MedHashError
from trainer.models.backbones import Backbone
from trainer.models.towers import TokenTower


def component_on(cfg: ModelConfig, name: str, defaults: dict[str, bool]) -> bool:
    """A method's own switch: the config's value when given, else the method's default."""
    return bool(cfg.components.get(name, defaults[name]))


def weight(cfg: ModelConfig, name: str, defaults: dict[str, float]) -> float:
    """The method's own weight `name` (its `defaults`), unless the config overrides it."""
    return method_loss_weights(cfg, defaults)[name]


def _heads(dim: int) -> int:
    return next(h for h in (4, 2, 1) if dim % h == 0)


class ImageViews(nn.Module):
    """Image -> (global (B, D), tokens (B, N, D)); deep visual prompts when `prompts` is on.

    ViT towers: the backbone's own pooling of its output tokens is the global view. CNN towers: the
    mean of the `TokenTower`'s output tokens ([CLS] included) is the global view, the feature-map
    tokens are the token view.
    """

    def __init__(self, backbone: Backbone, dim: int, prompts: bool, n_prompts: int = 4, tower_depth: int = 2) -> None:
        super().__init__()
        self.backbone = [backbone]  # not a submodule: the method owns the backbone
        n_top = len(backbone.image_blocks()) - backbone._image_split
        self.native = backbone.image_prompts_supported and n_top > 0
        if self.native:
            self.tok_proj = nn.Sequential(nn.LayerNorm(backbone.image_token_dim), nn.Linear(backbone.image_token_dim, dim))
            self.glob_proj = nn.Sequential(nn.LayerNorm(backbone.image_global_dim), nn.Linear(backbone.image_global_dim, dim))
            shape = (n_top, n_prompts, backbone.image_token_dim)
        else:
            self.tower = TokenTower(backbone.image_token_dim, dim, depth=tower_depth, heads=_heads(dim))
            shape = (tower_depth, n_prompts, dim)
        self.prompts = nn.Parameter(torch.randn(*shape) * 0.02) if prompts else None

    def forward(self, stem: Tensor) -> tuple[Tensor, Tensor]:
        """From the backbone's frozen image stem output (computed, or read from the feature cache)."""
        bb = self.backbone[0]
        prompts = list(self.prompts) if self.prompts is not None else None
        if self.native:
            tokens = bb.image_top(stem, prompts)
            return self.glob_proj(bb.image_pool(tokens)), self.tok_proj(tokens)
        out = self.tower(bb.image_top(stem), prompts=prompts)
        # The global view is the mean output token, not the [CLS]: the tower's [CLS] starts at zero
        # and learned far slower (the same finding made MCPH pool by mean, docs/methods.md MCPH).
        return out.mean(dim=1), out[:, 1:]


class TextViews(nn.Module):
    """Report -> (global (B, D), tokens (B, L, D), keep-mask (B, L)); short prompts -> tokens + mask."""

    def __init__(self, backbone: Backbone, dim: int, chunk_pool: str = "mean") -> None:
        super().__init__()
        self.backbone = [backbone]
        d_tok, d_glob = backbone.text_token_dim, backbone.text_global_dim
        self.tok_proj = nn.Sequential(nn.LayerNorm(d_tok), nn.Linear(d_tok, dim))
        self.glob_proj = nn.Sequential(nn.LayerNorm(d_glob), nn.Linear(d_glob, dim))
        self.chunk_score = nn.Linear(dim, 1) if chunk_pool == "attention" else None

    def _run(self, tok: dict[str, Tensor], stem: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        bb = self.backbone[0]
        tokens = bb.text_top(*stem) if stem is not None else bb.text_tokens(tok)
        return self.glob_proj(bb.text_pool(tokens, tok)), self.tok_proj(tokens), tok["attention_mask"].bool()

    def forward(self, tok: dict[str, Tensor], stem: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Report views; `stem` = the cached frozen text stem (hidden, keep-mask) of unchunked reports."""
        windows = chunk_tokens(tok)
        if windows is None:
            return self._run({"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}, stem)
        g, t, m = self._run(windows)
        owner, n = tok["chunk_owner"], tok["input_ids"].shape[0]
        scores = self.chunk_score(g) if self.chunk_score is not None else None
        tokens, mask = gather_chunk_tokens(t, m, owner, n)
        return pool_chunks(g, owner, n, scores), tokens, mask

    def prompt(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A short prompt text (already tokenized) through the same tower: (global, tokens, mask)."""
        return self._run({"input_ids": ids, "attention_mask": mask})


# ---- the leak study's diagnostic option ---------------------------------------------------------------
LEAK_OPTION = "leak_paired_report"


def leaks_paired_report(options: Mapping[str, Any] | None) -> bool:
    """True when a model's options (ModelConfig.options or a request's) ask for the leaky image codes."""
    return bool((options or {}).get(LEAK_OPTION, False))


def refuse_leak(options: Mapping[str, Any] | None, item: Any, error: type[MedHashError] = MedHashError) -> None:
    """`error` (a MedHashError) naming the option when `options` ask for it: such a model is never
    trained for, registered in or stored in a library (its image codes need the paired report, which
    a query or stored image does not have). The research path (trainer.experiment) does not call this."""
    if leaks_paired_report(options):
        raise error(item, f"option \"{LEAK_OPTION}\" is a diagnostic of the leak study (image codes computed "
                    "from the paired report); a model built with it cannot be used in a library")


def paired_report_texts(meta: Sequence[Mapping[str, Any] | None] | None, n: int) -> list[str]:
    """The paired report of each of `n` images from their meta (PAIRED_REPORT_KEY), for a model built
    with LEAK_OPTION; MedHashError naming the option when an image comes without it."""
    metas = list(meta) if meta is not None else []
    texts = [m.get(PAIRED_REPORT_KEY) if isinstance(m, Mapping) else None for m in metas]
    if len(texts) != n or any(not isinstance(t, str) for t in texts):
        raise MedHashError(LEAK_OPTION, "this diagnostic model encodes an image only together with its paired "
                           f"report (image meta key \"{PAIRED_REPORT_KEY}\", filled by the trainer's loaders)")
    return texts


def tokens_to(tokens: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A tokenizer's output moved to `device` (non-tensor entries kept as they are)."""
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in tokens.items()}


def param_groups(model: nn.Module, backbone: nn.Module, train_cfg: TrainConfig, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """AdamW groups: backbone vs heads (lr_scale: the engine multiplies its lr by it), and no weight
    decay on biases / norms (1-D parameters)."""
    in_backbone = {id(p) for p in backbone.parameters()}
    groups: list[dict[str, Any]] = []
    for scale, own in ((backbone_lr_scale, True), (1.0, False)):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in in_backbone) == own]
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "weight_decay": train_cfg.weight_decay if decay else 0.0,
                               "lr": train_cfg.lr * scale, "lr_scale": scale,
                               "name": f"{'backbone' if own else 'heads'}{'' if decay else '_no_decay'}"})
    return groups
