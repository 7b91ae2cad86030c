"""Building blocks of MCPH (MICCAI 2024): caption-conditioned deep prompts, local token
aggregation, the ResMLP aligner, the fused-code memory, and tower runners that put the prompt
boundary at layer k.

Everything that shapes a code is per-sample (LayerNorm, masked attention within one sample,
masked pooling), so a code never depends on the rest of its batch. See docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.models.backbones import Backbone
from trainer.models.heads import HashHeads
from trainer.models.towers import TransformerBlock, masked_mean


# ---- which layers get prompts ------------------------------------------------------------------------
def prompt_start(n_layers: int, k_ref: int = 10, n_ref: int = 12) -> int:
    """0-based index of the first prompted layer: the paper prompts layers k..n with k = 10 of n = 12.

    Other depths are scaled: k = round(k_ref * n / n_ref), clamped to 1..n (1-based), so a
    6-layer tower is prompted in layers 5-6 and a 2-layer tower in layer 2.
    """
    if n_layers < 1:
        raise ValueError("a prompted tower needs at least one layer")
    k = min(max(round(k_ref * n_layers / n_ref), 1), n_layers)
    return k - 1


def source_layer(target_index: int, n_target: int, n_source: int) -> int:
    """Caption state feeding prompted layer `target_index` (0-based): layer j-1 of Eq. 1, rescaled.

    The state list holds the embedding output at 0 and layer i's output at i, so for towers of
    equal depth prompted layer j (1-based) reads state j-1 = target_index exactly.
    """
    return min(n_source, round(target_index * n_source / n_target))


# ---- caption tokens -> prompts --------------------------------------------------------------------------
def pool_slots(tokens: Tensor, mask: Tensor, n_slots: int) -> Tensor:
    """Adaptive average pooling of each sample's real tokens into `n_slots` contiguous slots.

    (B, L, D) + keep-mask (B, L) -> (B, n_slots, D). A caption shorter than `n_slots` tokens fills
    its empty slots with the mean of all its tokens. Padding never contributes.
    """
    m = mask.to(tokens.dtype)
    n = m.sum(dim=1, keepdim=True).clamp_min(1.0)
    rank = m.cumsum(dim=1) - 1.0
    slot = torch.floor(rank * n_slots / n).clamp(0, n_slots - 1).long()
    weights = F.one_hot(slot, n_slots).to(tokens.dtype) * m.unsqueeze(-1)  # (B, L, P)
    empty = weights.sum(dim=1, keepdim=True) == 0  # (B, 1, P)
    weights = torch.where(empty, m.unsqueeze(-1).expand_as(weights), weights)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
    return torch.einsum("blp,bld->bpd", weights, tokens)


class Bottleneck(nn.Module):
    """down -> ReLU -> up adapter (the textual adapter of MCPH Eq. 2)."""

    def __init__(self, in_dim: int, out_dim: int, reduction: int = 4, zero_init: bool = False) -> None:
        super().__init__()
        self.down = nn.Linear(in_dim, max(8, in_dim // reduction))
        self.up = nn.Linear(self.down.out_features, out_dim)
        if zero_init:  # starts as "no change" where it is added to an existing feature
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(F.relu(self.down(x)))


@dataclass
class CaptionStates:
    """A caption run through the text tower: every layer's hidden states and its global feature."""

    states: list[Tensor]  # n_layers + 1 entries (B, L, D): embeddings, then each layer's output
    mask: Tensor  # (B, L) bool keep-mask
    global_feature: Tensor  # (B, D_text_global): the caption's global token g^c


class CaptionPrompts(nn.Module):
    """Deep context prompts from caption tokens: prompts for layer j = adapter_j(pooled caption state j-1).

    `adapter` "linear" is the visual adapter of Eq. 1, "bottleneck" the textual adapter of Eq. 2.
    Samples without a caption (none given, or dropped in training) get a learned null prompt of
    the same layer, so the towers also work caption-free.
    """

    def __init__(self, sources: Sequence[int], in_dim: int, out_dim: int, n_prompts: int,
                 adapter: str = "linear", reduction: int = 4) -> None:
        super().__init__()
        if adapter not in ("linear", "bottleneck"):
            raise ValueError(f"unknown adapter {adapter!r}")
        self.sources = [int(s) for s in sources]
        self.n_prompts = n_prompts

        def make() -> nn.Module:
            return nn.Linear(in_dim, out_dim) if adapter == "linear" else Bottleneck(in_dim, out_dim, reduction)

        self.adapters = nn.ModuleList(make() for _ in self.sources)
        self.null = nn.Parameter(torch.randn(len(self.sources), n_prompts, out_dim) * 0.02)

    def forward(self, caption: CaptionStates | None, present: Tensor | None, batch_size: int) -> list[Tensor]:
        """One (B, P, D_out) prompt tensor per prompted layer; `present` (B,) bool marks real captions."""
        out = []
        for i, (src, adapter) in enumerate(zip(self.sources, self.adapters, strict=True)):
            null = self.null[i].unsqueeze(0).expand(batch_size, -1, -1)
            if caption is None or present is None or not bool(present.any()):
                out.append(null)
                continue
            prompt = adapter(pool_slots(caption.states[src], caption.mask, self.n_prompts))
            out.append(torch.where(present.view(-1, 1, 1), prompt, null.to(prompt.dtype)))
        return out


# ---- alignment, aggregation, memory ---------------------------------------------------------------------
class ResMLP(nn.Module):
    """x + MLP(LN(x)): the residual aligner of the global embeddings before NRCL (starts as identity)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class LocalTokenAggregation(nn.Module):
    """Top-m salient tokens -> two-layer transformer -> local hash codes f (MCPH Eq. 5).

    Saliency = cosine similarity of each (projected) token to the sample's mean token; the top m
    real tokens, led by an aggregation token, go through `depth` transformer blocks and the
    aggregation token's output is hashed (tanh, one layer per code length).
    """

    def __init__(self, in_dim: int, dim: int, bits: Sequence[int], top_m: int = 8, depth: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        self.top_m = top_m
        self.inp = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        self.agg = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.hash = HashHeads(dim, bits)

    def select(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor]:
        """(selected tokens (B, m, D), their keep-mask, the mean token (B, D))."""
        center = masked_mean(x, mask)
        score = F.cosine_similarity(x.float(), center.float().unsqueeze(1), dim=-1)
        if mask is not None:
            score = score.masked_fill(~mask, float("-inf"))
        idx = score.topk(min(self.top_m, x.shape[1]), dim=1).indices
        picked = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return picked, (None if mask is None else mask.gather(1, idx)), center

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> dict[int, Tensor]:
        x = self.inp(tokens)
        picked, picked_mask, center = self.select(x, mask)
        seq = torch.cat([self.agg.to(x.dtype) + center.unsqueeze(1), picked], dim=1)
        seq_mask = None
        if picked_mask is not None:
            seq_mask = torch.cat([torch.ones_like(picked_mask[:, :1]), picked_mask], dim=1)
        for block in self.blocks:
            seq = block(seq, seq_mask)
        return self.hash(self.norm(seq[:, 0]))


class CodeMemory:
    """Fused binary codes B (and labels) of the training items, indexed by their dataset position.

    Rows are written by `update` every step (the batch's fresh fused codes, detached) and read by
    the inter-modal loss; rows never written are left out. It lives outside the state dict: it is
    training state that a resumed run rebuilds within one epoch, and checkpoints stay the size of
    the model, whatever the size of the training set.
    """

    def __init__(self) -> None:
        self.codes: dict[int, Tensor] = {}
        self.labels: Tensor | None = None
        self.filled: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.filled is None else int(self.filled.sum())

    def _grow(self, size: int, device: torch.device, n_labels: int) -> None:
        if self.filled is not None and self.filled.shape[0] >= size and self.filled.device == device:
            return
        old = self.filled.shape[0] if self.filled is not None else 0
        size = max(size, 2 * old)

        def grown(t: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
            new = torch.zeros(shape, dtype=dtype, device=device)
            if t is not None:
                new[: t.shape[0]] = t.to(device)
            return new

        self.codes = {b: grown(c, (size, b), torch.float32) for b, c in self.codes.items()}
        self.labels = grown(self.labels, (size, n_labels), torch.float32)
        self.filled = grown(self.filled, (size,), torch.bool)

    def update(self, index: Tensor, codes: dict[int, Tensor], labels: Tensor) -> None:
        """Store the batch's fused codes (sign values) and labels at rows `index`."""
        self._grow(int(index.max()) + 1, labels.device, labels.shape[1])
        index = index.to(labels.device)
        for b, c in codes.items():
            if b not in self.codes:
                self.codes[b] = torch.zeros(self.filled.shape[0], b, device=labels.device)
            self.codes[b][index] = c.detach().float()
        self.labels[index] = labels.detach().float()
        self.filled[index] = True

    def view(self, bits: int) -> tuple[Tensor, Tensor]:
        """(codes (M, bits), labels (M, C)) of the M rows written so far."""
        if self.filled is None or bits not in self.codes:
            raise KeyError(f"no {bits}-bit codes in memory yet")
        return self.codes[bits][self.filled], self.labels[self.filled]


# ---- towers with the prompt boundary at layer k -------------------------------------------------------------
def _grad_for(modules: Sequence[nn.Module]):
    """Autograd only when something in `modules` trains (a frozen prefix builds no graph)."""
    trains = any(p.requires_grad for m in modules for p in m.parameters())
    return torch.set_grad_enabled(torch.is_grad_enabled() and trains)


def image_prefix(bb: Backbone, images: Tensor, start: int) -> Tensor:
    """Image tower up to (not including) layer `start`: the hidden state the first prompts join."""
    blocks = bb.image_blocks()
    with _grad_for([*bb.image_embed_modules(), *blocks[:start]]):
        return bb._image_run(bb._image_embed(images), blocks[:start], None)


def image_suffix(bb: Backbone, h: Tensor, start: int, prompts: Sequence[Tensor]) -> Tensor:
    """Image layers start..n with one prompt set each, then the tower's finish -> tokens (B, N, D)."""
    return bb._image_finish(bb._image_run(h, bb.image_blocks()[start:], list(prompts)))


def text_prompted(bb: Backbone, tok: dict[str, Tensor], start: int, prompts: Sequence[Tensor]) -> Tensor:
    """Text tower with prompts in layers start..n -> tokens (B, L, D) (prompt outputs dropped)."""
    blocks = bb.text_blocks()
    with _grad_for([*bb.text_embed_modules(), *blocks[:start]]):
        h, mask = bb._text_embed(tok)
        h = bb._text_run(h, mask, blocks[:start], None)
    return bb._text_finish(bb._text_run(h, mask, blocks[start:], list(prompts)), mask)


def caption_states(bb: Backbone, tok: dict[str, Tensor]) -> CaptionStates:
    """Run a caption through the (shared) text tower keeping every layer's hidden states."""
    blocks = bb.text_blocks()
    frozen = 0
    embed_trains = any(p.requires_grad for m in bb.text_embed_modules() for p in m.parameters())
    while not embed_trains and frozen < len(blocks) and not any(p.requires_grad for p in blocks[frozen].parameters()):
        frozen += 1
    with _grad_for([*bb.text_embed_modules(), *blocks[:frozen]]):
        h, mask = bb._text_embed(tok)
        states = [h]
        for block in blocks[:frozen]:
            h = bb._text_run(h, mask, [block], None)
            states.append(h)
    for block in blocks[frozen:]:
        h = bb._text_run(h, mask, [block], None)
        states.append(h)
    tokens = bb._text_finish(h, mask)
    return CaptionStates(states, mask, bb.text_pool(tokens, tok))
