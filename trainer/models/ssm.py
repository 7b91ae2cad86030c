"""Selective state-space scan (Mamba, Gu & Dao 2023) and the Mamba block TriPAH / PromptHash fuse with.

The scan runs over the tokens of ONE sample: the recurrence is along the sequence axis only, so a
sample's output never depends on the rest of the batch. Two implementations with one signature
(the signature of mamba-ssm's `selective_scan_fn`):

- `selective_scan_torch`: pure PyTorch, runs anywhere (CPU tests, GPUs without mamba-ssm);
- mamba-ssm's fused CUDA kernel, used by `selective_scan(..., backend="auto")` when the package
  is installed and the tensors are on a GPU (tests/test_ssm.py checks the two agree).

Discretisation (zero-order hold for A, Euler for B, as in Mamba):
    dA_t = exp(delta_t * A),   dBu_t = delta_t * B_t * u_t
    h_t = dA_t * h_{t-1} + dBu_t,   y_t = C_t . h_t + D * u_t,   y_t *= silu(z_t)
with delta = softplus(delta + delta_bias) when `delta_softplus`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # optional fused kernel (pip install mamba-ssm; needs CUDA)
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _kernel_scan
except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA build that fails at import
    _kernel_scan = None


def kernel_available() -> bool:
    """True when mamba-ssm's CUDA selective-scan kernel can be used on this machine."""
    return _kernel_scan is not None and torch.cuda.is_available()


def _expand_bc(m: Tensor, d: int) -> Tensor:
    """B or C as (b, n, l) or grouped (b, g, n, l) -> (b, d, n, l)."""
    if m.dim() == 3:
        return m.unsqueeze(1)
    return m.repeat_interleave(d // m.shape[1], dim=1)


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None,
                         delta_softplus: bool = False) -> Tensor:
    """Selective scan in PyTorch. u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D: (d,).

    Sequential over l, vectorised over batch, channels and state; float32 internally. Returns (b, d, l).
    """
    dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    d = u.shape[1]
    Bx, Cx = _expand_bc(B.float(), d), _expand_bc(C.float(), d)  # (b, d|1, n, l)
    dA = torch.exp(delta.unsqueeze(2) * A.float()[None, :, :, None])  # (b, d, n, l)
    dBu = (delta * u).unsqueeze(2) * Bx  # (b, d, n, l)
    h = u.new_zeros(u.shape[0], d, A.shape[1])
    ys = []
    # unbind once: indexing [..., t] in the loop would make the backward pass O(L^2) in memory traffic
    for a_t, bu_t, c_t in zip(dA.unbind(-1), dBu.unbind(-1), Cx.unbind(-1), strict=True):
        h = a_t * h + bu_t
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   backend: str = "auto") -> Tensor:
    """Dispatch: backend "torch", "kernel" (mamba-ssm, CUDA) or "auto" (kernel when usable)."""
    use_kernel = backend == "kernel" or (backend == "auto" and _kernel_scan is not None and u.is_cuda)
    if backend not in ("auto", "torch", "kernel"):
        raise ValueError(f"unknown selective-scan backend {backend!r}")
    if use_kernel:
        if _kernel_scan is None:
            raise RuntimeError("mamba-ssm is not installed: use backend 'torch'")
        args = [t.contiguous() if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias)]
        return _kernel_scan(*args, delta_softplus=delta_softplus)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


class MambaBlock(nn.Module):
    """Phi_ssm: the Mamba mixer (in-projection, causal depthwise conv, selective scan, gate, out-projection).

    Input (B, L, D) with an optional keep-mask (B, L); padding must be at the end of a sequence
    (it is, for every tokenizer here), and since both the conv and the scan are causal, real tokens
    never see padding. Padded positions are zeroed on the way in and out.
    """

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, d_conv: int = 4, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 0.1, backend: str = "auto") -> None:
        super().__init__()
        inner = expand * dim
        self.inner, self.d_state, self.backend = inner, d_state, backend
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        # S4D-real initialisation of A and Mamba's log-uniform initial step sizes.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(inner))
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp_min(1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        length = x.shape[1]
        keep = None if mask is None else mask.to(x.dtype).unsqueeze(-1)
        if keep is not None:
            x = x * keep
        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, inner) each
        xs = F.silu(self.conv(xs.transpose(1, 2))[..., :length])  # causal: trim the right padding
        dt, b, c = self.x_proj(xs.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # (B, inner, L); bias goes in as delta_bias
        y = selective_scan(xs, delta, -torch.exp(self.A_log.float()), b.transpose(1, 2), c.transpose(1, 2),
                           self.D.float(), z.transpose(1, 2), self.dt_proj.bias.float(), delta_softplus=True,
                           backend=self.backend)
        out = self.out_proj(y.transpose(1, 2).to(x.dtype))
        return out if keep is None else out * keep
