"""The out-of-domain checks beside the code distance: words for report queries (TF-IDF over the
library's reports, core/search/lexical.py) and the backbone's pretrained image features
(core/search/feature_ood.py, captured in the encoding forward by core/encoder/stem_features.py);
on real reports, on a real library (SQLite + a trained tiny model) through the service and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medhash_app.core.encoder.stem_features import checkpoint_identity, load_features
from medhash_app.core.search import SearchQuery
from medhash_app.core.search.domain_checks import Verdict, combine
from medhash_app.core.search.feature_ood import build_feature_reference
from medhash_app.core.search.lexical import build_lexical_reference
from medhash_app.core.session import MedHashSession
from tests.test_image_stats import ct_slice

INVOICE = "Quarterly invoice: 12 units at 40 EUR, VAT included, payable by bank transfer within 30 days."


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.shared_data
def test_word_check_flags_chest_reports_and_ct_captions_in_a_fundus_library(odir_dir: Path, iu_reports: Path,
                                                                            shared_data: Path) -> None:
    odir = [r["report"] for r in _jsonl(odir_dir / "pairs.jsonl")]
    ref = build_lexical_reference(odir[:600])
    assert ref is not None
    held = [ref.is_out(ref.score(t)) for t in odir[600:900]]
    assert np.mean(held) <= 0.05  # in domain: ODIR reports that are not in the library
    chest = [" ".join(filter(None, (r.get("findings"), r.get("impression")))) for r in _jsonl(iu_reports)[:200]]
    chest = [t for t in chest if t.strip()]
    assert np.mean([ref.is_out(ref.score(t)) for t in chest]) >= 0.95  # the code check got 83 %
    medpix = shared_data / "medpix2" / "pairs.jsonl"
    if medpix.is_file():
        captions = [r["report"] for r in _jsonl(medpix)[:100] if (r.get("report") or "").strip()]
        assert np.mean([ref.is_out(ref.score(t)) for t in captions]) >= 0.95  # the code check got 76 %


def test_word_check_needs_enough_reports_and_scores_same_words_as_in_domain() -> None:
    assert build_lexical_reference(["cataract"] * 5) is None
    reports = [f"{w} fundus, {v} retinopathy" for w in ("normal", "tessellated", "pale") for v in
               ("mild", "moderate", "severe", "no", "proliferative", "non proliferative", "diabetic")]
    ref = build_lexical_reference(reports)
    assert ref is not None
    assert not ref.is_out(ref.score("moderate non proliferative retinopathy"))
    assert ref.is_out(ref.score(INVOICE))


@pytest.mark.shared_data
def test_word_check_is_not_decisive_where_the_library_reports_vary_too_much(iu_reports: Path) -> None:
    """IU X-ray reports are so varied that no wording is foreign to them by words alone: the codes decide."""
    texts = [" ".join(filter(None, (r.get("findings"), r.get("impression")))) for r in _jsonl(iu_reports)[:1500]]
    ref = build_lexical_reference([t for t in texts if t.strip()])
    assert ref is not None and not ref.decisive and not ref.is_out(1.0)


def test_feature_reference_flags_far_vectors_and_few_held_out_ones() -> None:
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    library = centre + rng.normal(scale=0.3, size=(600, 64))
    ref = build_feature_reference(library)
    assert ref is not None
    fresh = [ref.is_out(ref.score(centre + rng.normal(scale=0.3, size=64))) for _ in range(200)]
    assert np.mean(fresh) <= 0.02
    assert all(ref.is_out(ref.score(rng.normal(size=64))) for _ in range(50))
    assert build_feature_reference(library[:5]) is None


def test_verdicts_combine_into_one_reason_naming_the_checks_that_fired() -> None:
    assert combine("image", [Verdict(None), Verdict(None)]) == (None, None)
    assert combine("text", [Verdict(False), Verdict(None)]) == (False, None)
    out, reason = combine("text", [Verdict(False), Verdict(True, "Word check: x.")])
    assert out is True and reason is not None
    assert reason.startswith("This report is unlike every case in this library.") and "Word check: x." in reason
    assert "Code check" not in reason


@pytest.fixture
def session(tiny_library: Path):
    with MedHashSession(tiny_library, device="cpu") as s:
        yield s


def test_encoding_captures_the_frozen_stem_features_in_the_same_forward(session: MedHashSession) -> None:
    model = session.active_model()
    encoder = session.encoders.get(model)
    case = next(iter(session.library.iter_cases()))
    img = Image.open(session.library.path_of(case["input_path"])).convert("RGB")
    got = encoder.encode_pil([img], embeddings=True).features
    assert got is not None and got.shape[0] == 1
    backbone = encoder.model.backbone
    with torch.inference_mode():
        stem = backbone.image_stem(backbone.preprocess(img)[None].to(encoder.device))
    assert np.allclose(got[0], stem.float().mean(dim=(2, 3))[0].cpu().numpy(), atol=1e-5)
    stored = load_features(session.library.folder, model["id"], checkpoint_identity(encoder.checkpoint_dir))
    assert set(stored) == set(session.library.case_ids())  # kept while the library was encoded
    assert np.allclose(stored[case["id"]], got[0], atol=1e-2)  # float16 on disk


def test_report_query_worded_unlike_the_library_is_out_and_typical_wording_is_in(session: MedHashSession) -> None:
    result = session.search(SearchQuery(text=INVOICE, k=5))
    assert result.out_of_domain is True and "check:" in (result.out_of_domain_reason or "")
    report = next(c["report"] for c in session.library.iter_cases() if c.get("report"))
    plain = session.search(SearchQuery(text=report, k=5))
    assert plain.out_of_domain is False and plain.out_of_domain_reason is None


@pytest.mark.shared_data
def test_service_lets_words_decide_where_they_can(session: MedHashSession, odir_dir: Path, iu_reports: Path,
                                                  monkeypatch) -> None:
    """With a decisive word check (real ODIR reports), foreign wording is out by words, and wording as
    typical as the library's is in even when the codes say otherwise."""
    ref = build_lexical_reference([r["report"] for r in _jsonl(odir_dir / "pairs.jsonl")[:600]])
    assert ref is not None and ref.decisive
    monkeypatch.setattr(session.searcher, "_lexical", lambda: ref)
    chest = next(" ".join(filter(None, (r.get("findings"), r.get("impression")))) for r in _jsonl(iu_reports)
                 if r.get("findings"))
    result = session.search(SearchQuery(text=chest, k=5))
    assert result.out_of_domain is True and "Word check:" in (result.out_of_domain_reason or "")
    assert "Code check" not in (result.out_of_domain_reason or "")
    typical = session.search(SearchQuery(text="moderate non proliferative retinopathy", k=5))
    assert typical.out_of_domain is False


def test_ct_slice_query_is_flagged_by_the_image_feature_check(session: MedHashSession, tmp_path: Path) -> None:
    ct_slice(np.random.default_rng(5)).save(tmp_path / "ct.png")
    result = session.search(SearchQuery(image_path=tmp_path / "ct.png", k=5))
    assert result.out_of_domain is True
    assert "Image feature check:" in (result.out_of_domain_reason or "")
    case = next(iter(session.library.iter_cases()))
    assert session.search(SearchQuery(image_path=Path(case["source_path"]), k=5)).out_of_domain is False


def test_cli_json_says_a_foreign_report_is_out_and_why(tiny_library: Path) -> None:
    from medhash_app.cli import app

    out = CliRunner().invoke(app, ["search", "--library", str(tiny_library), "--text", INVOICE, "--device", "cpu",
                                   "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["out_of_domain"] is True and "check:" in data["out_of_domain_reason"]


def test_stored_features_survive_a_moved_library_but_not_another_checkpoint(tmp_path: Path) -> None:
    from medhash_app.core.encoder.stem_features import save_features

    def checkpoint(root: Path, size: int) -> Path:
        folder = root / "models" / "base-64-s0-1" / "best"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * size)
        return folder

    here, moved, other = checkpoint(tmp_path / "a", 10), checkpoint(tmp_path / "b", 10), checkpoint(tmp_path / "c", 11)
    save_features(tmp_path / "a", 1, checkpoint_identity(here), ["c1", "c2"], np.ones((2, 4), np.float32))
    assert set(load_features(tmp_path / "a", 1, checkpoint_identity(moved))) == {"c1", "c2"}
    assert load_features(tmp_path / "a", 1, checkpoint_identity(other)) == {}
