"""The leak study's diagnostic option ("leak_paired_report") on TriPAH and PromptHash.

With it, an IMAGE code is computed from the image and its paired report (as the papers' public code
does); the report reaches `encode_image` only through the image meta key "paired_report", which the
loaders fill only for such a model. Off (the default), the image code never sees the report. The
research path can use the option; the app refuses to train or register such a model.
"""

from __future__ import annotations

import pytest
import torch

from medhash_app.core.errors import ModelError
from medhash_app.core.session import MedHashSession
from medhash_app.core.training import TrainRequest, train_on_library
from tests.trainer_synth import SHAPES, make_samples, tiny_model
from trainer.checkpoint import save_checkpoint
from trainer.config import TrainConfig
from trainer.data.captions import PAIRED_REPORT_KEY
from trainer.data.dataset import Batch, make_loader
from trainer.data.manifest import Sample
from trainer.data.splits import make_splits
from trainer.engine import encode_dataset
from trainer.errors import MedHashError
from trainer.experiment import evaluate_in_memory
from trainer.feature_cache import FeatureCache
from trainer.models.views import LEAK_OPTION

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = list(SHAPES)
METHODS = ("tripah", "prompthash")
REPORT_A = "there is a circle at the left of the picture"
REPORT_B = "a large green square at the bottom, nothing else"


def make_model(method: str, leak: bool, components=None):
    return tiny_model(method, LABELS, components, {LEAK_OPTION: True} if leak else {}, seed=0, bits=(16, 32))


def _metas(report: str | None, n: int = 2) -> list[dict]:
    base = [{"age": 61, "sex": "F", "view": "PA"}, {"laterality": "R"}][:n]
    return [dict(m, **({PAIRED_REPORT_KEY: report} if report is not None else {})) for m in base]


def _differ(a: dict, b: dict) -> bool:
    return any(not torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.parametrize("method", METHODS)
def test_leaky_image_code_changes_with_its_paired_report_and_the_honest_one_does_not(method):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    leaky, honest = make_model(method, True).eval(), make_model(method, False).eval()
    with torch.no_grad():
        assert _differ(leaky.encode_image(images, _metas(REPORT_A)), leaky.encode_image(images, _metas(REPORT_B)))
        plain = honest.encode_image(images, _metas(None))
        for report in (REPORT_A, REPORT_B):
            code = honest.encode_image(images, _metas(report))
            assert all(torch.equal(code[b], plain[b]) for b in plain)  # byte-identical: the key is ignored


@pytest.mark.parametrize("method", METHODS)
def test_leaky_model_refuses_an_image_without_its_report(method):
    model = make_model(method, True).eval()
    with pytest.raises(MedHashError, match=LEAK_OPTION), torch.no_grad():
        model.encode_image(torch.rand(2, 3, 64, 64), _metas(None))


@pytest.mark.parametrize(("method", "components"), [("tripah", {"triview": False}), ("prompthash", {"agsf": False})])
def test_leak_without_the_fusion_blocks_still_reads_the_report(method, components):
    model = make_model(method, True, components).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert _differ(model.encode_image(images, _metas(REPORT_A)), model.encode_image(images, _metas(REPORT_B)))


def test_loaders_fill_the_paired_report_only_when_asked(tmp_path):
    samples = make_samples(tmp_path / "images", n=3)
    model = make_model("tripah", False)
    kw = {"batch_size": 3}
    honest = next(iter(make_loader(samples, model.backbone.eval_transform, model.backbone.tokenizer, LABELS, **kw)))
    assert all(PAIRED_REPORT_KEY not in m for m in honest.extras["meta"])
    leaky = next(iter(make_loader(samples, model.backbone.eval_transform, model.backbone.tokenizer, LABELS,
                                  paired_report=True, **kw)))
    assert [m[PAIRED_REPORT_KEY] for m in leaky.extras["meta"]] == [s.report for s in samples]


@pytest.mark.parametrize("method", METHODS)
def test_encode_dataset_gives_the_leaky_model_its_reports_and_the_honest_one_none(method, tmp_path):
    samples = make_samples(tmp_path / "images", n=4)
    changed = [Sample(id=s.id, image_path=s.image_path, report=REPORT_B if i == 0 else s.report, labels=s.labels,
                      patient_id=s.patient_id, metadata=s.metadata) for i, s in enumerate(samples)]
    for leak in (True, False):
        model = make_model(method, leak)
        assert model.needs_paired_report is leak
        before, _ = encode_dataset(model, samples, batch_size=4, reports=False)
        after, _ = encode_dataset(model, changed, batch_size=4, reports=False)
        moved = [bool((before[32][i] != after[32][i]).any()) for i in range(4)]
        assert moved == ([True, False, False, False] if leak else [False] * 4), (leak, moved)


def test_cached_stems_path_gives_the_leaky_model_its_reports_too(tmp_path):
    samples = make_samples(tmp_path / "images", n=4)
    changed = [Sample(id=s.id, image_path=s.image_path, report=REPORT_B if i == 1 else s.report, labels=s.labels,
                      patient_id=s.patient_id, metadata=s.metadata) for i, s in enumerate(samples)]
    model = make_model("prompthash", True).eval()
    cache = FeatureCache.for_model(model, tmp_path / "cache")
    cache.prepare(samples + changed, device=torch.device("cpu"), batch_size=4)
    before, _ = encode_dataset(model, samples, batch_size=4, cache=cache, reports=False)
    after, _ = encode_dataset(model, changed, batch_size=4, cache=cache, reports=False)
    assert [bool((before[32][i] != after[32][i]).any()) for i in range(4)] == [False, True, False, False]


@pytest.mark.parametrize("method", METHODS)
def test_leaky_model_trains_and_evaluates_on_the_research_path(method, tmp_path):
    model = make_model(method, True)
    samples = make_samples(tmp_path / "images", n=12)
    tok = model.backbone.tokenizer
    metas = [{} for _ in samples[:4]]
    tokens = tok([s.report for s in samples[:4]], metas=metas) if getattr(tok, "accepts_meta", False) else \
        tok([s.report for s in samples[:4]])
    labels = torch.eye(len(LABELS))[[LABELS.index(s.labels[0]) for s in samples[:4]]]
    batch = Batch(images=torch.rand(4, 3, 64, 64), tokens=tokens, labels=labels, index=torch.arange(4),
                  extras={"meta": metas})  # training reads the in-batch reports, not the meta
    model.train()
    terms = model.loss_terms(batch, TrainConfig(epochs=2), epoch=1)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    splits = make_splits(samples, sizes={"query": 4, "retrieval": 8, "train": 6, "val": 2}, seed=0)
    out = evaluate_in_memory(model.eval(), splits, batch_size=4)
    assert 0.0 <= out["metrics"]["i2t@32"]["map_all"] <= 1.0


def test_the_app_refuses_to_train_a_leaky_model():
    request = TrainRequest(method="tripah", options={LEAK_OPTION: True})
    with pytest.raises(ModelError, match=LEAK_OPTION):
        train_on_library(None, request)  # refused before the session is touched


@pytest.mark.parametrize("method", METHODS)
def test_the_app_refuses_to_register_a_leaky_checkpoint(method, tmp_path):
    leaky = save_checkpoint(tmp_path / "leaky", make_model(method, True))
    honest = save_checkpoint(tmp_path / "honest", make_model(method, False))
    with MedHashSession(tmp_path / "library", create=True, device="cpu") as session:
        with pytest.raises(MedHashError, match=LEAK_OPTION):
            session.register_checkpoint(leaky)
        assert session.models() == []
        session.register_checkpoint(honest)
        assert len(session.models()) == 1
