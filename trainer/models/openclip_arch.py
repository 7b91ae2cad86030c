"""`open_clip:<arch>` backbones (e.g. ViT-B-16) for the papers' setting, weights from a local file.

Supports open_clip's own VisionTransformer + TextTransformer towers (the CLIP family). Towers from
timm/HF (e.g. BiomedCLIP) are not wired yet. Weights are read from a local `.safetensors` file (or a
`.pt/.bin` state dict with `torch.load(weights_only=True)`); nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from trainer.errors import MedHashError
from trainer.models.backbones import Backbone
from trainer.models.towers import Prompts, run_prompted


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise MedHashError(path, "open_clip weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


class _Tokenizer:
    """Picklable wrapper: open_clip tokenizer -> ids + mask (pad id 0), `max_length` tokens per text
    (the model's context length, or a shorter window: ModelConfig.text_window)."""

    def __init__(self, arch: str, max_length: int) -> None:
        import open_clip

        self._tok = open_clip.get_tokenizer(arch)
        self.max_length = max_length

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        ids = self._tok(list(texts), context_length=self.max_length)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}


class OpenClipBackbone(Backbone):
    """CLIP ViT image tower (tokens incl. [CLS]) + CLIP causal text tower; globals are CLIP embeddings."""

    image_prompts_supported = True

    def __init__(self, arch: str, *, pretrained: bool = True, weights_path: str | None = None) -> None:
        super().__init__()
        import open_clip
        from open_clip.transformer import VisionTransformer

        if pretrained and not weights_path:
            raise MedHashError(arch, "open_clip backbones need a local weights file (weights_path)")
        self.spec = f"open_clip:{arch}"
        self.clip = open_clip.create_model(arch, pretrained=None)
        if not isinstance(self.clip.visual, VisionTransformer) or not hasattr(self.clip, "token_embedding"):
            raise MedHashError(arch, "only CLIP-style ViT + text transformer architectures are supported")
        if pretrained:
            self.clip.load_state_dict(_strip_prefix(_read_state_dict(Path(weights_path))), strict=True)
        self.clip.logit_scale.requires_grad_(False)
        visual = self.clip.visual
        size = visual.image_size
        self.image_size = size[0] if isinstance(size, tuple) else int(size)
        self.mean, self.std = tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD)
        self.image_token_dim = visual.transformer.width
        self.text_token_dim = self.clip.transformer.width
        self.image_global_dim = self.text_global_dim = self.clip.text_projection.shape[1]
        self.max_text_length = self.clip.context_length
        self.tokenizer = _Tokenizer(arch, self.max_text_length)
        self.freeze_except_top(2)

    def image_blocks(self) -> list[nn.Module]:
        return list(self.clip.visual.transformer.resblocks)

    def text_blocks(self) -> list[nn.Module]:
        return list(self.clip.transformer.resblocks)

    def image_embed_modules(self) -> list[nn.Module]:
        v = self.clip.visual
        return [v.conv1, v.ln_pre]

    def text_embed_modules(self) -> list[nn.Module]:
        return [self.clip.token_embedding]

    def image_head_modules(self) -> list[nn.Module]:
        return [self.clip.visual.ln_post]

    def text_head_modules(self) -> list[nn.Module]:
        return [self.clip.ln_final]

    def freeze_except_top(self, n_blocks: int) -> None:
        super().freeze_except_top(n_blocks)
        if n_blocks > 0:  # projections are bare Parameters, not modules
            self.clip.visual.proj.requires_grad_(True)
            self.clip.text_projection.requires_grad_(True)

    def _image_embed(self, images: Tensor) -> Tensor:
        return self.clip.visual._embeds(images)

    def _image_run(self, h: Tensor, blocks: Sequence[nn.Module], prompts: Prompts) -> Tensor:
        return run_prompted(blocks, h, None, prompts, lambda layer, x, m: layer(x))

    def _image_finish(self, h: Tensor) -> Tensor:
        return self.clip.visual.ln_post(h)

    def image_pool(self, tokens: Tensor) -> Tensor:
        return tokens[:, 0] @ self.clip.visual.proj

    def _text_embed(self, tok: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        ids = tok["input_ids"]
        h = self.clip.token_embedding(ids) + self.clip.positional_embedding[: ids.shape[1]]
        return h, tok["attention_mask"].bool()

    def _text_run(self, h: Tensor, mask: Tensor, blocks: Sequence[nn.Module], prompts: Prompts) -> Tensor:
        n = h.shape[1]
        causal = torch.full((n, n), float("-inf"), device=h.device, dtype=h.dtype).triu_(1)
        for b in blocks:  # causal: padding after EOT never reaches the EOT token
            h = b(h, attn_mask=causal)
        return h

    def _text_finish(self, h: Tensor, mask: Tensor) -> Tensor:
        return self.clip.ln_final(h)

    def text_pool(self, tokens: Tensor, tok: dict[str, Tensor]) -> Tensor:
        eot = tok["input_ids"].argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), eot] @ self.clip.text_projection
