"""What the engine honours from a method: image-side metadata on the way to encode_image, the
method's own AdamW parameter groups through the lr schedule, and its preferred train settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainer_synth import SHAPES, make_samples

from trainer.config import ModelConfig, TrainConfig
from trainer.data.captions import IMAGE_META_KEYS
from trainer.data.splits import make_splits
from trainer.engine import _set_lr, apply_method_defaults, encode_dataset, fit, optimizer_groups
from trainer.errors import MedHashError, TrainingError
from trainer.feature_cache import FeatureCache
from trainer.models import build_model
from trainer.models.base import BaseHashing
from trainer.models.mcph import MCPH

TINY = ModelConfig(backbone="tiny", bits=[16, 32], embed_dim=64, label_names=sorted(SHAPES))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: no thread hand-offs


class MetaRecorder(BaseHashing):
    """BASE that keeps the `meta` each encode_image call received (a real model, not a mock)."""

    def __init__(self, cfg: ModelConfig, backbone) -> None:
        super().__init__(cfg, backbone)
        self.seen: list[dict] = []

    def encode_image(self, images, meta=None, **kw):
        self.seen.extend(meta if meta is not None else [None] * len(images))
        return super().encode_image(images, meta, **kw)


def _recorder() -> MetaRecorder:
    base = build_model(TINY)
    return MetaRecorder(TINY, base.backbone).eval()


@pytest.fixture()
def samples(tmp_path: Path):
    out = make_samples(tmp_path / "images", n=6, seed=1)
    for i, s in enumerate(out):
        s.metadata = {"age": 40 + i, "sex": "F" if i % 2 else "M", "view": "PA", "laterality": "L",
                      "modality": "CR", "report_copy": s.report, "patient_name": "never shown"}
    return out


@pytest.mark.parametrize("cached", [False, True])
def test_encode_dataset_passes_each_image_its_own_metadata_and_caption_never_the_report(samples, tmp_path: Path,
                                                                                        cached: bool) -> None:
    model = _recorder()
    captions = {samples[2].id: "a bright round blob"}
    cache = None
    if cached:
        cache = FeatureCache(tmp_path / "cache", model.backbone, {"image", "text"})
        cache.prepare(samples, device=torch.device("cpu"), batch_size=4)
    encode_dataset(model, samples, batch_size=4, captions=captions, cache=cache)
    assert len(model.seen) == len(samples)
    for s, meta in zip(samples, model.seen, strict=True):
        assert meta["age"] == s.metadata["age"] and meta["sex"] == s.metadata["sex"] and meta["view"] == "PA"
        assert set(meta) <= set(IMAGE_META_KEYS)  # allow-listed: no report copy, no name
        assert s.report not in json.dumps(meta)
    assert model.seen[2]["caption"] == "a bright round blob" and "caption" not in model.seen[0]


# ---- param_groups -----------------------------------------------------------------------------------
def test_method_param_groups_keep_their_lr_ratio_through_the_schedule() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(method="tripah", backbone="tiny", bits=[16, 32], embed_dim=64,
                                    label_names=sorted(SHAPES)))
    groups = optimizer_groups(model, TrainConfig(lr=1e-4))
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["backbone"] == pytest.approx(1e-5) and lrs["heads"] == pytest.approx(1e-4)  # TriPAH's paper setting
    optimizer = torch.optim.AdamW(groups, lr=1e-4)
    _set_lr(optimizer, 3e-5)  # what the warm-up / cosine schedule does every step
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(3e-6) and lrs["heads"] == pytest.approx(3e-5)


def test_default_groups_without_a_hook_and_a_hook_that_forgets_parameters_is_refused() -> None:
    model = build_model(TINY)
    groups = optimizer_groups(model, TrainConfig(lr=2e-4, weight_decay=0.05))
    assert {g["weight_decay"] for g in groups} == {0.05, 0.0} and {g["lr"] for g in groups} == {2e-4}
    assert sum(len(g["params"]) for g in groups) == len(model.trainable_parameters())

    class Forgetful(BaseHashing):
        def param_groups(self, train_cfg):
            return [{"params": [p for p in self.trainable_parameters() if p.ndim >= 2]}]

    with pytest.raises(TrainingError, match="every trainable parameter"):
        optimizer_groups(Forgetful(TINY, model.backbone), TrainConfig())


def test_fit_trains_with_the_method_groups(tmp_path: Path) -> None:
    splits = make_splits(make_samples(tmp_path / "shapes", n=30, seed=0),
                         fractions={"query": 0.1, "val": 0.3, "train": 0.6}, seed=2)
    cfg = ModelConfig(method="tripah", backbone="tiny", bits=[16, 32], embed_dim=64)
    fit(cfg, TrainConfig(epochs=1, batch_size=6, lr=1e-3, num_workers=0, device="cpu", warmup_steps=1), splits,
        tmp_path / "run")
    state = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text(encoding="utf-8"))
    lrs = {g["name"]: g["lr"] for g in state["optimizer"]["param_groups"]}
    assert lrs["backbone"] == pytest.approx(0.1 * lrs["heads"]) and lrs["heads"] > 0


# ---- default_train_overrides ---------------------------------------------------------------------------
def test_method_defaults_fill_only_what_the_user_did_not_set() -> None:
    mcph = ModelConfig(method="mcph")
    user = TrainConfig(lr=1e-3, batch_size=8, weight_decay=0.5, epochs=3)
    out = apply_method_defaults(mcph, user, user_set={"lr", "epochs"})
    assert (out.lr, out.epochs) == (1e-3, 3)  # the user's
    assert (out.batch_size, out.weight_decay) == (32, 0.01) == (MCPH.default_train_overrides["batch_size"],
                                                                MCPH.default_train_overrides["weight_decay"])
    assert apply_method_defaults(mcph, user, user_set=set()).lr == 5e-5
    assert apply_method_defaults(ModelConfig(method="base"), user, user_set=set()) == user  # BASE has none


def test_bad_method_defaults_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MCPH, "default_train_overrides", {"optimiser": "sgd"})
    with pytest.raises(TrainingError, match="optimiser"):
        apply_method_defaults(ModelConfig(method="mcph"), TrainConfig(), user_set=set())
    monkeypatch.setattr(MCPH, "default_train_overrides", {"batch_size": 1})
    with pytest.raises(MedHashError, match="batch_size"):  # the config's own validation still runs
        apply_method_defaults(ModelConfig(method="mcph"), TrainConfig(), user_set=set())
