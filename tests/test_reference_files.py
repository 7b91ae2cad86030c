"""Calibration references kept on disk between sessions (core/search/reference_files.py): reused only
for the same key and an intact file, rebuilt otherwise; a search in a new session answers the same."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medhash_app.core.search import SearchQuery
from medhash_app.core.search.reference_files import load_or_build
from medhash_app.core.session import MedHashSession


@dataclass
class Ref:
    points: np.ndarray
    threshold: float
    cases: int


def _builder(calls: list[int], value: float = 1.5):
    def build() -> Ref:
        calls.append(1)
        return Ref(np.arange(12, dtype=np.float32).reshape(3, 4), value, 3)
    return build


def test_round_trip_and_key_change(tmp_path: Path) -> None:
    calls: list[int] = []
    first = load_or_build(tmp_path, "r", "key-1", Ref, _builder(calls))
    again = load_or_build(tmp_path, "r", "key-1", Ref, _builder(calls))
    assert len(calls) == 1 and again.threshold == 1.5 and isinstance(again.threshold, float)
    assert again.cases == 3 and isinstance(again.cases, int) and np.array_equal(again.points, first.points)
    other = load_or_build(tmp_path, "r", "key-2", Ref, _builder(calls, 2.5))
    assert len(calls) == 2 and other.threshold == 2.5


@pytest.mark.parametrize("damage", ["garbage", "truncated", "values"])
def test_damaged_file_is_rebuilt(tmp_path: Path, damage: str) -> None:
    calls: list[int] = []
    load_or_build(tmp_path, "r", "k", Ref, _builder(calls))
    path = tmp_path / "r.ref.npz"
    if damage == "garbage":
        path.write_bytes(b"not a zip")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:  # a readable file whose numbers differ from the ones it was written with
        with np.load(path) as data:
            arrays = {n: data[n] for n in data.files}
        arrays["points"] = arrays["points"] + 1
        with path.open("wb") as fh:
            np.savez(fh, **arrays)
    got = load_or_build(tmp_path, "r", "k", Ref, _builder(calls))
    assert len(calls) == 2 and np.array_equal(got.points, np.arange(12, dtype=np.float32).reshape(3, 4))


def _summary(result) -> tuple:
    return (result.out_of_domain, result.out_of_domain_reason, result.domain_score, result.domain_threshold,
            [(h.case["id"], h.distance, h.closer_than) for h in result.hits])


@pytest.fixture
def library(tiny_library: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "lib"
    shutil.copytree(tiny_library, copy)
    return copy


def test_new_session_answers_the_same_from_saved_references(library: Path) -> None:
    with MedHashSession(library, device="cpu") as session:
        query = Path(next(c for c in session.library.iter_cases() if c["domain"] == "chest")["source_path"])
        first = session.search(SearchQuery(image_path=query, k=10))
    saved = sorted(p.name for p in (library / "indexes").glob("*.ref.npz"))
    assert "image-stats.ref.npz" in saved and any(n.startswith("ood-") for n in saved)
    assert any(n.startswith("match-") for n in saved)
    shutil.rmtree(library / "inputs")  # the image-statistics reference can now only come from its file
    with MedHashSession(library, device="cpu") as session:
        assert _summary(session.search(SearchQuery(image_path=query, k=10))) == _summary(first)


def test_changed_codes_rebuild_the_code_references(library: Path) -> None:
    with MedHashSession(library, device="cpu") as session:
        query = Path(next(c for c in session.library.iter_cases() if c["domain"] == "chest")["source_path"])
        session.search(SearchQuery(image_path=query, k=5))
        model = session.active_model()
        bits = max(model["bits"])
        name = f"ood-m{model['id']}-image-{bits}.ref.npz"
        before = (library / "indexes" / name).read_bytes()
        ids, codes = session.library.get_codes(model["id"], "image", bits)
        session.library.put_codes(model["id"], "image", bits, list(ids[:3]), 255 - codes[:3])
        session.searcher.invalidate()
        session.search(SearchQuery(image_path=query, k=5))
        assert (library / "indexes" / name).read_bytes() != before
