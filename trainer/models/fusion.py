"""Token fusion blocks: TriPAH's tri-view fusion Psi (Eqs. 3-4) and PromptHash's AGSF.

Both mix the views of ONE sample: the state-space scan runs along that sample's tokens, the
attention reads that sample's keys (key-padding masks keep padding out), GRN normalises over that
sample's tokens. Which views go in is the caller's business; the hashing methods pass views of
one modality for stored/query codes and use cross-modal views for training targets only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.models.ssm import MambaBlock
from trainer.models.towers import masked_mean


def _heads(dim: int, wanted: int = 4) -> int:
    return next(h for h in (wanted, 2, 1) if dim % h == 0)


class CrossAttention(nn.Module):
    """Multi-head attention of queries (B, Lq, D) over keys/values (B, Lk, D) with a key keep-mask."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = _heads(dim, heads)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: Tensor, keys: Tensor, key_mask: Tensor | None = None) -> Tensor:
        b, lq, d = query.shape
        h = self.heads
        q = self.q(query).view(b, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(keys).view(b, keys.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).reshape(b, lq, d))


class SSMCrossFusion(nn.Module):
    """Psi(A, B) = Attn(Phi_ssm(Z_A) + Z_A, Z_B) + (Phi_ssm(Z_A) + Z_A)   (TriPAH Eq. 3).

    Pre-LayerNorms are added before the scan and the attention (standard for residual stacks).
    """

    def __init__(self, dim: int, heads: int = 4, d_state: int = 16, backend: str = "auto") -> None:
        super().__init__()
        self.norm_a = nn.LayerNorm(dim)
        self.ssm = MambaBlock(dim, d_state=d_state, backend=backend)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)

    def forward(self, za: Tensor, za_mask: Tensor | None, zb: Tensor, zb_mask: Tensor | None) -> Tensor:
        s = self.ssm(self.norm_a(za), za_mask) + za
        return self.attn(self.norm_q(s), self.norm_kv(zb), zb_mask) + s


class GRN(nn.Module):
    """Global response normalisation over one sample's tokens (ConvNeXt V2, Woo et al. CVPR 2023).

    G_c = ||X_:,c||_2 over tokens, N_c = G_c / mean_c G_c,  out = gamma * (X * N) + beta + X.
    gamma and beta start at zero, so the gate opens as it learns (TriPAH's learnable gamma, Eq. 4).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        xm = x if mask is None else x * mask.to(x.dtype).unsqueeze(-1)
        g = xm.float().pow(2).sum(dim=1, keepdim=True).sqrt()  # (B, 1, D)
        n = (g / (g.mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype)
        return self.gamma * (x * n) + self.beta + x


def _cat_views(views: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, Tensor]:
    """Concatenate (tokens, mask) views along the token axis; a missing mask means all real."""
    tokens = torch.cat([t for t, _ in views], dim=1)
    masks = [m.bool() if m is not None else torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)
             for t, m in views]
    return tokens, torch.cat(masks, dim=1)


class TriViewFusion(nn.Module):
    """Tri-view fusion of one sample's global, token and prompt views (TriPAH Eqs. 3-4, our reading).

        Z   = Psi(Z_tok, [z_glob; Z_prompt])      tokens read the global and prompt views
        Z'  = GRN_gamma(Z)                        per-sample response gating
        out = z_glob + W . masked_mean(Z')        fused embedding (residual on the global view)

    Returns (fused (B, D), local (B, D) = the pooled token view, used by the local alignment loss).
    """

    def __init__(self, dim: int, heads: int = 4, d_state: int = 16, backend: str = "auto") -> None:
        super().__init__()
        self.psi = SSMCrossFusion(dim, heads, d_state, backend)
        self.grn = GRN(dim)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def forward(self, glob: Tensor, tokens: Tensor, mask: Tensor | None,
                prompt: Tensor | None = None, prompt_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        views = [(glob.unsqueeze(1), None)] + ([(prompt, prompt_mask)] if prompt is not None else [])
        keys, key_mask = _cat_views(views)
        z = self.grn(self.psi(tokens, mask, keys, key_mask), mask)
        local = masked_mean(z, None if mask is None else mask.bool())
        return glob + self.out(local), local


class AGSF(nn.Module):
    """Adaptive gated selection fusion (PromptHash, CVPR 2025, Sec. 3.3; our reading).

        S = Z_tok + Mamba(Z_tok)                  state-space selection along the tokens
        A = Attn(S, [z_glob; Z_prompt])           transformer step: tokens read global + prompt views
        g = sigmoid(W_g [S; A])                   per-token, per-channel gate
        F = g * A + (1 - g) * S                   keeps what the prompt view supports, drops the rest
        w = softmax_t(w_s . F_t)  (masked)        token selection weights
        out = z_glob + W . sum_t w_t F_t

    Returns (fused (B, D), local (B, D)).
    """

    def __init__(self, dim: int, heads: int = 4, d_state: int = 16, backend: str = "auto") -> None:
        super().__init__()
        self.norm_s = nn.LayerNorm(dim)
        self.ssm = MambaBlock(dim, d_state=d_state, backend=backend)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.gate = nn.Linear(2 * dim, dim)
        self.select = nn.Linear(dim, 1)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def forward(self, glob: Tensor, tokens: Tensor, mask: Tensor | None,
                prompt: Tensor | None = None, prompt_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        views = [(glob.unsqueeze(1), None)] + ([(prompt, prompt_mask)] if prompt is not None else [])
        keys, key_mask = _cat_views(views)
        s = tokens + self.ssm(self.norm_s(tokens), mask)
        a = self.attn(self.norm_q(s), self.norm_kv(keys), key_mask)
        g = torch.sigmoid(self.gate(torch.cat([s, a], dim=-1)))
        f = g * a + (1 - g) * s
        scores = self.select(f).squeeze(-1).float()
        if mask is not None:
            scores = scores.masked_fill(~mask.bool(), float("-inf"))
        w = torch.softmax(scores, dim=1).to(f.dtype)
        local = (w.unsqueeze(-1) * f).sum(dim=1)
        return glob + self.out(local), local


def cross_modal_teacher(fuse_img: nn.Module, fuse_txt: nn.Module, img: tuple[Tensor, Tensor, Tensor | None],
                        txt: tuple[Tensor, Tensor, Tensor | None]) -> Tensor:
    """Training-only fused view of a pair: each modality's tokens read the other's global + tokens.

    img / txt are (global (B, D), tokens (B, L, D), mask). The result mixes the two modalities of
    the SAME pair (row i with row i only); it shapes losses and is never a stored or query code.
    """
    (gi, ti, mi), (gt, tt, mt) = img, txt
    fi, _ = fuse_img(gi, ti, mi, tt, mt)
    ft, _ = fuse_txt(gt, tt, mt, ti, mi)
    return 0.5 * (fi + ft)
