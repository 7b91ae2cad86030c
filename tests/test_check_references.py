"""The word and image-feature references kept on disk (core/search/check_references.py): written once,
reused by the next session without building, rebuilt when a report, a case or the checkpoint changes
or the file is damaged, loaded by warm_up; verdicts identical with and without the saved files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medhash_app.core.search import SearchQuery, check_references
from medhash_app.core.search.check_references import LexicalArrays, lexical_from_arrays, lexical_to_arrays
from medhash_app.core.search.lexical import build_lexical_reference
from medhash_app.core.search.reference_files import _write
from medhash_app.core.session import MedHashSession
from tests.test_image_stats import ct_slice

INVOICE = "Quarterly invoice: 12 units at 40 EUR, VAT included, payable by bank transfer within 30 days."
LEX = "lexical.ref.npz"


@pytest.fixture
def library(tiny_library: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "lib"
    shutil.copytree(tiny_library, copy)
    for ref in (copy / "indexes").glob("*.ref.npz"):
        ref.unlink()
    ct_slice(np.random.default_rng(5)).save(tmp_path / "ct.png")
    return copy


@pytest.fixture
def builds(monkeypatch) -> dict[str, int]:
    """How often each reference was built (the real builders, counted)."""
    calls = {"words": 0, "features": 0}

    def counted(name: str, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(check_references, "build_lexical_reference",
                        counted("words", check_references.build_lexical_reference))
    monkeypatch.setattr(check_references, "library_feature_reference",
                        counted("features", check_references.library_feature_reference))
    return calls


def _feature_file(library: Path) -> Path:
    return next((library / "indexes").glob("image-features-m*.ref.npz"))


def _answers(library: Path) -> list[tuple]:
    """Verdicts, reasons, domains and hits of a report, a foreign text, a library image and a CT slice."""
    with MedHashSession(library, device="cpu") as session:
        cases = list(session.library.iter_cases())
        queries = [SearchQuery(text=next(c["report"] for c in cases if c.get("report")), k=5),
                   SearchQuery(text=INVOICE, k=5),
                   SearchQuery(image_path=Path(next(c for c in cases if c["domain"] == "chest")["source_path"]), k=5),
                   SearchQuery(image_path=library.parent / "ct.png", k=5)]
        out = []
        for q in queries:
            r = session.search(q)
            out.append((r.out_of_domain, r.out_of_domain_reason, r.query_domain,
                        [(h.case["id"], h.distance) for h in r.hits]))
        return out


def test_written_once_then_reused_with_the_same_answers(library: Path, builds: dict[str, int]) -> None:
    first = _answers(library)
    assert builds == {"words": 1, "features": 1}
    assert (library / "indexes" / LEX).is_file() and _feature_file(library).is_file()
    stamps = {p: p.stat().st_mtime_ns for p in (library / "indexes" / LEX, _feature_file(library))}
    assert first[1][0] is True and first[3][0] is True  # the invoice and the CT slice are out of domain
    again = _answers(library)
    assert builds == {"words": 1, "features": 1}  # the second session built nothing
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_changed_report_added_case_and_new_weights_rebuild(library: Path, builds: dict[str, int]) -> None:
    _answers(library)
    with MedHashSession(library, device="cpu") as session:
        session.library.db.execute("UPDATE cases SET report = report || ' Small effusion.' WHERE seq = "
                                   "(SELECT min(seq) FROM cases WHERE report != '')")
        session.library.db.conn.commit()
    _answers(library)
    assert builds == {"words": 2, "features": 1}  # a report changed: words only
    with MedHashSession(library, device="cpu") as session:
        case = next(iter(session.library.iter_cases()))
        assert session.library.add_cases([{**case, "id": "f" * 64}]) == 1
    _answers(library)
    assert builds == {"words": 3, "features": 2}  # a case with an image and a report added: both
    with MedHashSession(library, device="cpu") as session:
        weights = Path(session.active_model()["checkpoint_path"]) / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    _answers(library)
    assert builds == {"words": 3, "features": 3}  # the checkpoint written again: features only


@pytest.mark.parametrize("damage", ["garbage", "inconsistent"])
def test_damaged_file_is_rebuilt_with_the_same_answers(library: Path, builds: dict[str, int], damage: str) -> None:
    first = _answers(library)
    path = library / "indexes" / LEX
    if damage == "garbage":
        path.write_bytes(path.read_bytes()[:300])
        _feature_file(library).write_bytes(b"not a zip")
    else:  # an intact digest over arrays that do not fit together: the vocabulary offsets run past the bytes
        with MedHashSession(library, device="cpu") as session:
            arrays = lexical_to_arrays(session.searcher._lexical())
        arrays.words_ends = arrays.words_ends + 1
        with np.load(path) as data:
            key = __import__("json").loads(str(data["__meta__"]))["key"]
        _write(path, key, arrays)
    assert _answers(library) == first
    assert builds["words"] == 2 and builds["features"] == (2 if damage == "garbage" else 1)
    assert _answers(library) == first and builds["words"] == 2  # the rebuilt file is good again


def test_warm_up_loads_them_so_the_first_search_builds_nothing(library: Path, builds: dict[str, int]) -> None:
    _answers(library)
    with MedHashSession(library, device="cpu") as session:
        session.warm_up()
        for ref in (library / "indexes").glob("*.ref.npz"):
            ref.unlink()  # from here on only what warm_up loaded can answer
        session.search(SearchQuery(text=INVOICE, k=5))
        session.search(SearchQuery(image_path=library.parent / "ct.png", k=5))
    assert builds == {"words": 1, "features": 1}
    assert not (library / "indexes" / LEX).exists()


def test_vectorizers_round_trip_through_plain_arrays_exactly(tiny_library: Path) -> None:
    with MedHashSession(tiny_library, device="cpu") as session:
        rows = session.library.reports()
    ref = build_lexical_reference([r or "" for r, _ in rows], [d for _, d in rows])
    arrays = lexical_to_arrays(ref)
    assert isinstance(arrays, LexicalArrays) and arrays.words_terms.dtype == np.uint8
    back = lexical_from_arrays(arrays)
    texts = [INVOICE, rows[0][0], "Hérnia hiatal, côté gauche; ß"]
    for old, new in ((ref.words, back.words), (ref.chars, back.chars)):
        assert (old.transform(texts) != new.transform(texts)).nnz == 0
    assert (ref.matrix != back.matrix).nnz == 0 and back.threshold == ref.threshold
    assert [back.score(t) for t in texts] == [ref.score(t) for t in texts]
    assert [back.domain_of(t) for t in texts] == [ref.domain_of(t) for t in texts]


def test_encoding_the_library_builds_them_so_its_next_opening_builds_nothing(library: Path,
                                                                             builds: dict[str, int]) -> None:
    with MedHashSession(library, device="cpu") as session:
        session.encode_library()  # the active model; every case is already encoded, the checks are not
    names = sorted(p.name for p in (library / "indexes").glob("*.ref.npz"))
    assert LEX in names and "image-stats.ref.npz" in names and _feature_file(library).name in names
    assert builds == {"words": 1, "features": 1}
    _answers(library)  # a later session: the saved references answer
    assert builds == {"words": 1, "features": 1}


def test_a_grid_run_encoding_leaves_the_checks_to_the_search(library: Path, builds: dict[str, int]) -> None:
    with MedHashSession(library, device="cpu") as session:
        session.encode_library(prepare_checks=False)
    assert not list((library / "indexes").glob("*.ref.npz"))
    assert builds == {"words": 0, "features": 0}
