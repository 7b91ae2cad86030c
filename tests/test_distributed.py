"""Data-parallel training with two CPU processes (gloo), started the way torchrun starts them
(RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the environment)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from trainer_synth import SHAPES, make_samples

from trainer import distributed
from trainer.config import ModelConfig, TrainConfig
from trainer.data.dataset import make_loader
from trainer.data.splits import Splits, make_splits

WORLD = 2
MODEL = ModelConfig(backbone="tiny", bits=[16, 32], embed_dim=64, label_names=sorted(SHAPES))
GLOBAL_BATCH = 4


def _train_cfg(cache_dir: Path) -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=GLOBAL_BATCH, lr=1e-3, num_workers=0, device="cpu", warmup_steps=2,
                       seed=2, cache_dir=str(cache_dir))


def _grad_batch(samples, model):
    """A fixed global batch of 8 pairs (eval transform: no randomness)."""
    loader = make_loader(samples[:8], model.backbone.eval_transform, model.backbone.tokenizer, MODEL.label_names,
                         batch_size=8)
    return next(iter(loader))


def _model():
    from trainer.models import build_model

    torch.manual_seed(0)
    return build_model(MODEL)


def _flat_grads(model) -> np.ndarray:
    return torch.cat([p.grad.reshape(-1) for p in model.trainable_parameters() if p.grad is not None]).numpy()


def _gather_check(rank: int) -> dict:
    x = torch.full((3, 2), float(rank + 1), requires_grad=True)
    gathered = distributed.gather_with_grad(x)
    weights = torch.arange(gathered.numel(), dtype=torch.float32).reshape(gathered.shape)
    (gathered * weights).sum().backward()
    return {"shape": list(gathered.shape), "values": gathered.detach()[:, 0].tolist(), "grad": x.grad.tolist(),
            "expected_grad": (WORLD * weights[3 * rank : 3 * rank + 3]).tolist()}


def _ddp_grads(rank: int, samples, out: Path) -> None:
    """BASE loss on this rank's half of the fixed batch through DDP; rank 0 saves the averaged grads."""
    from trainer.engine import _LossModule

    model = _model()
    batch = _grad_batch(samples, model)
    half = slice(rank * 4, rank * 4 + 4)
    local = type(batch)(batch.images[half], {k: v[half] for k, v in batch.tokens.items()}, batch.labels[half],
                        batch.index[half], {"meta": batch.extras["meta"][half]})
    ddp = distributed.wrap_for_training(_LossModule(model), distributed.DistInfo(rank, WORLD), torch.device("cpu"))
    sum(ddp(local, TrainConfig(), 1).values()).backward()
    if rank == 0:
        np.save(out / "ddp_grads.npy", _flat_grads(model))


def _worker(rank: int, port: int, folder: str, splits: Splits) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from trainer import engine

    out = Path(folder)
    info, _ = distributed.setup("cpu")
    result: dict = {"gather": _gather_check(rank)}
    _ddp_grads(rank, splits.train, out)

    counts = {"save_checkpoint": 0, "train_step": 0, "gathered_rows": set(), "local_rows": set()}
    real_save, real_step, real_gather = engine.save_checkpoint, engine._train_step, distributed.gather_with_grad

    def save_spy(*a, **kw):
        counts["save_checkpoint"] += 1
        return real_save(*a, **kw)

    def step_spy(model, batch, *a, **kw):
        counts["train_step"] += 1
        counts["local_rows"].add(len(batch))
        return real_step(model, batch, *a, **kw)

    def gather_spy(x):
        y = real_gather(x)
        counts["gathered_rows"].add(int(y.shape[0]))
        return y

    engine.save_checkpoint, engine._train_step, distributed.gather_with_grad = save_spy, step_spy, gather_spy
    events: list[dict] = []
    fit = engine.fit(MODEL, _train_cfg(out / "cache"), splits, out / "run", progress=events.append)
    result |= {"saves": counts["save_checkpoint"], "steps": counts["train_step"],
               "gathered_rows": sorted(counts["gathered_rows"]), "local_rows": sorted(counts["local_rows"]),
               "events": len(events), "start_steps": next((e["steps"] for e in events if e["event"] == "start"), None),
               "losses": [h["losses"]["total"] for h in fit.history], "best_val_map": fit.best_val_map,
               "checkpoint": str(fit.checkpoint_dir), "main_process": fit.main_process}
    distributed.teardown(info)
    (out / f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Splits, list[dict]]:
    folder = tmp_path_factory.mktemp("ddp")
    splits = make_splits(make_samples(folder / "shapes", n=40, seed=0),
                         fractions={"query": 0.1, "val": 0.2, "train": 0.7}, seed=2)
    mp.spawn(_worker, args=(_free_port(), str(folder), splits), nprocs=WORLD, join=True)
    return folder, splits, [json.loads((folder / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(WORLD)]


def test_gather_with_grad_returns_the_global_batch_and_grads_only_the_local_slice(two_ranks) -> None:
    _, _, results = two_ranks
    for rank, r in enumerate(results):
        g = r["gather"]
        assert g["shape"] == [3 * WORLD, 2] and g["values"] == [1.0] * 3 + [2.0] * 3  # rank order
        assert g["grad"] == g["expected_grad"], rank


def test_ddp_gradient_equals_the_single_process_gradient_of_the_global_batch(two_ranks) -> None:
    folder, splits, _ = two_ranks
    from trainer.models.base import BaseHashing

    model = _model()
    assert isinstance(model, BaseHashing)
    sum(model.loss_terms(_grad_batch(splits.train, model), TrainConfig(), epoch=1).values()).backward()
    single = _flat_grads(model)
    ddp = np.load(folder / "ddp_grads.npy")
    assert single.shape == ddp.shape and np.abs(single).max() > 1e-4
    np.testing.assert_allclose(ddp, single, rtol=1e-4, atol=1e-6)


def test_fit_splits_steps_over_ranks_and_only_rank0_writes_and_reports(two_ranks) -> None:
    folder, splits, (r0, r1) = two_ranks
    expected_steps = len(splits.train) // GLOBAL_BATCH  # what one process takes with the same global batch
    assert r0["steps"] == r1["steps"] == r0["start_steps"] == expected_steps
    assert r0["local_rows"] == r1["local_rows"] == [GLOBAL_BATCH // WORLD]
    assert r0["gathered_rows"] == r1["gathered_rows"] == [GLOBAL_BATCH]  # contrastive terms see the global batch
    assert r0["saves"] == 2 and r1["saves"] == 0  # best/ and last/ once, by rank 0
    assert r0["events"] > 0 and r1["events"] == 0
    assert r0["main_process"] and not r1["main_process"]  # what the CLI checks before registering the model
    assert all(np.isfinite(r["losses"]).all() for r in (r0, r1)) and r0["best_val_map"] == r1["best_val_map"]
    assert (folder / "run" / "best" / "model.safetensors").is_file() and r0["checkpoint"] == r1["checkpoint"]
    assert sorted(p.name for p in (folder / "run").iterdir()) == ["best", "last", "splits.json"]
