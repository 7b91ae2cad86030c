"""Prompt-ready transformer pieces shared by backbones and methods.

Deep prompts (VPT-deep style, used by MCPH / TriPAH / PromptHash) enter transformer layers k..n:
before layer i the layer's prompt tokens are inserted after the first `keep_front` tokens, and
after the layer their outputs are dropped, so the sequence length seen outside is unchanged.
A CNN tower has no layers to prompt; `TokenTower` puts a small transformer on its feature-map
tokens where prompts can enter (DESIGN.md "Prompt injection").

Everything here is per-sample: attention only mixes tokens of the same sample, norms are
LayerNorms, so a sample's output never depends on the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Prompts = Sequence[Tensor | None] | None  # one entry per prompted layer: (P, D) or (B, P, D)


def insert_prompts(x: Tensor, mask: Tensor | None, prompt: Tensor, keep_front: int = 1) -> tuple[Tensor, Tensor | None]:
    """Insert `prompt` ((P, D) shared or (B, P, D) per sample) after `keep_front` tokens of x (B, L, D)."""
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(x.shape[0], -1, -1)
    prompt = prompt.to(dtype=x.dtype)
    x = torch.cat([x[:, :keep_front], prompt, x[:, keep_front:]], dim=1)
    if mask is not None:
        ones = torch.ones(mask.shape[0], prompt.shape[1], dtype=mask.dtype, device=mask.device)
        mask = torch.cat([mask[:, :keep_front], ones, mask[:, keep_front:]], dim=1)
    return x, mask


def strip_prompts(x: Tensor, n_prompts: int, keep_front: int = 1) -> Tensor:
    """Drop the `n_prompts` prompt outputs that `insert_prompts` put after `keep_front` tokens."""
    return torch.cat([x[:, :keep_front], x[:, keep_front + n_prompts :]], dim=1)


def run_prompted(
    layers: Sequence[nn.Module],
    x: Tensor,
    mask: Tensor | None,
    prompts: Prompts,
    call: Callable[[nn.Module, Tensor, Tensor | None], Tensor],
    keep_front: int = 1,
) -> Tensor:
    """Run `layers` in order; layer i gets `prompts[i]` (if any) inserted, then stripped again.

    `call(layer, x, mask)` adapts each library's layer signature; `mask` is a (B, L) bool keep-mask.
    """
    if prompts is not None and len(prompts) > len(layers):
        raise ValueError(f"{len(prompts)} prompt sets for {len(layers)} layers")
    for i, layer in enumerate(layers):
        prompt = prompts[i] if prompts is not None and i < len(prompts) else None
        if prompt is None:
            x = call(layer, x, mask)
            continue
        xp, mp = insert_prompts(x, mask, prompt, keep_front)
        x = strip_prompts(call(layer, xp, mp), prompt.shape[-2], keep_front)
    return x


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block with a key-padding mask (per-sample by construction)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.dropout = dropout

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, L, D); mask: (B, L) bool, True = real token (padding is never attended to)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :].bool()
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        x = x + self.proj(out.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


def call_block(layer: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    return layer(x, mask)


class TokenTower(nn.Module):
    """Small trainable transformer over backbone tokens, with a learnable [CLS] and deep prompts.

    For CNN towers (EfficientNet feature map as (B, H*W, C) tokens) this is where prompts enter.
    Output tokens are (B, 1 + N, dim); token 0 is the [CLS] summary.
    """

    def __init__(self, in_dim: int, dim: int = 256, depth: int = 2, heads: int = 4, max_tokens: int = 1024) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, max_tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    def forward(self, tokens: Tensor, mask: Tensor | None = None, prompts: Prompts = None) -> Tensor:
        x = self.inp(tokens)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        if x.shape[1] > self.pos.shape[1]:
            raise ValueError(f"{x.shape[1] - 1} tokens exceed the tower's {self.pos.shape[1] - 1}")
        x = x + self.pos[:, : x.shape[1]]
        if mask is not None:
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return self.norm(run_prompted(self.blocks, x, mask, prompts, call_block))


def masked_mean(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over real tokens only (B, L, D) -> (B, D)."""
    if mask is None:
        return tokens.mean(dim=1)
    m = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
