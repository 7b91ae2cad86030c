"""Long reports for BASE and the text window of every method: chunked codes pool within one report,
"sections" puts the impression first, `text_window` caps the tokens and survives checkpoints."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_synth import SHAPES, make_samples

from trainer.checkpoint import CONFIG, load_checkpoint
from trainer.config import ModelConfig, TrainConfig, load_json, save_json
from trainer.data.long_text import LongTextTokenizer, prepare_text
from trainer.data.splits import make_splits
from trainer.engine import encode_dataset, fit
from trainer.errors import MedHashError
from trainer.feature_cache import IMAGE, TEXT, FeatureCache
from trainer.models import build_backbone, build_model

FILLER = ["the", "lungs", "are", "clear", "bilaterally", "without", "focal", "consolidation", "and", "osseous",
          "structures", "intact", "with", "degenerative", "change", "of", "thoracic", "spine"]
IMPRESSION = "Moderate cardiomegaly with small bilateral pleural effusions."


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: no thread hand-offs


def long_report(words: int = 60, seed: int = 0) -> str:
    rng = random.Random(seed)
    body = " ".join(rng.choice(FILLER) for _ in range(words))
    return f"INDICATION: Dyspnea.\nCOMPARISON: None.\nFINDINGS: {body}.\nIMPRESSION: {IMPRESSION}"


def _base(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = {"backbone": "tiny", "bits": [16, 32], "embed_dim": 32, "label_names": ["a", "b"], **kw}
    return build_model(ModelConfig(**cfg)).eval()


@pytest.mark.parametrize("pool", ["mean", "attention"])
def test_base_chunked_code_of_a_report_does_not_depend_on_its_batch(pool: str) -> None:
    model = _base(text_window=16, options={"long_text": "chunks", "chunk_pool": pool})
    if model.chunk_score is not None:  # a non-trivial scorer, so attention weights differ from the mean
        torch.nn.init.normal_(model.chunk_score.weight, std=1.0)
    tok = model.backbone.tokenizer
    report = long_report(50)
    assert len(prepare_text(report, "chunks", tok.base, 16)) >= 4
    with torch.no_grad():
        alone = model.encode_text(tok([report]))
        batched = model.encode_text(tok(["no acute disease", report, long_report(90, seed=3)]))
        first_window = model.encode_text(tok.base([report]))  # what the tower alone would see
    for bits in (16, 32):
        torch.testing.assert_close(batched[bits][1], alone[bits][0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(alone[32], first_window[32], atol=1e-4)  # later windows count


def test_chunked_base_without_long_reports_equals_plain_base() -> None:
    texts = ["small left pleural effusion", "no acute cardiopulmonary process"]
    plain, chunked = _base(), _base(options={"long_text": "chunks"})
    with torch.no_grad():
        a = plain.encode_text(plain.backbone.tokenizer(texts))
        b = chunked.encode_text(chunked.backbone.tokenizer(texts))
    torch.testing.assert_close(a[32], b[32], rtol=1e-5, atol=1e-6)


def test_sections_puts_the_impression_first_and_truncate_loses_it() -> None:
    report = long_report(80)
    sections = _base(text_window=16, options={"long_text": "sections"}).backbone.tokenizer
    truncate = _base(text_window=16, options={"long_text": "truncate"}).backbone.tokenizer
    base = sections.base
    wanted = base([f"IMPRESSION: {IMPRESSION}"])["input_ids"][0]
    got = sections([report])["input_ids"][0]
    assert got.shape[0] == 16 and torch.equal(got[: wanted.shape[0]], wanted)
    cut = set(truncate([report])["input_ids"][0].tolist())
    assert not set(base(["cardiomegaly effusions"])["input_ids"][0, 1:].tolist()) & cut


def test_text_window_caps_the_tokens_of_every_method() -> None:
    report = long_report(200)
    for method, options in (("base", {}), ("mcph", {"long_text": "chunks"}), ("tripah", {}),
                            ("prompthash", {"long_text": "truncate"})):
        model = _base(method=method, text_window=24, options=options)
        out = model.backbone.tokenizer([report, "short"])
        assert out["input_ids"].shape[1] == 24 and model.backbone.max_text_length == 24, method
        if "chunk_input_ids" in out:
            assert out["chunk_input_ids"].shape[1] <= 24 and out["chunk_owner"].max() == 1
    assert _base().backbone.tokenizer([report])["input_ids"].shape[1] == 64  # the tiny tower's own limit


def test_text_window_on_a_reused_backbone_can_be_widened_back() -> None:
    backbone = build_backbone("tiny")
    build_model(ModelConfig(backbone="tiny", bits=[16], text_window=8), backbone=backbone)
    assert backbone.max_text_length == 8
    model = build_model(ModelConfig(backbone="tiny", bits=[16]), backbone=backbone)
    assert model.backbone.max_text_length == 64
    assert model.backbone.tokenizer([long_report(100)])["input_ids"].shape[1] == 64


def test_text_window_on_the_embedded_tower_emulates_clip() -> None:
    from trainer.models.embedded import HFTokenizer, minilm_dir

    try:
        tokenizer = HFTokenizer(str(minilm_dir()), 256)
    except MedHashError as exc:
        pytest.skip(f"embedded text tower not installed: {exc}")
    backbone = build_backbone("tiny")  # the embedded tokenizer on a tiny tower: no 90 MB model to load
    backbone.tokenizer, backbone.max_text_length = tokenizer, 256
    cfg = ModelConfig(backbone="tiny", bits=[16], text_window=77, options={"long_text": "chunks"})
    model = build_model(cfg, backbone=backbone)
    out = model.backbone.tokenizer([long_report(300)])
    assert out["input_ids"].shape[1] == 77 and out["chunk_input_ids"].shape[1] == 77
    assert out["chunk_owner"].numel() >= 4
    with pytest.raises(MedHashError, match="text_window 300 exceeds .* 256 tokens"):
        build_model(ModelConfig(backbone="tiny", bits=[16], text_window=300), backbone=backbone)


def test_open_clip_tokenizer_takes_a_shorter_window() -> None:
    from trainer.models.openclip_arch import _Tokenizer

    tokenizer = _Tokenizer("ViT-B-32", 77)
    tokenizer.max_length = 32  # what apply_text_window sets
    ids = tokenizer([long_report(100), "short"])["input_ids"]
    assert ids.shape == (2, 32) and int(ids[0, -1]) == int(ids.max())  # still ends in CLIP's EOT (its largest id)


def test_feature_cache_keeps_report_stems_only_for_one_text_per_report(tmp_path: Path) -> None:
    kinds = {mode: FeatureCache.for_model(_base(options={"long_text": mode}), tmp_path).modalities
             for mode in (None, "sections", "chunks")}
    assert kinds == {None: {IMAGE, TEXT}, "sections": {IMAGE, TEXT}, "chunks": {IMAGE}}


def test_base_trains_on_chunked_reports_and_reloads(tmp_path: Path) -> None:
    samples = make_samples(tmp_path / "shapes", n=24, seed=1)
    for i, s in enumerate(samples):
        s.report = f"FINDINGS: {' '.join(FILLER[: 6 + i % 9])}. IMPRESSION: {s.report}"
    splits = make_splits(samples, fractions={"query": 0.2, "val": 0.2, "train": 0.6}, seed=0)
    cfg = ModelConfig(backbone="tiny", bits=[16, 32], embed_dim=32, text_window=8,
                      options={"long_text": "chunks", "chunk_pool": "attention"})
    train = TrainConfig(epochs=2, batch_size=4, lr=1e-3, num_workers=0, device="cpu", warmup_steps=1, seed=0,
                        cache_dir=str(tmp_path / "cache"))
    result = fit(cfg, train, splits, tmp_path / "run")
    assert result.epochs_run == 2 and all(np.isfinite(h["losses"]["total"]) for h in result.history)
    model, loaded_cfg, meta = load_checkpoint(result.checkpoint_dir)
    assert loaded_cfg.text_window == 8 and meta["preprocessing"]["max_text_length"] == 8
    tok = model.backbone.tokenizer
    assert isinstance(tok, LongTextTokenizer) and tok.mode == "chunks" and tok.max_len == 8
    assert int(tok([samples[0].report])["chunk_owner"].numel()) >= 2
    img, txt = encode_dataset(model, splits.query, batch_size=3)
    again_img, again_txt = encode_dataset(model, splits.query, batch_size=5)
    np.testing.assert_allclose(txt[32], again_txt[32], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(img[32], again_img[32], rtol=1e-5, atol=1e-6)


def test_config_round_trip_and_old_checkpoints_without_a_window(tmp_path: Path) -> None:
    cfg = ModelConfig(backbone="tiny", bits=[16], text_window=77, options={"long_text": "sections"},
                      label_names=sorted(SHAPES))
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    save_json(cfg, tmp_path / "model.json")
    assert load_json(ModelConfig, tmp_path / "model.json") == cfg
    plain = ModelConfig(backbone="tiny", bits=[16])
    assert "text_window" not in plain.to_dict()  # as written before the field existed (resume, fingerprints)
    assert ModelConfig.from_dict(plain.to_dict()) == plain

    samples = make_samples(tmp_path / "shapes", n=12, seed=0)
    splits = make_splits(samples, fractions={"query": 0.25, "val": 0.25, "train": 0.5}, seed=0)
    train = TrainConfig(epochs=1, batch_size=3, num_workers=0, device="cpu", warmup_steps=1, feature_cache=False)
    result = fit(ModelConfig(backbone="tiny", bits=[16], embed_dim=32), train, splits, tmp_path / "run")
    config_file = result.checkpoint_dir / CONFIG
    assert "text_window" not in json.loads(config_file.read_text(encoding="utf-8"))["model_config"]
    model, loaded, _ = load_checkpoint(result.checkpoint_dir)
    assert loaded.text_window is None and model.backbone.max_text_length == 64


@pytest.mark.parametrize(("kw", "match"), [
    ({"options": {"long_txt": "chunks"}}, "unknown BASE option.*long_txt"),
    ({"options": {"long_text": "summarise"}}, "long_text must be None or one of"),
    ({"options": {"long_text": "chunks", "chunk_pool": "max"}}, "chunk_pool must be one of"),
    ({"text_window": 65}, "text_window 65 exceeds the tiny text tower's limit of 64"),
])
def test_bad_base_options_and_windows_are_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(MedHashError, match=match):
        _base(**kw)


@pytest.mark.parametrize("window", [2, True, "77", 7.5])
def test_bad_text_window_values_are_rejected_by_the_config(window: object) -> None:
    with pytest.raises(MedHashError, match="text_window must be a whole number"):
        ModelConfig(text_window=window)


def test_mcph_keeps_its_own_options() -> None:
    model = _base(method="mcph", options={"long_text": "sections", "top_m": 4})
    assert model.backbone.tokenizer.mode == "sections" and model.chunk_score is None
    with pytest.raises(MedHashError, match="unknown MCPH option"):
        _base(method="mcph", options={"chunk_pool": "attention"})
