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
from typing import Any

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


class _SelectiveScan(torch.autograd.Function):
    """The scan proper, time-major, as one autograd node with a hand-written backward.

    Forward: dA_t = exp(dt_t A), h_t = dA_t * h_{t-1} + (dt_t u_t) B_t, y_t = C_t . h_t.
    Backward (the adjoint recurrence): g_t = dL/dy_t C_t + dA_{t+1} * g_{t+1}; then
    dL/d(dt_t u_t) = g_t . B_t, dL/dB_t = sum_d g_t (dt_t u_t), dL/dC_t = sum_d h_t dL/dy_t and
    dL/d(dt_t A) = g_t * h_{t-1} * dA_t. Why by hand: autograd of a Python loop allocates fresh
    (b, d, n) tensors per token and keeps a dozen full (l, b, d, n) temporaries; here each pass
    writes its recurrence into one buffer allocated once. On CPU that is about 3x faster for the
    same arithmetic (benchmarks/results/ssm_scan.md).
    Shapes: dt, u_dt (l, b, d); A (d, n); B, C (l, b, g, n) with g groups (1 = shared by all d).
    """

    @staticmethod
    def forward(ctx: Any, dt: Tensor, u_dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
        length, b, d = dt.shape
        g, n = B.shape[2], B.shape[3]
        dA = torch.mul(dt.unsqueeze(-1), A).exp_()  # (l, b, d, n)
        h = torch.empty_like(dA)
        hv, uv, bv = h.view(length, b, g, d // g, n), u_dt.view(length, b, g, d // g, 1), B.unsqueeze(3)
        torch.mul(uv[0], bv[0], out=hv[0])
        for t in range(1, length):
            torch.mul(dA[t], h[t - 1], out=h[t])
            hv[t].addcmul_(uv[t], bv[t])
        ctx.save_for_backward(dt, u_dt, A, B, C, dA, h)
        return (hv * C.unsqueeze(3)).sum(-1).view(length, b, d)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor, ...]:
        dt, u_dt, A, B, C, dA, h = ctx.saved_tensors
        length, b, d = dt.shape
        g, n = B.shape[2], B.shape[3]
        gyv = grad_y.contiguous().view(length, b, g, d // g, 1)
        hv, cv = h.view(length, b, g, d // g, n), C.unsqueeze(3)
        grad_c = (hv * gyv).sum(3)
        gh = torch.empty_like(h)
        ghv = gh.view(length, b, g, d // g, n)
        torch.mul(gyv[-1], cv[-1], out=ghv[-1])
        for t in range(length - 2, -1, -1):
            torch.mul(dA[t + 1], gh[t + 1], out=gh[t])
            ghv[t].addcmul_(gyv[t], cv[t])
        grad_udt = (ghv * B.unsqueeze(3)).sum(-1).view(length, b, d)
        grad_b = (ghv * u_dt.view(length, b, g, d // g, 1)).sum(3)
        gx = gh  # reused in place: dL/d(dt A) = g_t * h_{t-1} * dA_t (h_{-1} = 0)
        gx[1:].mul_(h[:-1])
        gx[0].zero_()
        gx.mul_(dA)
        grad_a = (gx * dt.unsqueeze(-1)).sum((0, 1))
        grad_dt = gx.mul_(A).sum(-1)
        return grad_dt, grad_udt, grad_a, grad_b, grad_c


_SCAN_BUFFER_BYTES = 8 << 20


def _batch_chunk(length: int, batch: int, d: int, n: int, itemsize: int, on_cpu: bool = True) -> int:
    """Samples per `_SelectiveScan` call: on CPU so that each (l, b, d, n) buffer stays under 8 MiB,
    elsewhere the whole batch.

    Why: glibc serves blocks above its mmap threshold (at most 32 MiB) with fresh mmaps that are
    page-faulted in on every call; smaller blocks are reused from the heap. Samples are independent,
    so splitting the batch changes nothing but speed. A GPU's caching allocator has no such cost,
    and there every split multiplies the per-token kernel launches that bound the scan (at batch 128
    and 85 tokens the split made it 24x slower on an H100, benchmarks/results/ssm_kernel.md).
    """
    if not on_cpu:
        return batch
    return max(1, min(batch, _SCAN_BUFFER_BYTES // max(1, length * d * n * itemsize)))


def _time_major_bc(m: Tensor) -> Tensor:
    """B or C as (b, n, l) or grouped (b, g, n, l) -> (l, b, g, n), g = 1 when shared."""
    return (m.unsqueeze(1) if m.dim() == 3 else m).permute(3, 0, 1, 2).contiguous()


def selective_scan_torch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None,
                         delta_softplus: bool = False) -> Tensor:
    """Selective scan in PyTorch. u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l); D: (d,).

    Sequential over l (`_SelectiveScan`), vectorised over batch, channels and state; float32
    internally (float64 stays float64, so gradcheck can check the backward). Returns (b, d, l).
    """
    dtype = u.dtype
    work = torch.promote_types(dtype, torch.float32)
    u, delta = u.to(work), delta.to(work)
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dt, ut = delta.permute(2, 0, 1).contiguous(), u.permute(2, 0, 1)  # (l, b, d)
    Bt, Ct, At = _time_major_bc(B.to(work)), _time_major_bc(C.to(work)), A.to(work).contiguous()
    step = _batch_chunk(*dt.shape, A.shape[1], dt.element_size(), on_cpu=dt.device.type == "cpu")
    y = torch.cat([_SelectiveScan.apply(dt[:, i:i + step], dt[:, i:i + step] * ut[:, i:i + step], At,
                                        Bt[:, i:i + step], Ct[:, i:i + step])
                   for i in range(0, dt.shape[1], step)], dim=1).permute(1, 2, 0)  # (b, d, l)
    if D is not None:
        y = y + u * D.to(work)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(work))
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
