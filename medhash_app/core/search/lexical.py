"""Is a report query written like the library's own reports? A model-free lexical check.

Why: a hash model trained on one kind of report still maps any text to some code near the
library's codes: in a fundus library the code check (core/search/ood.py) flagged only 83 % of IU
chest X-ray reports and 76 % of MedPix CT/MR captions (benchmarks/results/ood_detection.md). The
words themselves say more: a chest report shares almost no word or word-piece with "moderate
non proliferative retinopathy". And the code check, calibrated on whole reports, calls short
in-domain queries foreign ("Right apical pneumothorax." in the demo library: 12 bits from its
nearest reports, threshold 8).

How: TF-IDF over the library's own reports, words (1-2 grams) and characters (3-5 grams within
words, so typos and inflections still match), each part L2-normalised and joined. The reference
holds every report *and each of its sentences* as units, so a one-line query is compared with
sentences like it, not with whole reports that say much else. A query is judged sentence by
sentence: its score is the mean, over its sentences, of 1 - the cosine similarity to the most
similar unit (a typed "Enlarged cardiac silhouette. Small bilateral pleural effusions." matches two
different reports' sentences). Calibration as in the other checks: up to CALIBRATION units
(sentences and whole reports), each scored so against the units of the *other* reports; a query
scoring above MARGIN x the PERCENTILE-th percentile of those in-domain scores is out of domain.
The vectorizers are fitted once per library state (the search service caches the reference).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

PERCENTILE = 99.0
MARGIN = 1.5  # template-like libraries (the demo) call natural in-domain phrasing foreign below ~1.4 x
TYPICAL_MAX = 0.5  # small or varied libraries have a 99th percentile near 1: "typical" must still mean close
CALIBRATION = 1000  # held-out units scored against the other reports' units
MIN_REFERENCE = 20  # fewer reports than this: no verdict
REFERENCE_MAX = 5000  # library reports the reference keeps (a fixed sample of bigger libraries)
DOMAIN_RATIO = 2.0  # a query's domain is named when it is this many times closer to it than to any other
_CHUNK = 200  # calibration rows per sparse product (bounds memory at 100k units)
_SENTENCE = re.compile(r"(?<=[.;])\s+|\n+")


def units_of(report: str) -> list[str]:
    """The report itself, then each of its sentences (distinct, at least 3 characters)."""
    parts = [p.strip() for p in _SENTENCE.split(report) if len(p.strip()) > 2]
    return list(dict.fromkeys([report.strip(), *parts]))


def sentences_of(text: str) -> list[str]:
    """What a query is judged by: its sentences, or the text itself when it is one sentence."""
    return units_of(text)[1:] or [text.strip()]


@dataclass
class LexicalReference:
    """The fitted vectorizers, the library's units (reports and sentences) and the threshold."""

    words: TfidfVectorizer
    chars: TfidfVectorizer
    matrix: sparse.csr_matrix  # (units, terms), rows L2-normalised
    scores: np.ndarray  # sorted scores of held-out units against the other reports' units
    threshold: float
    domains: np.ndarray | None = None  # each unit's case domain (chest, fundus, ...), when known

    def vectors(self, texts: Sequence[str]) -> sparse.csr_matrix:
        return _join(self.words.transform(texts), self.chars.transform(texts))

    def similarities(self, text: str) -> np.ndarray:
        return (self.vectors([text]) @ self.matrix.T).toarray()[0]

    def score(self, text: str) -> float:
        """Mean over the query's sentences of 1 - cosine similarity to the most similar library unit
        (0: same words, 1: none shared); a query of several sentences is judged sentence by sentence."""
        sims = (self.vectors(sentences_of(text)) @ self.matrix.T).toarray()
        return float((1.0 - sims.max(axis=1)).mean())

    def is_out(self, score: float) -> bool:
        return score > self.threshold

    @property
    def decisive(self) -> bool:
        """Can wording be foreign here at all? Not in a library whose own reports are so varied (or so
        few) that 1.5 x their 99th percentile exceeds the largest possible score, 1 (IU X-ray: 1.08)."""
        return self.threshold < 1.0

    def is_typical(self, score: float) -> bool:
        """Worded as closely to the library as 99 % of its own reports and sentences are (no margin),
        and sharing at least half its word weight with library sentences."""
        return score <= min(self.threshold / MARGIN, TYPICAL_MAX)

    def reason(self, score: float) -> str:
        usual = 100 * (1 - self.threshold / MARGIN)
        return (f"Word check: it is worded unlike this library's reports (its sentences share {100 * (1 - score):.0f} % "
                f"of their words and word pieces with the most similar library sentences or reports; for "
                f"{PERCENTILE:g} % of the library's own reports and sentences other reports share {usual:.0f} % or "
                f"more).")

    def domain_of(self, text: str) -> str | None:
        """The domain a report query is written in: the domain of the most similar library unit, when
        the library holds several domains and no unit of another domain comes within DOMAIN_RATIO of it."""
        if self.domains is None:
            return None
        sims = self.similarities(text)
        best = {d: float(sims[self.domains == d].max()) for d in set(self.domains.tolist()) - {""}}
        if len(best) < 2:
            return None
        ranked = sorted(best.items(), key=lambda kv: -kv[1])
        (top, first), (_, second) = ranked[0], ranked[1]
        return top if first > 0 and first >= DOMAIN_RATIO * second else None


def _join(words: sparse.spmatrix, chars: sparse.spmatrix) -> sparse.csr_matrix:
    return normalize(sparse.hstack([normalize(words), normalize(chars)]).tocsr())


def sample_rows(texts: Sequence[str], limit: int = REFERENCE_MAX, seed: int = 0) -> list[int]:
    """Positions of the non-empty reports the reference keeps: all of them, or a fixed sample of `limit`."""
    kept = [i for i, t in enumerate(texts) if t and t.strip()]
    if len(kept) <= limit:
        return kept
    rows = np.sort(np.random.default_rng(seed).choice(len(kept), size=limit, replace=False))
    return [kept[i] for i in rows]


def build_lexical_reference(texts: Sequence[str], domains: Sequence[str | None] | None = None
                            ) -> LexicalReference | None:
    """Fit on the library's reports (with their cases' domains, for `domain_of`) and calibrate on
    held-out units; None when there are too few reports."""
    picked = sample_rows(texts)
    if len(picked) < MIN_REFERENCE:
        return None
    reports = [texts[i] for i in picked]
    units, owner = [], []
    for n, report in enumerate(reports):
        for unit in units_of(report):
            units.append(unit)
            owner.append(n)
    owners = np.array(owner)
    words = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, dtype=np.float32)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, dtype=np.float32)
    words.fit(reports)
    chars.fit(reports)
    matrix = _join(words.transform(units), chars.transform(units))
    rows = np.sort(np.random.default_rng(0).choice(len(units), size=min(len(units), CALIBRATION), replace=False))
    scores = np.sort(_held_out_scores(units, owners, rows, matrix, words, chars))
    unit_domains = (np.array([domains[picked[o]] or "" for o in owner], dtype=str) if domains is not None
                    else None)
    return LexicalReference(words, chars, matrix, scores, float(np.percentile(scores, PERCENTILE)) * MARGIN,
                            unit_domains)


def _held_out_scores(units: list[str], owners: np.ndarray, rows: np.ndarray, matrix: sparse.csr_matrix,
                     words: TfidfVectorizer, chars: TfidfVectorizer) -> np.ndarray:
    """Each held-out unit scored as a query is (`LexicalReference.score`), against the units of the
    other reports only (leave-one-report-out)."""
    sentences, of_row = [], []
    for r, row in enumerate(rows):
        parts = sentences_of(units[row])
        sentences += parts
        of_row += [r] * len(parts)
    of_row_arr = np.array(of_row)
    vectors = _join(words.transform(sentences), chars.transform(sentences))
    best = np.empty(len(sentences), dtype=np.float32)
    for start in range(0, len(sentences), _CHUNK):
        part = slice(start, start + _CHUNK)
        sims = (vectors[part] @ matrix.T).toarray()
        sims[owners[rows[of_row_arr[part]]][:, None] == owners[None, :]] = -np.inf
        best[part] = 1.0 - sims.max(axis=1)
    return np.bincount(of_row_arr, weights=best, minlength=len(rows)) / np.bincount(of_row_arr, minlength=len(rows))
