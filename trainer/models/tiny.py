"""A tiny random backbone that trains in seconds on a CPU: for tests and smoke runs only."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from trainer.models.backbones import Backbone
from trainer.models.towers import Prompts, TransformerBlock, run_prompted

PAD_ID, CLS_ID = 0, 1


class WordHashTokenizer:
    """Lower-case words hashed (CRC32) into a fixed vocabulary: no vocabulary file to ship."""

    def __init__(self, vocab_size: int = 4096, max_length: int = 64) -> None:
        self.vocab_size = vocab_size
        self.max_length = max_length

    def ids(self, text: str) -> list[int]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        return [CLS_ID] + [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in words][: self.max_length - 1]

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        rows = [self.ids(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return {"input_ids": ids, "attention_mask": (ids != PAD_ID).long()}


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    # GroupNorm normalises within one sample, unlike BatchNorm.
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU())


class TinyBackbone(Backbone):
    """64 px CNN (tokens = last 8x8 feature map) + 2-layer word transformer, random weights."""

    spec = "tiny"
    image_size = 64

    def __init__(self, width: int = 64, vocab_size: int = 4096, max_length: int = 64) -> None:
        super().__init__()
        self.image_token_dim = self.image_global_dim = width
        self.text_token_dim = self.text_global_dim = width
        self.text_prompts_supported = True
        self.max_text_length = max_length
        self.tokenizer = WordHashTokenizer(vocab_size, max_length)
        self.stem = _conv_block(3, 32, 2)
        self.convs = nn.ModuleList([_conv_block(32, 48, 2), _conv_block(48, width, 2), _conv_block(width, width, 1)])
        self.img_norm = nn.LayerNorm(width)
        self.tok_emb = nn.Embedding(vocab_size, width, padding_idx=PAD_ID)
        self.pos_emb = nn.Parameter(torch.randn(1, max_length, width) * 0.02)
        self.layers = nn.ModuleList([TransformerBlock(width, 4, mlp_ratio=2.0) for _ in range(2)])
        self.txt_norm = nn.LayerNorm(width)
        self.freeze_except_top(-1)

    def image_blocks(self) -> list[nn.Module]:
        return list(self.convs)

    def text_blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def image_embed_modules(self) -> list[nn.Module]:
        return [self.stem]

    def text_embed_modules(self) -> list[nn.Module]:
        return [self.tok_emb]

    def image_head_modules(self) -> list[nn.Module]:
        return [self.img_norm]

    def text_head_modules(self) -> list[nn.Module]:
        return [self.txt_norm]

    def _image_embed(self, images: Tensor) -> Tensor:
        return self.stem(images)

    def _image_run(self, h: Tensor, blocks: Sequence[nn.Module], prompts: Prompts) -> Tensor:
        for b in blocks:
            h = b(h)
        return h

    def _image_finish(self, h: Tensor) -> Tensor:
        return self.img_norm(h.flatten(2).transpose(1, 2))

    def _text_embed(self, tok: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        ids = tok["input_ids"]
        return self.tok_emb(ids) + self.pos_emb[:, : ids.shape[1]], tok["attention_mask"].bool()

    def _text_run(self, h: Tensor, mask: Tensor, blocks: Sequence[nn.Module], prompts: Prompts) -> Tensor:
        return run_prompted(blocks, h, mask, prompts, lambda layer, x, m: layer(x, m))

    def _text_finish(self, h: Tensor, mask: Tensor) -> Tensor:
        return self.txt_norm(h)
