"""Data-parallel training under `torchrun`: process group from the environment, global-batch
gathering for the contrastive losses, and the rank-0-only rules for files and progress.

`torchrun --nproc_per_node=N -m medhash_app.cli train ...` starts N copies of the same command with
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set. `setup()` joins them (NCCL on
CUDA, gloo on CPU) and picks the device `cuda:LOCAL_RANK`. `TrainConfig.batch_size` stays the
GLOBAL batch (the one the contrastive losses see): each rank loads batch_size / N pairs, so a run
takes the same number of optimiser steps on 1 or N processes. Outside torchrun every function here
is a cheap no-op, so single-process code needs no branches.

Gradients: `gather_with_grad` returns the global batch; only the local slice carries a gradient,
scaled by the world size, so that DDP's gradient *averaging* gives exactly the single-process
gradient of a loss that every rank computes identically from gathered tensors (the symmetric
CLIP-style loss), without a second collective in the backward pass.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DistributedSampler, Sampler

from trainer.errors import TrainingError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TIMEOUT = timedelta(minutes=30)  # rank 0 validates / fills the cache while the others wait


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank; `owned` = this code opened the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


SINGLE = DistInfo()


def launched_by_torchrun() -> bool:
    """True when the environment asks for more than one process (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def is_main_process() -> bool:
    """Rank 0 (or the only process): the one that writes files and reports progress."""
    return rank() == 0


def setup(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group (if any) and choose this rank's device.

    `device` is TrainConfig.device: "auto" / "cuda" give `cuda:LOCAL_RANK` when CUDA exists
    (backend NCCL), "cpu" or no CUDA give the CPU (backend gloo). Without torchrun: (SINGLE,
    the requested device). An already initialised group (a caller's own) is used, never closed.
    """
    if not launched_by_torchrun() and not is_active():
        return SINGLE, resolve_device(device)
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing and not is_active():
        raise TrainingError("torchrun", f"environment lacks {', '.join(missing)}; start with torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(device, "no CUDA GPU is available; use device 'cpu' or 'auto'")
    chosen = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(chosen)
    owned = False
    if not is_active():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://", timeout=TIMEOUT,
                                device_id=chosen if use_cuda else None)
        owned = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, owned), chosen


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(name, "no CUDA GPU is available; use device 'cpu' or 'auto'")
    return torch.device(name)


def teardown(info: DistInfo) -> None:
    """Close the process group if `setup` opened it."""
    if info.owned and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_active():
        dist.barrier()


def per_rank_batch(batch_size: int, info: DistInfo) -> int:
    """Each rank's share of the global batch; the global batch must split evenly and give >= 1 pair each."""
    if batch_size % info.world_size:
        raise TrainingError("training config", f"batch size {batch_size} does not split evenly over "
                            f"{info.world_size} processes; use a multiple of {info.world_size}")
    return batch_size // info.world_size


def sampler(n: int, info: DistInfo, *, seed: int, epoch: int) -> Sampler | None:
    """This rank's disjoint share of a shuffled epoch (equal sizes on every rank); None without DDP."""
    if not info.active:
        return None
    s = DistributedSampler(range(n), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed,
                           drop_last=True)
    s.set_epoch(epoch)
    return s


class _GatherLocalGrad(torch.autograd.Function):
    """all_gather forward; backward keeps the local slice's gradient times the world size."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.rank, ctx.world, ctx.n = dist.get_rank(), dist.get_world_size(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        start = ctx.rank * ctx.n
        return grad[start : start + ctx.n] * ctx.world


def gather_with_grad(x: Tensor) -> Tensor:
    """(B_local, ...) -> (B_global, ...) in rank order; identity in a single process.

    Every rank must pass the same shape. The gradient reaches only this rank's rows (see the
    module docstring for why it is scaled), so use it for losses computed identically on all ranks.
    """
    return _GatherLocalGrad.apply(x) if is_active() else x


def all_gather(x: Tensor) -> Tensor:
    """Global batch of a tensor without gradient (labels, indices); identity in a single process."""
    if not is_active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is True on at least one (cancellation must be collective)."""
    if not is_active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (validation results, so every rank keeps the same history)."""
    if not is_active():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_for_training(module: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `module` under torchrun, the module itself otherwise.

    Unused parameters are allowed (methods switch components per step), and buffers are not
    broadcast at every forward (BatchNorm statistics are frozen; method memories differ per rank).
    """
    if not info.active:
        return module
    ids: Sequence[int] | None = [device.index] if device.type == "cuda" else None
    ddp = torch.nn.parallel.DistributedDataParallel
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                      else {"broadcast_buffers": False})  # the name changed in torch 2.14
    return ddp(module, device_ids=ids, find_unused_parameters=True, **no_buffer_sync)
