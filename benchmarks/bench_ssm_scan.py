"""CPU time of the pure-PyTorch selective scan (trainer/models/ssm.py), forward + backward.

The scan is the Mamba part of TriPAH's tri-view fusion and PromptHash's AGSF. It is compared with
the step-by-step autograd loop it replaced (kept in this script as `autograd_loop_scan`): same arithmetic,
but every token allocates fresh (b, d, n) tensors and autograd keeps a dozen full (l, b, d, n)
temporaries. Shapes are those of a TriPAH fusion call at batch 32 with the embedded backbone
(d = 2 x 256 inner channels, n = 16 states; 49 image tokens + prompts, ~85 fused tokens).

    python benchmarks/bench_ssm_scan.py --threads 1 --out benchmarks/results/ssm_scan.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import LoadMonitor, MarkdownReport, Stats, command_line

from trainer.models.ssm import selective_scan_torch


def autograd_loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The previous implementation: a Python loop differentiated by autograd (baseline)."""
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    d = u.shape[1]
    Bx, Cx = B.float().unsqueeze(1), C.float().unsqueeze(1)
    dA = torch.exp(delta.unsqueeze(2) * A.float()[None, :, :, None])
    dBu = (delta * u).unsqueeze(2) * Bx
    h, ys = u.new_zeros(u.shape[0], d, A.shape[1]), []
    for a_t, bu_t, c_t in zip(dA.unbind(-1), dBu.unbind(-1), Cx.unbind(-1), strict=True):
        h = a_t * h + bu_t
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y


def _inputs(b: int, d: int, n: int, length: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(b, d, length, generator=g), torch.randn(b, d, length, generator=g),
               -torch.arange(1, n + 1).float().repeat(d, 1), torch.randn(b, n, length, generator=g),
               torch.randn(b, n, length, generator=g), torch.ones(d), torch.randn(b, d, length, generator=g),
               torch.full((d,), -3.0)]
    return [t.requires_grad_() for t in tensors]


def _time(fn, xs: list[torch.Tensor], repeats: int) -> tuple[Stats, torch.Tensor, list[torch.Tensor]]:
    cpu = []
    for _ in range(repeats + 1):  # the first call warms up
        for x in xs:
            x.grad = None
        start = time.process_time()
        y = fn(*xs, delta_softplus=True)
        y.square().mean().backward()
        cpu.append(time.process_time() - start)
    return Stats.of(cpu[1:]), y.detach(), [x.grad.clone() for x in xs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lengths", default="49,85")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = MarkdownReport("Selective scan (pure PyTorch), forward + backward", command_line())
    report.paragraph(__doc__.split("\n\n")[1].replace("\n", " ") + f" CPU time of this process, median and p90 "
                     f"of {args.repeats} calls after one warm-up; d = 512, n = 16.")
    rows = []
    with LoadMonitor() as load:
        for length in (int(v) for v in args.lengths.split(",")):
            xs = _inputs(args.batch, 512, 16, length)
            old, y_old, g_old = _time(autograd_loop_scan, xs, args.repeats)
            new, y_new, g_new = _time(selective_scan_torch, xs, args.repeats)
            diff_g = max(float((a - b).abs().max()) for a, b in zip(g_old, g_new, strict=True))
            rows.append([length, args.batch, f"{old.median * 1e3:.0f} ({old.p90 * 1e3:.0f})",
                         f"{new.median * 1e3:.0f} ({new.p90 * 1e3:.0f})", f"{old.median / new.median:.1f}x",
                         f"{float((y_old - y_new).abs().max()):.1e} / {diff_g:.1e}"])
    report.table(["tokens l", "batch", "autograd loop: CPU ms median (p90)", "selective_scan_torch: CPU ms",
                  "speed-up", "max abs diff: y / grads"], rows)
    report.emit(args.out, load)

if __name__ == "__main__":
    main()
