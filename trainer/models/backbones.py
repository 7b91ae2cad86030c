"""Image/text backbones behind one interface, and `build_backbone(spec)`.

Every backbone splits each tower's forward into a frozen *stem* and a trainable *top* (the last
`n` blocks plus the tower's final norm/head) so that frozen features can later be cached and so
that prompts can enter the top layers. Shapes:

    image_tokens(images) -> (B, N, D_img_tok)     text_tokens(tok) -> (B, L, D_txt_tok)
    image_global(images) -> (B, D_img)            text_global(tok) -> (B, D_txt)

`tok` is the dict returned by `tokenize(texts)` ("input_ids", "attention_mask"). BatchNorm layers
are kept in eval mode even while training, so nothing in a backbone mixes samples of a batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from trainer.data.transforms import eval_transform, train_transform
from trainer.models.towers import Prompts, masked_mean

Tokenizer = Callable[[Sequence[str]], dict[str, Tensor]]


class Backbone(nn.Module, ABC):
    """Two towers with a stem/top split; subclasses provide the per-library pieces."""

    spec: str = ""
    image_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_token_dim: int
    text_token_dim: int
    image_global_dim: int
    text_global_dim: int
    image_prompts_supported = False
    text_prompts_supported = False
    tokenizer: Tokenizer
    max_text_length: int

    def __init__(self) -> None:
        super().__init__()
        self._image_split = 0  # index of the first trainable image block
        self._text_split = 0

    # ---- pieces each backbone provides -------------------------------------------------------
    @abstractmethod
    def image_blocks(self) -> list[nn.Module]: ...

    @abstractmethod
    def text_blocks(self) -> list[nn.Module]: ...

    @abstractmethod
    def image_head_modules(self) -> list[nn.Module]:
        """Modules after the last image block (trainable whenever any block is)."""

    @abstractmethod
    def text_head_modules(self) -> list[nn.Module]: ...

    @abstractmethod
    def _image_embed(self, images: Tensor) -> Tensor: ...

    @abstractmethod
    def _image_run(self, h: Tensor, blocks: Sequence[nn.Module], prompts: Prompts) -> Tensor: ...

    @abstractmethod
    def _image_finish(self, h: Tensor) -> Tensor:
        """Last block output -> tokens (B, N, D)."""

    @abstractmethod
    def _text_embed(self, tok: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Token ids -> (hidden (B, L, D), keep-mask (B, L) bool)."""

    @abstractmethod
    def _text_run(self, h: Tensor, mask: Tensor, blocks: Sequence[nn.Module], prompts: Prompts) -> Tensor: ...

    @abstractmethod
    def _text_finish(self, h: Tensor, mask: Tensor) -> Tensor: ...

    def image_pool(self, tokens: Tensor) -> Tensor:
        """Image tokens -> global feature; average pooling unless the tower has its own."""
        return tokens.mean(dim=1)

    def text_pool(self, tokens: Tensor, tok: dict[str, Tensor]) -> Tensor:
        return masked_mean(tokens, tok["attention_mask"].bool())

    # ---- public interface ---------------------------------------------------------------------
    def preprocess(self, img: Image.Image) -> Tensor:
        """Deterministic eval transform: PIL image -> (3, S, S) float tensor."""
        return self.eval_transform(img)

    @cached_property
    def eval_transform(self) -> Callable[[Image.Image], Tensor]:
        """Picklable transform (DataLoader workers get it, not the model)."""
        return eval_transform(self.image_size, self.mean, self.std)

    @cached_property
    def train_transform(self) -> Callable[[Image.Image], Tensor]:
        return train_transform(self.image_size, self.mean, self.std)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Texts -> {"input_ids": (B, L) long, "attention_mask": (B, L) long}, padded to the batch."""
        return self.tokenizer(list(texts))

    def image_stem(self, images: Tensor) -> Tensor:
        """Frozen part of the image tower (no autograd graph when it has nothing to train)."""
        blocks = self.image_blocks()[: self._image_split]
        with torch.set_grad_enabled(torch.is_grad_enabled() and _has_trainable(self._image_stem_modules())):
            return self._image_run(self._image_embed(images), blocks, None)

    def image_top(self, h: Tensor, prompts: Prompts = None) -> Tensor:
        """Trainable top of the image tower: stem output -> tokens (B, N, D)."""
        if prompts is not None and not self.image_prompts_supported:
            raise NotImplementedError(f"{self.spec} image tower is a CNN: put a TokenTower on its tokens")
        return self._image_finish(self._image_run(h, self.image_blocks()[self._image_split :], prompts))

    def image_tokens(self, images: Tensor, prompts: Prompts = None) -> Tensor:
        return self.image_top(self.image_stem(images), prompts)

    def image_global(self, images: Tensor) -> Tensor:
        return self.image_pool(self.image_tokens(images))

    def text_stem(self, tok: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Frozen part of the text tower -> (hidden, keep-mask)."""
        blocks = self.text_blocks()[: self._text_split]
        with torch.set_grad_enabled(torch.is_grad_enabled() and _has_trainable(self._text_stem_modules())):
            h, mask = self._text_embed(tok)
            return self._text_run(h, mask, blocks, None), mask

    def text_top(self, h: Tensor, mask: Tensor, prompts: Prompts = None) -> Tensor:
        if prompts is not None and not self.text_prompts_supported:
            raise NotImplementedError(f"{self.spec} text tower does not take prompts yet")
        return self._text_finish(self._text_run(h, mask, self.text_blocks()[self._text_split :], prompts), mask)

    def text_tokens(self, tok: dict[str, Tensor], prompts: Prompts = None) -> Tensor:
        return self.text_top(*self.text_stem(tok), prompts)

    def text_global(self, tok: dict[str, Tensor]) -> Tensor:
        return self.text_pool(self.text_tokens(tok), tok)

    def freeze_except_top(self, n_blocks: int) -> None:
        """Freeze everything but the last `n_blocks` blocks (+ final norm/head) of each tower.

        n_blocks < 0 trains everything; 0 freezes both towers entirely.
        """
        for p in self.parameters():
            p.requires_grad = n_blocks < 0
        img, txt = self.image_blocks(), self.text_blocks()
        self._image_split = 0 if n_blocks < 0 else max(0, len(img) - n_blocks)
        self._text_split = 0 if n_blocks < 0 else max(0, len(txt) - n_blocks)
        if n_blocks > 0:
            for m in [*img[self._image_split :], *self.image_head_modules()]:
                m.requires_grad_(True)
            for m in [*txt[self._text_split :], *self.text_head_modules()]:
                m.requires_grad_(True)

    def _image_stem_modules(self) -> list[nn.Module]:
        return [m for m in self.image_embed_modules()] + self.image_blocks()[: self._image_split]

    def _text_stem_modules(self) -> list[nn.Module]:
        return [m for m in self.text_embed_modules()] + self.text_blocks()[: self._text_split]

    def image_embed_modules(self) -> list[nn.Module]:
        """Modules before the first image block (patch/stem convolution)."""
        return []

    def text_embed_modules(self) -> list[nn.Module]:
        return []

    def train(self, mode: bool = True) -> Backbone:
        """Train mode, but BatchNorm keeps its running statistics (no batch mixing, stable small batches)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def preprocessing_info(self) -> dict[str, Any]:
        """What a checkpoint must record to reproduce the model input."""
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": "letterbox-bicubic",
            "max_text_length": self.max_text_length,
        }


def _has_trainable(modules: Sequence[nn.Module]) -> bool:
    return any(p.requires_grad for m in modules for p in m.parameters())


def build_backbone(spec: str, *, pretrained: bool = True, weights_path: str | None = None,
                   lite: bool = False) -> Backbone:
    """"embedded" (EfficientNet-Lite0 + MiniLM-L6, offline), "tiny" (random, for tests),
    or "open_clip:<arch>" (weights from `weights_path`; pretrained=False gives random weights).
    `lite` (with pretrained=False): the embedded towers in plain PyTorch, to load a checkpoint into."""
    if spec == "tiny":
        from trainer.models.tiny import TinyBackbone

        return TinyBackbone()
    if spec == "embedded":
        from trainer.models.embedded import EmbeddedBackbone

        return EmbeddedBackbone(pretrained=pretrained, lite=lite)
    if spec.startswith("open_clip:"):
        from trainer.models.openclip_arch import OpenClipBackbone

        return OpenClipBackbone(spec.split(":", 1)[1], pretrained=pretrained, weights_path=weights_path)
    raise ValueError(f"unknown backbone {spec!r}: use 'embedded', 'tiny' or 'open_clip:<arch>'")
