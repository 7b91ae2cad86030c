"""Each method owns its loss weights: its own table reaches its loss, a config override of one
name changes exactly that term, and a shared default can never stand in for a method's weight."""

from __future__ import annotations

import pytest
import torch

from tests.trainer_synth import tiny_model
from trainer.config import DEFAULT_LOSS_WEIGHTS, ModelConfig, TrainConfig, method_loss_weights
from trainer.data.dataset import Batch
from trainer.errors import MedHashError
from trainer.models import mcph, prompthash, tripah

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ["circle", "square", "triangle"]
TEXTS = ["a circle at the left", "a square", "triangle at the top, small", "circle right",
         "a large green square at the bottom", "a triangle"]
TABLES = {"base": DEFAULT_LOSS_WEIGHTS, "mcph": mcph.MCPH_ALL_WEIGHTS, "tripah": tripah.LOSS_WEIGHTS,
          "prompthash": prompthash.LOSS_WEIGHTS}


def _batch(model) -> Batch:
    g = torch.Generator().manual_seed(0)
    tok = model.backbone.tokenizer
    metas = [{"age": 60 + i} for i in range(len(TEXTS))]
    tokens = tok(TEXTS, metas=metas) if getattr(tok, "accepts_meta", False) else tok(TEXTS)
    labels = torch.eye(len(LABELS))[[i % len(LABELS) for i in range(len(TEXTS))]]
    return Batch(images=torch.rand(len(TEXTS), 3, 64, 64, generator=g), tokens=tokens, labels=labels,
                 index=torch.arange(len(TEXTS)), extras={"meta": metas})


def _terms(method: str, loss_weights: dict[str, float]) -> dict[str, float]:
    model = tiny_model(method, LABELS)
    model.cfg.loss_weights = dict(loss_weights)
    model.eval()  # no running statistics move between the two calls compared
    torch.manual_seed(1)
    with torch.no_grad():
        terms = model.loss_terms(_batch(model), TrainConfig(epochs=2), epoch=1)
    return {k: float(v) for k, v in terms.items()}


@pytest.mark.parametrize("method", sorted(TABLES))
def test_each_methods_own_weights_reach_its_loss(method):
    table = TABLES[method]
    defaults = _terms(method, {})
    unit = _terms(method, dict.fromkeys((k for k in defaults if k in table), 1.0))
    weighted = [k for k in defaults if k in table and abs(unit[k]) > 1e-8]
    assert weighted, f"{method}: no weighted term to check"
    for name in weighted:
        assert defaults[name] == pytest.approx(table[name] * unit[name], rel=1e-5), name


@pytest.mark.parametrize("method", sorted(TABLES))
def test_an_override_changes_exactly_its_term(method):
    defaults = _terms(method, {})
    name = next(k for k in defaults if k in TABLES[method] and abs(defaults[k]) > 1e-8)
    changed = _terms(method, {name: 3.0 * TABLES[method][name]})
    assert changed[name] == pytest.approx(3.0 * defaults[name], rel=1e-5)
    assert {k: v for k, v in changed.items() if k != name} == pytest.approx(
        {k: v for k, v in defaults.items() if k != name}, rel=1e-5)


def test_shared_defaults_do_not_replace_a_methods_weight():
    # The bug: every config held BASE's whole table, so a method's own weight of a shared name
    # (TriPAH's quantization was 0.3 then) was silently replaced by BASE's 0.1.
    cfg = ModelConfig(method="tripah")
    assert cfg.loss_weights == {}
    own = {"quantization": 0.3, "global": 1.0}
    assert DEFAULT_LOSS_WEIGHTS["quantization"] != own["quantization"]
    assert method_loss_weights(cfg, own) == own
    assert method_loss_weights(cfg, tripah.LOSS_WEIGHTS) == tripah.LOSS_WEIGHTS


def test_a_weight_the_method_lacks_is_refused_by_name():
    cfg = ModelConfig(method="tripah", loss_weights={"globl": 2.0})
    with pytest.raises(MedHashError, match="globl"):
        method_loss_weights(cfg, tripah.LOSS_WEIGHTS)


def test_checkpoints_written_with_the_old_shared_table_still_load():
    # Before this fix every config stored BASE's whole table; names TriPAH lacks are ignored.
    cfg = ModelConfig(method="tripah", loss_weights=dict(DEFAULT_LOSS_WEIGHTS))
    weights = method_loss_weights(cfg, tripah.LOSS_WEIGHTS)
    assert set(weights) == set(tripah.LOSS_WEIGHTS)
