"""GPU: mamba-ssm's fused selective-scan kernel against the project's PyTorch scan, forward + backward.

Both backends of `trainer.models.ssm.selective_scan` on the same inputs: the largest absolute
difference of the output and of every input gradient (against the PyTorch scan in float32), and
the GPU time of one forward + backward (CUDA events, median and p90 of `--repeats` calls after
three warm-ups). Shapes are those of a TriPAH fusion call with the embedded backbone (d = 2 x 256
inner channels, n = 16 states; 49 image tokens + prompts, ~85 fused tokens) at TriPAH's batch 128
and the default batch 32. Needs a CUDA GPU, and mamba-ssm unless `--backends torch`; exits with a
clear message otherwise.

    python benchmarks/bench_ssm_kernel.py --out /tmp/ssm_kernel.md     (results: benchmarks/results/ssm_kernel.md)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import LoadMonitor, MarkdownReport, Stats, command_line

from trainer.models.ssm import kernel_available, selective_scan

KEYS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(b: int, length: int, d: int = 512, n: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = {"u": torch.randn(b, d, length, generator=g), "delta": torch.randn(b, d, length, generator=g) * 0.5,
         "A": -torch.arange(1, n + 1).float().repeat(d, 1), "B": torch.randn(b, n, length, generator=g),
         "C": torch.randn(b, n, length, generator=g), "D": torch.ones(d),
         "z": torch.randn(b, d, length, generator=g), "delta_bias": torch.full((d,), -3.0)}
    return {k: v.cuda() for k, v in x.items()}


def _run(x: dict[str, torch.Tensor], backend: str, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    """One forward + backward; activations (u, delta, B, C, z) in `dtype`, parameters in float32."""
    leaves = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v).detach().requires_grad_(True)
              for k, v in x.items()}
    y = selective_scan(**leaves, delta_softplus=True, backend=backend)
    y.float().square().mean().backward()
    return y.detach().float(), {k: v.grad.float() for k, v in leaves.items()}


def _gpu_ms(x: dict[str, torch.Tensor], backend: str, dtype: torch.dtype, repeats: int) -> Stats:
    for _ in range(3):
        _run(x, backend, dtype)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        _run(x, backend, dtype)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return Stats.of(times)


def _max_diffs(ref: tuple[torch.Tensor, dict], got: tuple[torch.Tensor, dict]) -> tuple[float, float]:
    """(max |y - y_ref|, max over inputs of max |grad - grad_ref| / max |grad_ref|)."""
    grads = max(float((got[1][k] - ref[1][k]).abs().max() / ref[1][k].abs().max().clamp_min(1e-12)) for k in KEYS)
    return float((got[0] - ref[0]).abs().max()), grads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--lengths", default="49,85")
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--backends", default="torch,kernel", help="torch alone needs no mamba-ssm")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not torch.cuda.is_available() or ("kernel" in backends and not kernel_available()):
        raise SystemExit("needs a CUDA GPU, and mamba-ssm for the kernel (pip install mamba-ssm; or --backends torch)")
    report = MarkdownReport("Selective scan on the GPU: mamba-ssm kernel vs the PyTorch scan", command_line())
    report.paragraph(__doc__.split("\n\n")[1].replace("\n", " ") + f" GPU: {torch.cuda.get_device_name()}, "
                     f"torch {torch.__version__}.")
    rows = []
    with LoadMonitor() as load:
        for b in (int(v) for v in args.batches.split(",")):
            for length in (int(v) for v in args.lengths.split(",")):
                x = _inputs(b, length)
                ref = _run(x, "torch", torch.float32)
                for dtype in (torch.float32, torch.bfloat16):
                    times = {be: _gpu_ms(x, be, dtype, args.repeats) for be in backends}
                    cells = [f"{times[be].median:.2f} ({times[be].p90:.2f})" if be in times else "–"
                             for be in ("torch", "kernel")]
                    if len(times) == 2:
                        dy, dg = _max_diffs(ref, _run(x, "kernel", dtype))
                        cells += [f"{times['torch'].median / times['kernel'].median:.0f}x", f"{dy:.1e}", f"{dg:.1e}"]
                    else:
                        cells += ["–", "–", "–"]
                    rows.append([b, length, str(dtype).removeprefix("torch."), *cells])
    report.table(["batch", "tokens l", "activations", "PyTorch scan: GPU ms median (p90)", "kernel: GPU ms",
                  "speed-up", "max abs diff y (kernel vs fp32 PyTorch)", "max rel diff grads"], rows)
    report.emit(args.out, load)


if __name__ == "__main__":
    main()
