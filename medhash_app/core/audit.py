"""Data audit of a library: the image-report pairs that most likely do not belong together.

Scores come from what the model stored for search (no model is loaded). Formulas in
trainer/audit.py: a rank score on the stored codes (how far down its image's ranking of all
reports a pair's own report falls, and vice versa, as percentiles; cosine as the tie-break), or,
for MCPH models with NRCL, minus MCPH's relative match score on the stored (aligned) embeddings
(the codes and the rank score when those embeddings are missing). Higher = check first.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medhash_app.core.errors import DataError, ModelError
from medhash_app.core.library import Library
from trainer.audit import PairScores, pair_scores, uses_embeddings
from trainer.evaluate import unpack_codes

EXCERPT_CHARS = 120
CSV_COLUMNS = ("rank", "case_id", "source_path", "report_excerpt", "labels", "score", "rank_i2t", "rank_t2i",
               "cosine")


@dataclass
class AuditRow:
    rank: int  # 1 = most suspicious
    case_id: str
    source_path: str
    report_excerpt: str
    labels: list[str]
    score: float
    rank_i2t: float  # where the pair's own report falls in its image's ranking of all audited reports
    rank_t2i: float  # where the pair's image falls in its report's ranking of all audited images
    cosine: float


@dataclass
class AuditReport:
    model_id: int
    model_name: str
    method: str
    bits: int
    score_kind: str  # "rank" | "mcph"
    vectors: str  # "embeddings" | "codes"
    audited: int  # pairs scored (cases with an image code and a report code)
    not_audited: int  # cases without a report or without this model's codes (`medhash encode` adds codes)
    rows: list[AuditRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({**asdict(row), "labels": "|".join(row.labels)})
        return path


def _model(library: Library, model_id: int | None) -> dict[str, Any]:
    model = library.get_model(model_id) if model_id is not None else library.active_model()
    if model is None:
        what = f"model {model_id}" if model_id is not None else str(library.folder)
        raise ModelError(what, "no such model in this library" if model_id is not None else
                         "no trained model is active in this library; run `medhash train --library …` first")
    return model


def paired_ids(library: Library, model_id: int, bits: int) -> list[str]:
    """Cases with both an image code and a report code, in database order."""
    text_ids = set(library.get_codes(model_id, "text", bits)[0].tolist())
    return [cid for cid in library.get_codes(model_id, "image", bits)[0].tolist() if cid in text_ids]


def _vectors(library: Library, model: dict[str, Any], bits: int, ids: list[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """(image, report vectors, score kind): MCPH's stored embeddings when the audit uses them and
    every pair has them, else the unpacked codes (same rows as `ids`)."""
    if uses_embeddings(model["method"], (model.get("config") or {}).get("components")):
        image = library.get_embeddings(model["id"], "image", bits, ids)
        text = library.get_embeddings(model["id"], "text", bits, ids)
        if image.size and image.shape == text.shape and np.isfinite(image).all() and np.isfinite(text).all():
            return image, text, "mcph"
    return _codes(library, model["id"], "image", bits, ids), _codes(library, model["id"], "text", bits, ids), "rank"


def _codes(library: Library, model_id: int, modality: str, bits: int, ids: list[str]) -> np.ndarray:
    all_ids, packed = library.get_codes(model_id, modality, bits)
    row = {cid: i for i, cid in enumerate(all_ids.tolist())}
    return unpack_codes(packed[[row[c] for c in ids]], bits)


def excerpt(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    words = " ".join((text or "").split())
    return words if len(words) <= limit else words[:limit - 1].rstrip() + "…"


def audit_library(library: Library, model_id: int | None = None, *, top: int | None = 50,
                  bits: int | None = None) -> AuditReport:
    """Score every encoded pair of the library with a model (default: the active one); the `top`
    most suspicious first (all pairs when `top` is None)."""
    model = _model(library, model_id)
    bits = int(bits if bits is not None else max(model["bits"]))
    if bits not in model["bits"]:
        raise ModelError(f"model {model['id']}", f"has {model['bits']}-bit codes, not {bits}")
    ids = paired_ids(library, model["id"], bits)
    if len(ids) < 2:
        raise DataError(str(library.folder), f"only {len(ids)} case(s) have image and report codes of model "
                        f"{model['id']}; run `medhash encode` (an audit compares at least 2 pairs)")
    image, text, kind = _vectors(library, model, bits, ids)
    scores = pair_scores(image, text, kind)
    order = scores.order()[: top if top is not None else None]
    rows = _rows(library, ids, scores, order)
    vectors = "embeddings" if kind == "mcph" else "codes"
    return AuditReport(model["id"], model["name"], model["method"], bits, scores.kind, vectors, len(ids),
                       library.count_cases() - len(ids), rows)


def _rows(library: Library, ids: list[str], scores: PairScores, order: np.ndarray) -> list[AuditRow]:
    cases = {c["id"]: c for c in library.get_cases([ids[i] for i in order])}
    rows = []
    for rank, i in enumerate(order.tolist(), start=1):
        case = cases[ids[i]]
        rows.append(AuditRow(rank, ids[i], str(case.get("source_path") or ""), excerpt(case.get("report")),
                             list(case.get("labels") or []), round(float(scores.score[i]), 6),
                             float(scores.rank_i2t[i]), float(scores.rank_t2i[i]), round(float(scores.cosine[i]), 6)))
    return rows
