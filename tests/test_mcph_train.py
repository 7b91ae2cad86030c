"""MCPH end to end: engine.fit on the synthetic pairs (with injected noise), checkpoint round trip,
and the correspondence scores of the data audit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.trainer_synth import SHAPES, make_samples
from trainer.checkpoint import load_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data.noise import inject_noise
from trainer.data.splits import make_splits
from trainer.engine import encode_dataset, fit, mean_average_precision
from trainer.models.mcph import mcph_correspondence_scores

SMALL = {"token_tower_dim": 64, "lta_dim": 64, "captioner_hidden": 32}


def _labels(samples, names) -> np.ndarray:
    return np.array([[n in s.labels for n in names] for s in samples])


def _random_code_map(samples, bits: int) -> float:
    lab = _labels(samples, SHAPES)
    rng = np.random.default_rng(0)
    return float(np.mean([mean_average_precision(rng.standard_normal((len(samples), bits)),
                                                 rng.standard_normal((len(samples), bits)), lab, lab)
                          for _ in range(5)]))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    """Full MCPH (paper weights alpha = 0.1, beta = 10) for 2 epochs on 25 %-noisy synthetic pairs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("mcph_fit")
        samples = make_samples(root / "images", n=96, seed=0)
        splits = make_splits(samples, fractions={"query": 0.1, "val": 0.3, "train": 0.6}, seed=2)
        cfg = ModelConfig(method="mcph", backbone="tiny", bits=[16, 32], embed_dim=64, options=SMALL)
        train = TrainConfig(epochs=2, batch_size=4, lr=1e-3, num_workers=0, device="cpu", warmup_steps=2,
                            noise_rate=0.25, noise_handling="adaptive_temperature")
        yield splits, train, fit(cfg, train, splits, root / "run")
    finally:
        torch.set_num_threads(threads)


def test_fit_two_epochs_beats_random_codes(run) -> None:
    splits, _, result = run
    losses = result.history[-1]["losses"]
    assert {"nrcl", "quantization", "inter", "intra", "captioner"} <= set(losses)
    chance = _random_code_map(splits.val, 32)
    assert result.best_val_map > chance + 0.15, (result.best_val_map, chance)
    model, cfg, _ = load_checkpoint(result.checkpoint_dir)
    assert cfg.method == "mcph" and model.use == {"vpl": True, "tpl": True, "nrcl": True, "lta": True}
    img, txt = encode_dataset(model, splits.val)
    lab = _labels(splits.val, model.cfg.label_names)
    reloaded = 0.5 * (mean_average_precision(img[32], txt[32], lab, lab) + mean_average_precision(txt[32], img[32], lab, lab))
    assert math.isclose(reloaded, result.best_val_map, abs_tol=1e-6)


def test_correspondence_scores_rank_mismatched_pairs_lower(run) -> None:
    splits, train, result = run
    model, _, _ = load_checkpoint(result.checkpoint_dir)
    noisy, record = inject_noise(splits.train, train.noise_rate, train.seed)  # the pairs fit trained on
    scores = mcph_correspondence_scores(model, noisy, batch_size=16)
    assert scores.shape == (len(noisy),) and np.isfinite(scores).all()
    wrong_shape = [i for i in record.indices if noisy[i].labels[0] not in noisy[i].report]
    clean = sorted(set(range(len(noisy))) - set(record.indices))
    assert len(wrong_shape) >= 4
    assert scores[wrong_shape].mean() < scores[clean].mean()
