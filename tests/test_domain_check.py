"""Per-domain evaluation: a domain the model cannot tell apart is named, a healthy one is not."""

from __future__ import annotations

import numpy as np

from medhash_app.core.domain_check import collapse_warnings, distinct_codes, domain_report
from trainer.evaluate import map_at_all


def _codes(rng: np.random.Generator, n: int, collapsed: bool) -> np.ndarray:
    """Packed 64-bit codes: one code repeated, or random ones."""
    if collapsed:
        return np.repeat(rng.integers(0, 256, size=(1, 8), dtype=np.uint8), n, axis=0)
    return rng.integers(0, 256, size=(n, 8), dtype=np.uint8)


def _library(collapse_chest: bool, fundus_reports: int = 60):
    rng = np.random.default_rng(0)
    n = 60  # per domain in the database; 10 queries each
    db_domains = ["chest"] * n + ["fundus"] * n
    q_domains = ["chest"] * 10 + ["fundus"] * 10
    db = {m: np.concatenate([_codes(rng, n, collapse_chest), _codes(rng, n, False)]) for m in ("image", "text")}
    q = {m: np.concatenate([_codes(rng, 10, collapse_chest), _codes(rng, 10, False)]) for m in ("image", "text")}
    db_labels = rng.integers(0, 2, size=(2 * n, 4)).astype(np.uint8)
    q_labels = rng.integers(0, 2, size=(20, 4)).astype(np.uint8)
    reports = [f"chest report {i}" for i in range(n)] + [f"fundus keywords {i % fundus_reports}" for i in range(n)]
    return q, db, q_labels, db_labels, q_domains, db_domains, reports


def test_a_collapsed_domain_is_named_with_its_counts_and_the_other_is_not() -> None:
    q, db, ql, dl, qd, dd, reports = _library(collapse_chest=True)
    report = domain_report(q, db, ql, dl, qd, dd, reports, 64, np.random.default_rng(1))
    assert report["chest"]["distinct_image_codes"] == 1 and report["chest"]["cases"] == 60
    assert report["fundus"]["distinct_image_codes"] == 60
    # within-domain mAP: the domain's queries against the domain's database only
    chest_db = np.array(dd) == "chest"
    expected = map_at_all(q["image"][:10], db["text"][chest_db], ql[:10], dl[chest_db])
    assert report["chest"]["i2t_map_all"] == round(float(expected), 4)
    warnings = collapse_warnings(report)
    assert len(warnings) == 2 and all(w.startswith("chest: ") for w in warnings)
    assert "60 images share 1 distinct 64-bit code" in warnings[0] and "random codes" in warnings[0]


def test_healthy_domains_repeated_reports_and_small_domains_raise_nothing() -> None:
    q, db, ql, dl, qd, dd, reports = _library(collapse_chest=False, fundus_reports=2)
    two = np.random.default_rng(2).integers(0, 256, size=(2, 8), dtype=np.uint8)
    db["text"][60:] = two[np.arange(60) % 2]  # one code per distinct report text: nothing collapsed
    report = domain_report(q, db, ql, dl, qd, dd, reports, 64, np.random.default_rng(1))
    assert report["fundus"]["distinct_reports"] == 2 and report["fundus"]["distinct_text_codes"] == 2
    assert collapse_warnings(report) == []
    small = {"other": {**report["chest"], "cases": 5, "distinct_reports": 5, "distinct_image_codes": 1,
                       "distinct_text_codes": 1}}
    assert collapse_warnings(small) == []  # too few cases to judge


def test_distinct_codes_counts_rows() -> None:
    codes = np.array([[1, 2], [1, 2], [3, 4]], dtype=np.uint8)
    assert distinct_codes(codes) == 2 and distinct_codes(codes[:0]) == 0
