"""Selective state-space scan: the PyTorch scan against a naive per-step recurrence, the Mamba
block's per-sample and padding behaviour, and (on a GPU with mamba-ssm) the fused kernel."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.models import ssm
from trainer.models.ssm import MambaBlock, kernel_available, selective_scan, selective_scan_torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: no thread hand-offs


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Textbook recurrence in float64, one batch item, channel, state and step at a time."""
    b, d, length = u.shape
    n = A.shape[1]
    y = torch.zeros(b, d, length, dtype=torch.float64)
    for i in range(b):
        for c in range(d):
            g = c // (d // B.shape[1]) if B.dim() == 4 else None
            h = [0.0] * n
            for t in range(length):
                dt = float(delta[i, c, t]) + (float(delta_bias[c]) if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = math.log1p(math.exp(dt))
                out = 0.0
                for k in range(n):
                    b_t = float(B[i, g, k, t] if g is not None else B[i, k, t])
                    c_t = float(C[i, g, k, t] if g is not None else C[i, k, t])
                    h[k] = math.exp(dt * float(A[c, k])) * h[k] + dt * b_t * float(u[i, c, t])
                    out += c_t * h[k]
                if D is not None:
                    out += float(D[c]) * float(u[i, c, t])
                if z is not None:
                    zt = float(z[i, c, t])
                    out *= zt / (1.0 + math.exp(-zt))
                y[i, c, t] = out
    return y


def _inputs(b=2, d=4, n=3, length=9, groups=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape_bc = (b, n, length) if groups is None else (b, groups, n, length)
    return {
        "u": torch.randn(b, d, length, generator=g),
        "delta": torch.randn(b, d, length, generator=g) * 0.5,
        "A": -torch.rand(d, n, generator=g) * 2 - 0.1,
        "B": torch.randn(*shape_bc, generator=g),
        "C": torch.randn(*shape_bc, generator=g),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, length, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.3,
    }


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("softplus", [True, False])
def test_torch_scan_equals_naive_recurrence(groups, softplus):
    x = _inputs(groups=groups)
    if not softplus:
        x["delta"] = x["delta"].abs()
        x["delta_bias"] = None
    got = selective_scan_torch(**x, delta_softplus=softplus)
    want = naive_scan(**x, delta_softplus=softplus)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_scan_without_optional_terms_is_the_bare_recurrence():
    x = _inputs()
    got = selective_scan_torch(x["u"], x["delta"].abs(), x["A"], x["B"], x["C"])
    want = naive_scan(x["u"], x["delta"].abs(), x["A"], x["B"], x["C"])
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_scan_is_causal_and_per_sample():
    x = _inputs(b=3, length=12)
    y = selective_scan_torch(**x, delta_softplus=True)
    changed = {k: v.clone() for k, v in x.items()}
    changed["u"][1] = torch.randn_like(changed["u"][1])  # another sample
    changed["u"][0, :, 8:] = 5.0  # the future of sample 0
    y2 = selective_scan_torch(**changed, delta_softplus=True)
    torch.testing.assert_close(y2[0, :, :8], y[0, :, :8])
    torch.testing.assert_close(y2[2], y[2])
    assert not torch.allclose(y2[1], y[1])


@pytest.mark.parametrize("groups", [None, 2])
def test_hand_written_backward_matches_finite_differences(groups):
    """gradcheck in float64: the adjoint recurrence of _SelectiveScan gives every input's gradient."""
    x = {k: v.double().requires_grad_() for k, v in _inputs(b=2, d=4, n=3, length=6, groups=groups).items()}
    order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    assert torch.autograd.gradcheck(lambda *a: selective_scan_torch(*a, delta_softplus=True),
                                    tuple(x[k] for k in order), eps=1e-6, atol=1e-6)


def test_batch_chunks_change_nothing(monkeypatch):
    """The scan splits the batch to keep its buffers small: one sample per call gives the same y and grads."""
    def run():
        x = {k: v.clone().requires_grad_() for k, v in _inputs(b=5, d=8, n=4, length=11).items()}
        y = selective_scan_torch(**x, delta_softplus=True)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return y.detach(), [x[k].grad for k in sorted(x)]
    whole = run()
    monkeypatch.setattr(ssm, "_SCAN_BUFFER_BYTES", 1)  # -> one sample per _SelectiveScan call
    assert ssm._batch_chunk(11, 5, 8, 4, 4) == 1
    split = run()
    torch.testing.assert_close(split[0], whole[0])
    for a, b in zip(split[1], whole[1], strict=True):
        torch.testing.assert_close(a, b)


def test_batch_is_split_on_cpu_only():
    """The 8 MiB split is a CPU allocator matter: on a GPU each split would multiply the per-token
    kernel launches, so the whole batch goes in one call there."""
    assert ssm._batch_chunk(85, 128, 512, 16, 4) == 3  # 85 * 512 * 16 * 4 B = 2.7 MiB per sample
    assert ssm._batch_chunk(85, 128, 512, 16, 4, on_cpu=False) == 128


def test_mamba_block_same_alone_and_in_a_padded_batch():
    torch.manual_seed(0)
    block = MambaBlock(16, d_state=4, backend="torch").eval()
    a = torch.randn(1, 5, 16)
    batch = torch.cat([F.pad(a, (0, 0, 0, 4)), torch.randn(1, 9, 16)])
    mask = torch.tensor([[1] * 5 + [0] * 4, [1] * 9]).bool()
    with torch.no_grad():
        alone = block(a)
        together = block(batch, mask)
    torch.testing.assert_close(together[0, :5], alone[0], rtol=1e-5, atol=1e-6)
    assert together[0, 5:].abs().max() == 0  # padding stays zero


def test_mamba_block_trains():
    torch.manual_seed(0)
    block = MambaBlock(8, d_state=4, backend="torch")
    x, target = torch.randn(4, 6, 8), torch.randn(4, 6, 8)
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = F.mse_loss(block(x), target)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.8 * first
    assert block.A_log.grad is not None and block.dt_proj.bias.grad is not None


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        selective_scan(**_inputs(), backend="cuda-magic")


@pytest.mark.skipif(not kernel_available(), reason="needs mamba-ssm and a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernel_equals_torch_scan(dtype):
    """Run on a GPU machine with `pip install mamba-ssm`: the fused kernel and the PyTorch scan
    agree in the forward pass and in every input gradient."""
    x = {k: v.cuda() for k, v in _inputs(b=3, d=64, n=16, length=50).items()}
    for key in ("u", "delta", "B", "C", "z"):
        x[key] = x[key].to(dtype)
    results = []
    for backend in ("kernel", "torch"):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
        y = selective_scan(**leaves, delta_softplus=True, backend=backend)
        y.float().pow(2).sum().backward()
        results.append((y.float(), {k: v.grad.float() for k, v in leaves.items()}))
    (yk, gk), (yt, gt) = results
    tol = {"rtol": 1e-3, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 5e-2, "atol": 5e-2}
    torch.testing.assert_close(yk, yt, **tol)
    for key in gk:
        scale = gt[key].abs().max().clamp_min(1.0)
        torch.testing.assert_close(gk[key] / scale, gt[key] / scale, **tol)
