"""Out-of-domain queries: the calibrated k-NN check (core/search/ood.py) on synthetic codes, and on
a real library (SQLite + FAISS + a trained tiny model) through the service, the CLI and its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from medhash_app.core.search import SearchQuery
from medhash_app.core.search.ood import PERCENTILE, build_match_reference, build_reference, knn_scores
from medhash_app.core.session import MedHashSession


def _clustered(rng: np.random.Generator, centres: np.ndarray, n: int, flips: int = 4) -> np.ndarray:
    """n packed codes around the centres, each row `flips` random bits away from its centre."""
    rows = np.unpackbits(centres[rng.integers(0, len(centres), n)], axis=1)
    for row in rows:
        row[rng.choice(rows.shape[1], flips, replace=False)] ^= 1
    return np.packbits(rows, axis=1)


def test_reference_flags_far_codes_and_few_held_out_in_domain_codes() -> None:
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, size=(3, 8), dtype=np.uint8)
    library = _clustered(rng, centres, 600)
    ref = build_reference(library)
    assert ref is not None and ref.cases == 600
    in_domain = knn_scores(_clustered(rng, centres, 300), library, ref.k)  # new codes, same domain
    outside = knn_scores(rng.integers(0, 256, size=(300, 8), dtype=np.uint8), library, ref.k)
    assert np.mean([ref.is_out(s) for s in in_domain]) <= 0.05
    assert np.mean([ref.is_out(s) for s in outside]) >= 0.95
    assert ref.threshold >= np.percentile(ref.scores, PERCENTILE)


def test_too_small_a_library_gives_no_verdict() -> None:
    codes = np.random.default_rng(1).integers(0, 256, size=(5, 8), dtype=np.uint8)
    assert build_reference(codes) is None


def test_match_reference_is_a_share_of_in_domain_matches() -> None:
    rng = np.random.default_rng(2)
    codes = _clustered(rng, rng.integers(0, 256, size=(3, 8), dtype=np.uint8), 300)
    ids = np.array([f"c{i}" for i in range(300)])
    ref = build_match_reference(ids, codes, ids, codes)
    assert ref is not None
    assert ref.closer_than(-1) == 1.0 and ref.closer_than(64) == 0.0
    assert 0.0 <= ref.closer_than(float(np.median(ref.distances))) <= 0.5


def screenshot_png(path: Path) -> Path:
    """A UI-like image: light window, title bar, buttons, text lines, a table grid (no medical content)."""
    img = Image.new("RGB", (640, 420), (240, 240, 240))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, 640, 30), fill=(45, 90, 160))
    for x in range(10, 600, 110):
        d.rectangle((x, 40, x + 95, 65), fill=(220, 220, 225), outline=(120, 120, 120))
        d.text((x + 8, 46), "Button", fill=(0, 0, 0))
    for y in range(80, 400, 22):
        d.line((10, y, 630, y), fill=(190, 190, 190))
        d.text((16, y + 5), "Rank  case 1234  cataract  0.59", fill=(20, 20, 20))
    img.save(path)
    return path


@pytest.fixture
def session(tiny_library: Path):
    with MedHashSession(tiny_library, device="cpu") as s:
        yield s


def test_in_domain_image_is_not_flagged_and_hits_are_calibrated(session: MedHashSession) -> None:
    flagged = 0
    cases = [c for c in session.library.iter_cases()][:20]
    for case in cases:
        result = session.search(SearchQuery(image_path=Path(case["source_path"]), k=5))
        assert result.out_of_domain is not None and result.domain_threshold is not None
        flagged += bool(result.out_of_domain)
        assert all(h.closer_than is not None and 0.0 <= h.closer_than <= 1.0 for h in result.hits)
    assert flagged <= 1


def test_screenshot_query_is_out_of_domain_in_result_and_json(session: MedHashSession, tmp_path: Path) -> None:
    result = session.search(SearchQuery(image_path=screenshot_png(tmp_path / "screen.png"), k=5))
    assert result.out_of_domain is True
    assert "unlike every case in this library" in (result.out_of_domain_reason or "")
    data = result.to_dict()
    assert data["out_of_domain"] is True and data["out_of_domain_reason"] == result.out_of_domain_reason
    assert data["domain_score"] > data["domain_threshold"]


def test_cli_search_json_and_table_say_out_of_domain(tiny_library: Path, tmp_path: Path) -> None:
    from medhash_app.cli import app

    shot = screenshot_png(tmp_path / "screen.png")
    runner = CliRunner()
    out = runner.invoke(app, ["search", "--library", str(tiny_library), "--image", str(shot), "--device", "cpu",
                              "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["out_of_domain"] is True and data["out_of_domain_reason"]
    assert all("closer_than" in h for h in data["hits"])
    table = runner.invoke(app, ["search", "--library", str(tiny_library), "--image", str(shot), "--device", "cpu"],
                          env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "Out of domain:" in table.output and "closer than" in table.output
    case = next(iter(MedHashSession(tiny_library, device="cpu").library.iter_cases()))
    plain = runner.invoke(app, ["search", "--library", str(tiny_library), "--image", case["source_path"],
                                "--device", "cpu", "--json"])
    assert json.loads(plain.stdout)["out_of_domain"] is False
