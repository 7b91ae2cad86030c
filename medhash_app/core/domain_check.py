"""Per-domain retrieval quality and code collapse of a trained model.

Why: a library mixes domains (chest radiographs, fundus photographs) and a pooled mAP hides a
domain the model has not learned: telling the two domains apart alone earns a fair pooled mAP
while every chest image gets the same code (measured on the demo library: pooled I→T mAP@all 0.60,
chest 240 images on one 64-bit code). So evaluation also reports each domain on its own (queries
and database of that domain only) and how many distinct codes the domain's cases get, and names a
collapsed domain in plain words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from trainer.evaluate import map_at_all

MIN_CASES = 20  # smaller domains are too small to judge
COLLAPSE_SHARE = 0.05  # distinct codes below 5 % of a domain's cases: the model does not tell them apart


def distinct_codes(codes: np.ndarray) -> int:
    """Number of different packed codes (rows)."""
    return len(np.unique(codes, axis=0)) if len(codes) else 0


def domain_report(q_codes: Mapping[str, np.ndarray], db_codes: Mapping[str, np.ndarray], q_labels: np.ndarray,
                  db_labels: np.ndarray, q_domains: list[str], db_domains: list[str], db_reports: list[str],
                  bits: int, rng: np.random.Generator) -> dict[str, dict[str, Any]]:
    """{domain: mAP@all I→T / T→I within the domain (with random codes' level), cases, distinct codes}.

    `q_codes` / `db_codes` map "image" and "text" to packed codes in the row order of the labels
    and domains; the database rows are the retrieval split (what a query searches). Reports are
    often repeated word for word (fundus keywords), so their distinct codes are compared with
    their distinct texts, not with the cases.
    """
    out: dict[str, dict[str, Any]] = {}
    q_dom, db_dom = np.asarray(q_domains), np.asarray(db_domains)
    for domain in sorted(set(db_domains)):
        q, d = q_dom == domain, db_dom == domain
        entry: dict[str, Any] = {"cases": int(d.sum()), "queries": int(q.sum()), "bits": bits,
                                 "distinct_reports": len({r for r, keep in zip(db_reports, d, strict=True) if keep}),
                                 "distinct_image_codes": distinct_codes(db_codes["image"][d]),
                                 "distinct_text_codes": distinct_codes(db_codes["text"][d])}
        for name, (q_mod, db_mod) in (("i2t", ("image", "text")), ("t2i", ("text", "image"))):
            if q.sum() == 0:
                continue
            qc, dc = q_codes[q_mod][q], db_codes[db_mod][d]
            entry[f"{name}_map_all"] = round(float(map_at_all(qc, dc, q_labels[q], db_labels[d])), 4)
            noise_q = rng.integers(0, 256, size=qc.shape, dtype=np.uint8)
            noise_d = rng.integers(0, 256, size=dc.shape, dtype=np.uint8)
            entry[f"{name}_random_map_all"] = round(float(map_at_all(noise_q, noise_d, q_labels[q], db_labels[d])), 4)
        out[domain] = entry
    return out


def collapse_warnings(by_domain: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One sentence per domain whose image or report codes collapsed (few distinct codes for many cases)."""
    warnings = []
    for domain, entry in by_domain.items():
        if entry["cases"] < MIN_CASES:
            continue
        sides = (("images", "images", "distinct_image_codes", "i2t", "image→report", entry["cases"]),
                 ("reports", "different reports", "distinct_text_codes", "t2i", "report→image",
                  entry["distinct_reports"]))
        for side, counted, key, direction, arrow, count in sides:
            if count < MIN_CASES or entry[key] >= max(2, COLLAPSE_SHARE * count):
                continue
            level = (f" ({arrow} mAP@all within {domain} {entry[f'{direction}_map_all']:.2f}, random codes "
                     f"{entry[f'{direction}_random_map_all']:.2f})" if f"{direction}_map_all" in entry else "")
            warnings.append(f"{domain}: {count} {counted} share {entry[key]} distinct {entry['bits']}-bit code(s), "
                            f"so this model cannot tell {domain} {side} apart{level}; for BASE train with "
                            f"--feature-norm batch (benchmarks/results/domain_collapse.md), or on more {domain} cases")
    return warnings
