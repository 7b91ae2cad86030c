"""Search over a real library (SQLite + FAISS + a trained tiny model): ranking rule, targets,
filters, re-ranking, index cache damage, and the encoder's per-item rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhash_app.core.errors import InvalidReportError, MedHashError, ModelError
from medhash_app.core.library import Library
from medhash_app.core.search import SearchFilters, SearchQuery
from medhash_app.core.session import MedHashSession
from trainer.evaluate import hamming_distances


@pytest.fixture
def session(tiny_library: Path):
    with MedHashSession(tiny_library, device="cpu") as s:
        yield s


def _chest_file(session: MedHashSession) -> Path:
    case = next(c for c in session.library.iter_cases() if c["domain"] == "chest")
    return Path(case["source_path"])


def _brute_force(session: MedHashSession, query_code: np.ndarray, modality: str, bits: int,
                 allowed: set[str] | None = None) -> list[tuple[int, str]]:
    """(distance, case id) in the documented order: distance, then database position."""
    model = session.active_model()
    ids, codes = session.library.get_codes(model["id"], modality, bits)
    dist = hamming_distances(query_code[None, :], codes)[0]
    order = np.argsort(dist, kind="stable")
    return [(int(dist[i]), str(ids[i])) for i in order if allowed is None or ids[i] in allowed]


def _in_domain(session: MedHashSession, domain: str | None) -> set[str] | None:
    """The cases a report query clearly worded in one domain is ranked among (core/search/lexical.py)."""
    return None if domain is None else {c["id"] for c in session.library.iter_cases() if c["domain"] == domain}


def test_text_query_ranks_images_exactly_by_the_documented_rule(session: MedHashSession) -> None:
    text = "Large left pleural effusion. Heart size is enlarged."
    result = session.search(SearchQuery(text=text, k=25))
    assert result.query_kind == "text" and all(h.matched == "image" for h in result.hits)
    encoder = session.encoders.get(session.active_model())
    code = encoder.encode_texts([text]).codes[result.bits][0]
    assert result.query_domain == "chest"
    expected = _brute_force(session, code, "image", result.bits, _in_domain(session, result.query_domain))[:25]
    assert [(h.distance, h.case["id"]) for h in result.hits] == expected
    assert result.hits[0].similarity == pytest.approx(1 - result.hits[0].distance / result.bits)
    assert "Pleural Effusion" in result.query_findings and "Cardiomegaly" in result.query_findings


def test_image_query_returns_reports_and_same_file_gives_same_code(session: MedHashSession) -> None:
    path = _chest_file(session)
    result = session.search(SearchQuery(image_path=path, k=5))
    assert result.query_kind == "image" and all(h.matched == "text" for h in result.hits)
    assert all(h.case["report"] for h in result.hits)
    distances = [h.distance for h in result.hits]
    assert distances == sorted(distances)
    case = next(c for c in session.library.iter_cases() if c["source_path"] == str(path))
    model = session.active_model()
    ids, codes = session.library.get_codes(model["id"], "image", result.bits)
    stored = codes[list(ids).index(case["id"])]
    encoder = session.encoders.get(model)
    assert np.array_equal(encoder.encode_files([path]).codes[result.bits][0], stored)


def test_both_targets_merge_without_duplicates(session: MedHashSession) -> None:
    result = session.search(SearchQuery(text="Normal chest radiograph.", target="both", k=30))
    ids = [h.case["id"] for h in result.hits]
    assert len(ids) == len(set(ids)) == 30
    assert {h.matched for h in result.hits} <= {"image", "text"}
    assert [h.distance for h in result.hits] == sorted(h.distance for h in result.hits)


def test_filters_rank_exactly_within_the_allowed_cases(session: MedHashSession) -> None:
    flt = SearchFilters(domain="fundus")
    text = "moderate non proliferative retinopathy"
    result = session.search(SearchQuery(text=text, k=10, filters=flt))
    allowed = set(session.library.case_ids(flt))
    assert result.hits and all(h.case["id"] in allowed for h in result.hits)
    encoder = session.encoders.get(session.active_model())
    code = encoder.encode_texts([text]).codes[result.bits][0]
    assert [(h.distance, h.case["id"]) for h in result.hits] == _brute_force(
        session, code, "image", result.bits, allowed)[:10]


def test_label_and_keyword_filters(session: MedHashSession) -> None:
    by_label = session.search(SearchQuery(text="cardiomegaly", k=50, filters=SearchFilters(labels=["Cardiomegaly"])))
    assert by_label.hits and all("Cardiomegaly" in h.case["labels"] for h in by_label.hits)
    keyword = session.search(SearchQuery(text="effusion", target="reports", k=50,
                                         filters=SearchFilters(keyword="pneumothorax")))
    assert keyword.hits and all("pneumothorax" in h.case["report"].lower() for h in keyword.hits)


def test_rerank_orders_the_shortlist_by_embedding_similarity(session: MedHashSession) -> None:
    result = session.search(SearchQuery(text="Pneumothorax at the right apex.", k=10, rerank=True))
    scores = [h.rerank_score for h in result.hits]
    assert all(s is not None for s in scores) and scores == sorted(scores, reverse=True)


def test_damaged_or_missing_index_file_is_rebuilt_and_results_stay_right(tiny_library: Path) -> None:
    query = SearchQuery(text="Heart size is enlarged.", k=15)
    with MedHashSession(tiny_library, device="cpu") as s:
        expected = [(h.distance, h.case["id"]) for h in s.search(query).hits]
        files = sorted((tiny_library / "indexes").glob("*.faissbin"))
    assert files
    files[0].write_bytes(b"\x00garbage" * 10)
    for f in files[1:]:
        f.unlink()
    with MedHashSession(tiny_library, device="cpu") as s:
        assert [(h.distance, h.case["id"]) for h in s.search(query).hits] == expected
        assert any("rebuilt" in v or "built" in v for v in s.searcher.indexes.last_status.values())


def test_image_code_is_per_item_and_independent_of_the_batch(session: MedHashSession) -> None:
    encoder = session.encoders.get(session.active_model())
    inputs = [session.library.path_of(c["input_path"]) for c in list(session.library.iter_cases())[:5]]
    images = [Image.open(p).convert("RGB") for p in inputs]
    alone = [encoder.encode_pil([im]) for im in images]
    together = encoder.encode_pil(list(reversed(images)))
    for bits in encoder.bits:
        stacked = np.concatenate([a.codes[bits] for a in alone])
        assert np.array_equal(stacked, together.codes[bits][::-1])
    texts = ["No acute disease.", "Large right pleural effusion.", "cataract"]
    solo = np.concatenate([encoder.encode_texts([t]).codes[encoder.bits[-1]] for t in texts])
    assert np.array_equal(solo, encoder.encode_texts(texts).codes[encoder.bits[-1]])


def test_bad_queries_are_explained(session: MedHashSession, tmp_path: Path) -> None:
    with pytest.raises(InvalidReportError):
        session.search(SearchQuery(text="   \n\t "))
    with pytest.raises(MedHashError, match="either an image file or a report text"):
        session.search(SearchQuery())
    with pytest.raises(ModelError, match="has no 24-bit codes"):
        session.search(SearchQuery(text="effusion", bits=24))
    bogus = tmp_path / "not-an-image.dcm"
    bogus.write_text("hello")
    with pytest.raises(MedHashError) as info:
        session.search(SearchQuery(image_path=bogus))
    assert "not-an-image.dcm" in str(info.value)
    huge = session.search(SearchQuery(text="effusion " * 10_000, k=3))
    assert len(huge.hits) == 3


def test_broken_checkpoints_give_clear_model_errors(tiny_library: Path, tmp_path: Path) -> None:
    import shutil

    from medhash_app.core.encoder import EncoderService

    with MedHashSession(tiny_library, device="cpu") as s:
        ckpt = Path(s.active_model()["checkpoint_path"])
    with pytest.raises(ModelError, match="not found"):
        EncoderService(tmp_path / "nowhere", device="cpu")
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match="damaged or truncated"):
        EncoderService(broken, device="cpu")


def test_a_copied_library_uses_its_own_model(tiny_library: Path, tmp_path: Path) -> None:
    """Checkpoints inside the library are stored relative to it: a copy searches with its own copy."""
    import shutil

    copy = tmp_path / "moved-library"
    shutil.copytree(tiny_library, copy)
    query = SearchQuery(text="Heart size is enlarged.", k=5)
    with MedHashSession(tiny_library, device="cpu") as original:
        expected = [(h.distance, h.case["id"]) for h in original.search(query).hits]
    with MedHashSession(copy, device="cpu") as moved:
        assert Path(moved.active_model()["checkpoint_path"]).is_relative_to(copy)
        assert [(h.distance, h.case["id"]) for h in moved.search(query).hits] == expected


def test_codes_rewritten_by_another_process_are_read_again(session: MedHashSession) -> None:
    """An app left open while `medhash encode` rewrites codes (same count) must not rank old codes."""
    text = "Large left pleural effusion. Heart size is enlarged."
    first = session.search(SearchQuery(text=text, k=10))
    model = session.active_model()
    ids, codes = session.library.get_codes(model["id"], "image", first.bits)
    with Library.open(session.library.folder) as other:  # a second connection, as another process has
        other.put_codes(model["id"], "image", first.bits, list(ids), np.ascontiguousarray(codes[::-1]))
    again = session.search(SearchQuery(text=text, k=10))
    code = session.encoders.get(model).encode_texts([text]).codes[first.bits][0]
    allowed = _in_domain(session, again.query_domain)
    assert [(h.distance, h.case["id"]) for h in again.hits] == _brute_force(session, code, "image", first.bits,
                                                                           allowed)[:10]
    assert [h.case["id"] for h in again.hits] != [h.case["id"] for h in first.hits]
