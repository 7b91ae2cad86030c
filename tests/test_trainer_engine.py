"""The fit loop on synthetic shapes with the tiny backbone: learning, resume, errors, events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_synth import SHAPES, make_samples

from trainer.checkpoint import load_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data.splits import Splits, make_splits
from trainer.engine import _labels_matrix, encode_dataset, fit, mean_average_precision
from trainer.errors import TrainingError

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: no thread hand-offs


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> Splits:
    samples = make_samples(tmp_path_factory.mktemp("shapes"), n=60, seed=0)
    return make_splits(samples, fractions={"query": 0.1, "val": 0.3, "train": 0.6}, seed=2)


MODEL = ModelConfig(backbone="tiny", bits=[16, 32], embed_dim=64)


def _train(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 4, "lr": 1e-3, "num_workers": 0, "device": "cpu",
                          "warmup_steps": 2, "seed": 2, **kw})


def test_fit_learns_far_better_than_random_codes(splits: Splits, tmp_path: Path) -> None:
    events: list[dict] = []
    result = fit(MODEL, _train(), splits, tmp_path / "run", progress=events.append)
    labels = _labels_matrix(splits.val, sorted(SHAPES))
    rng = np.random.default_rng(0)
    random_map = np.mean([mean_average_precision(rng.standard_normal((len(labels), 32)),
                                                 rng.standard_normal((len(labels), 32)), labels, labels)
                          for _ in range(20)])
    assert result.best_val_map > random_map + 0.15, (result.best_val_map, random_map)
    assert result.epochs_run == 2 and len(result.history) == 2 and not result.cancelled
    assert result.best_val_map == max(h["val_map"]["mean"] for h in result.history)
    assert {"contrastive", "similarity", "quantization", "total"} <= set(result.history[0]["losses"])
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 2 and "step" in kinds
    epoch_event = next(e for e in events if e["event"] == "epoch")
    assert {"epoch", "step", "steps", "losses", "val_map", "eta_s"} <= set(epoch_event)
    assert (tmp_path / "run" / "splits.json").is_file() and (tmp_path / "run" / "last").is_dir()
    model, cfg, meta = load_checkpoint(result.checkpoint_dir)
    assert cfg.label_names == sorted(SHAPES) and meta["metrics"]["val_map"]["mean"] == result.best_val_map
    img, txt = encode_dataset(model, splits.val, batch_size=5)
    assert img[32].shape == (len(splits.val), 32) and img[32].dtype == np.float32
    i2t = mean_average_precision(img[32], txt[32], labels, labels)
    best_epoch = max(result.history, key=lambda h: h["val_map"]["mean"])
    other_epoch = min(result.history, key=lambda h: h["val_map"]["mean"])
    # The saved best is the selected model. Validation encodes from the cached stems, this from the
    # images: float rounding can flip the sign of a code bit near zero (a few 1e-4 of mAP on 18 items),
    # far less than the gap between the two epochs' checkpoints.
    assert i2t == pytest.approx(best_epoch["val_map"]["i2t"], abs=5e-3)
    assert abs(i2t - best_epoch["val_map"]["i2t"]) < abs(i2t - other_epoch["val_map"]["i2t"])


def test_resume_after_interruption_matches_an_uninterrupted_run(splits: Splits, tmp_path: Path) -> None:
    straight = fit(MODEL, _train(), splits, tmp_path / "straight")
    stop = {"now": False}

    def after_first_epoch(event: dict) -> None:
        stop["now"] = stop["now"] or event["event"] == "epoch"

    first = fit(MODEL, _train(), splits, tmp_path / "resumed", progress=after_first_epoch, cancel=lambda: stop["now"])
    assert first.cancelled and first.epochs_run == 1 and len(first.history) == 1
    events: list[dict] = []
    second = fit(MODEL, _train(), splits, tmp_path / "resumed", progress=events.append)
    assert events[0]["event"] == "start" and events[0]["epoch"] == 2 and events[0]["resumed"]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [2]
    assert second.epochs_run == 2 and second.history[0] == first.history[0]
    assert all(h["seconds"] > 0 for h in second.history)  # the interrupted call's epoch keeps its cost
    for a, b in zip(straight.history, second.history, strict=True):
        assert a["losses"] == pytest.approx(b["losses"], rel=1e-4)
        assert a["val_map"]["mean"] == pytest.approx(b["val_map"]["mean"], abs=1e-6)
    with pytest.raises(TrainingError, match="different lr"):
        fit(MODEL, _train(lr=5e-4), splits, tmp_path / "resumed")


def test_diverging_loss_raises_naming_epoch_step_and_term(splits: Splits, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"epoch 1, step \d+: loss term '\w+' became (NaN|infinite)"):
        fit(MODEL, _train(lr=1e30, grad_clip=None, warmup_steps=0), splits, tmp_path / "nan")


def test_noise_is_injected_into_train_only_and_recorded(splits: Splits, tmp_path: Path) -> None:
    result = fit(MODEL, _train(epochs=1, noise_rate=0.5), splits, tmp_path / "noisy")
    from trainer.engine import noise_record

    record = noise_record(tmp_path / "noisy")
    assert record is not None and len(record.indices) == round(0.5 * len(splits.train))
    assert set(record.ids) <= {s.id for s in splits.train}
    _, _, meta = load_checkpoint(result.checkpoint_dir)
    assert meta["training"]["noise"] == {"rate": 0.5, "seed": 2}


def test_out_of_memory_suggests_a_smaller_batch(splits: Splits, tmp_path: Path, monkeypatch) -> None:
    """The allocator is the system edge: simulate its failure, check the message the user gets."""
    from trainer.models.base import BaseHashing

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(BaseHashing, "loss_terms", no_memory)
    with pytest.raises(TrainingError, match="out of memory at batch size 4; try batch size 2"):
        fit(MODEL, _train(), splits, tmp_path / "oom")
