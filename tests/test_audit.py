"""Data audit: the per-pair scores (against brute force), the precision measure, the noisy-run
check on the tiny backbone, and the library audit over stored embeddings / codes."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from medhash_app.core.audit import audit_library
from medhash_app.core.errors import ModelError
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
from medhash_app.core.session import MedHashSession
from medhash_app.core.training import TrainRequest, train_on_library
from tests.trainer_synth import SHAPES, make_samples
from trainer.audit import audit_noisy_pairs, audit_precision, pair_scores, rank_scores
from trainer.checkpoint import load_checkpoint
from trainer.config import ModelConfig, TrainConfig
from trainer.data.splits import make_splits
from trainer.engine import fit
from trainer.models.mcph import relative_match_scores


# ---- the formulas ------------------------------------------------------------------------------
def _brute_force(image: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = image / np.linalg.norm(image, axis=1, keepdims=True)
    b = text / np.linalg.norm(text, axis=1, keepdims=True)
    s = a @ b.T
    n = len(s)
    r_i2t, r_t2i = np.ones(n), np.ones(n)
    for i in range(n):
        for j in range(n):
            if j == i:
                continue
            r_i2t[i] += 1.0 if s[i, j] > s[i, i] + 1e-6 else 0.5 if abs(s[i, j] - s[i, i]) <= 1e-6 else 0.0
            r_t2i[i] += 1.0 if s[j, i] > s[i, i] + 1e-6 else 0.5 if abs(s[j, i] - s[i, i]) <= 1e-6 else 0.0
    score = ((r_i2t - 1) + (r_t2i - 1) + (1 - np.diag(s)) / 5) / (2 * (n - 1))
    return r_i2t, r_t2i, score


def test_rank_score_matches_brute_force_with_ties() -> None:
    rng = np.random.default_rng(3)
    image, text = rng.standard_normal((40, 8)), rng.standard_normal((40, 8))
    text[5] = text[6]  # identical report texts tie: half a rank each
    r_i2t, r_t2i, score = _brute_force(image, text)
    got = rank_scores(image, text, block=7)  # several row blocks
    np.testing.assert_allclose(got.rank_i2t, r_i2t)
    np.testing.assert_allclose(got.rank_t2i, r_t2i)
    np.testing.assert_allclose(got.score, score, atol=1e-9)
    assert got.kind == "rank" and got.rank_i2t[5] % 1 == 0.5 and got.rank_i2t[6] % 1 == 0.5


def test_a_swapped_pair_scores_highest() -> None:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((30, 16))
    text = image + 0.1 * rng.standard_normal((30, 16))  # true pairs are close
    text[[4, 9]] = text[[9, 4]]
    got = rank_scores(image, text)
    assert set(got.order()[:2].tolist()) == {4, 9}
    assert got.rank_i2t[[0, 1, 2]].tolist() == [1.0, 1.0, 1.0] and got.score[4] > 0.5


def test_mcph_kind_is_minus_the_relative_match_score() -> None:
    rng = np.random.default_rng(1)
    image, text = rng.standard_normal((12, 6)).astype(np.float32), rng.standard_normal((12, 6)).astype(np.float32)
    got = pair_scores(image, text, "mcph")
    expected = -relative_match_scores(torch.from_numpy(image), torch.from_numpy(text))
    np.testing.assert_allclose(got.score, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.rank_i2t, rank_scores(image, text).rank_i2t)


def test_audit_precision_counts_ties_at_their_expected_share() -> None:
    scores = np.array([0.9, 0.8, 0.5, 0.5, 0.5, 0.1, 0.0, 0.0, 0.0, 0.0])
    noisy = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    assert audit_precision(scores, noisy, 0.2) == pytest.approx(0.5)  # top 2: one hit
    # top 3: 0.9 (hit), 0.8, then one of three tied 0.5 (one of them noisy): (1 + 1/3) / 3
    assert audit_precision(scores, noisy, 0.3) == pytest.approx((1 + 1 / 3) / 3)


# ---- injected noise on the tiny backbone -------------------------------------------------------
def test_top_5_percent_of_a_20_percent_noisy_run_is_mostly_shuffled_pairs(tmp_path: Path) -> None:
    """BASE (rank score) after a short fit: the top 5 % of the training pairs it trained on hold far
    more shuffled pairs than the 20 % that random picking would."""
    samples = make_samples(tmp_path / "images", n=150, seed=4)
    splits = make_splits(samples, seed=0)
    cfg = ModelConfig(method="base", backbone="tiny", bits=[32])
    train = TrainConfig(epochs=3, batch_size=32, lr=1e-3, num_workers=0, device="cpu", noise_rate=0.2)
    result = fit(cfg, train, splits, tmp_path / "run")
    model, _, _ = load_checkpoint(result.checkpoint_dir)
    audit = audit_noisy_pairs(model, splits.train, tmp_path / "run" / "noise.json", top_fraction=0.05)
    assert audit["score_kind"] == "rank" and audit["pairs"] == len(splits.train)
    assert audit["base_rate"] == pytest.approx(0.2, abs=0.01)
    assert audit["precision"] >= 0.6, audit
    assert audit["mean_score_shuffled"] > audit["mean_score_clean"]


# ---- the library audit ---------------------------------------------------------------------------
MISMATCHED = 12


@pytest.fixture(scope="module")
def noisy_library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """120 shape pairs, 12 of them with a report (and its labels, as a labeler would give) of
    another shape; a BASE model trained on it with the app's own service, library encoded."""
    root = tmp_path_factory.mktemp("audit-lib")
    samples = make_samples(root / "src", n=120, seed=7)
    rng = random.Random(0)
    wrong = set(rng.sample(range(len(samples)), MISMATCHED))
    rows = []
    for i, s in enumerate(samples):
        shape = s.labels[0]
        if i in wrong:
            shape = rng.choice([x for x in SHAPES if x != shape])
        rows.append({"image": Path(s.image_path).name, "report": f"there is a {shape} in the picture",
                     "labels": [shape], "patient_id": s.patient_id})
    manifest = root / "src" / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    folder = root / "library"
    with Library.open(folder, create=True) as lib:
        assert ingest([manifest], lib, workers=1).added == 120
        source = {c["source_path"]: c["id"] for c in lib.iter_cases()}
    wrong_ids = {source[str(root / "src" / rows[i]["image"])] for i in wrong}
    with MedHashSession(folder, device="cpu") as session:
        train_on_library(session, TrainRequest(method="base", bits=[16, 32], epochs=5, backbone="tiny", lr=1e-3,
                                               device="cpu", seed=0))
    return folder, wrong_ids


def test_library_audit_puts_mismatched_pairs_first(noisy_library, tmp_path: Path) -> None:
    folder, wrong_ids = noisy_library
    with Library.open(folder, read_only=True) as lib:
        report = audit_library(lib, top=None)
    assert report.audited == 120 and report.not_audited == 0 and report.vectors == "codes"
    assert report.score_kind == "rank" and report.bits == 32
    scores = [r.score for r in report.rows]
    assert scores == sorted(scores, reverse=True) and [r.rank for r in report.rows] == list(range(1, 121))
    top6 = [r.case_id for r in report.rows[:6]]  # the top 5 %
    assert len(set(top6) & wrong_ids) >= 4, (top6, wrong_ids)  # base rate 10 %
    first = report.rows[0]
    assert first.source_path.endswith(".png") and first.report_excerpt.startswith("there is a")
    assert first.labels and 1 <= first.rank_i2t <= 120 and -1 <= first.cosine <= 1
    path = report.write_csv(tmp_path / "audit.csv")
    with path.open(encoding="utf-8") as handle:
        back = list(csv.DictReader(handle))
    assert [r["case_id"] for r in back] == [r.case_id for r in report.rows]
    assert float(back[0]["score"]) == pytest.approx(first.score) and back[0]["labels"] == "|".join(first.labels)
    assert json.loads(json.dumps(report.to_dict()))["rows"][0]["case_id"] == first.case_id


def test_library_audit_reads_the_stored_codes_and_checks_its_inputs(noisy_library) -> None:
    folder, _ = noisy_library
    with Library.open(folder, read_only=True) as lib:
        report = audit_library(lib, top=6, bits=16)
        assert report.bits == 16 and len(report.rows) == 6
        assert all(r.cosine * 16 == pytest.approx(round(r.cosine * 16)) for r in report.rows)  # 1 - 2 d / K
        with pytest.raises(ModelError, match="not 64"):
            audit_library(lib, bits=64)
        with pytest.raises(ModelError, match="no such model"):
            audit_library(lib, model_id=99)
