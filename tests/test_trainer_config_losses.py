"""Config round-trips and loss formulas (checked against direct evaluations of the formulas)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainer import losses
from trainer.config import DEFAULT_COMPONENTS, ModelConfig, TrainConfig
from trainer.errors import MedHashError


def test_configs_round_trip_through_json() -> None:
    mc = ModelConfig(backbone="tiny", bits=[64, 16], components={"bit_balance": True}, label_names=["a", "b"])
    tc = TrainConfig(epochs=3, batch_size=4, device="cpu", noise_rate=0.2)
    assert ModelConfig.from_dict(json.loads(json.dumps(mc.to_dict()))) == mc
    assert TrainConfig.from_dict(json.loads(json.dumps(tc.to_dict()))) == tc
    assert mc.bits == [16, 64]  # sorted, deduplicated
    assert mc.on("bit_balance") and mc.on("contrastive") == DEFAULT_COMPONENTS["contrastive"]


@pytest.mark.parametrize(
    ("cls", "data", "needle"),
    [
        (ModelConfig, {"bitz": [16]}, "bitz"),
        (ModelConfig, {"bits": [12]}, "multiples of 8"),
        (TrainConfig, {"noise_rate": 1.5}, "noise_rate"),
        (TrainConfig, {"noise_handling": "magic"}, "noise_handling"),
        (TrainConfig, {"device": "tpu"}, "device"),
    ],
)
def test_bad_settings_are_named(cls, data, needle) -> None:
    with pytest.raises(MedHashError, match=needle):
        cls.from_dict(data)


def test_info_nce_prefers_aligned_pairs_and_is_symmetric() -> None:
    torch.manual_seed(0)
    a = torch.randn(8, 16)
    aligned = losses.info_nce(a, a + 0.01 * torch.randn(8, 16), 0.3)
    shuffled = losses.info_nce(a, a[torch.randperm(8)], 0.3)
    assert aligned < shuffled
    b = torch.randn(8, 16)
    assert torch.allclose(losses.info_nce(a, b), losses.info_nce(b, a))
    # Direct formula for one direction, averaged with the other.
    sim = torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T / 0.07
    row = -(sim.diag() - sim.logsumexp(1)).mean()
    col = -(sim.diag() - sim.logsumexp(0)).mean()
    assert torch.allclose(losses.info_nce(a, b, 0.07), 0.5 * (row + col))


def test_similarity_nll_matches_formula_and_stays_finite() -> None:
    torch.manual_seed(1)
    h_a, h_b = torch.tanh(torch.randn(5, 16)), torch.tanh(torch.randn(5, 16))
    s = losses.label_similarity(torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]]),
                                torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]]))
    assert s[0, 1] == 1 and s[0, 2] == 0 and s[3].sum() == 0
    theta = 0.5 * h_a @ h_b.T
    naive = (torch.log1p(torch.exp(theta)) - s * theta).mean()
    assert torch.allclose(losses.similarity_nll(h_a, h_b, s), naive, atol=1e-6)
    big = torch.ones(2, 4096)  # theta = 2048: exp overflows, softplus does not
    value = losses.similarity_nll(big, big, torch.zeros(2, 2))
    assert torch.isfinite(value) and math.isclose(float(value), 2048.0, rel_tol=1e-6)


def test_quantization_and_balance() -> None:
    assert losses.quantization_loss(torch.tensor([[1.0, -1.0]])) == 0
    assert torch.isclose(losses.quantization_loss(torch.tensor([[0.5, -0.5]])), torch.tensor(0.25))
    assert losses.bit_balance_loss(torch.tensor([[1.0, -1.0], [-1.0, 1.0]])) == 0
    assert losses.bit_balance_loss(torch.tensor([[1.0, 1.0], [1.0, 1.0]])) == 1
