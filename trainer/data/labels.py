"""Labels from report text: CheXpert's 14 observations for chest reports, ODIR's 8 classes for fundus.

Retrieval relevance ("shares at least one label") and TriPAH's classification loss need labels for
every case, and a site's own data comes with reports, not label files. The chest labeler is a
rule-based CheXpert-style labeler (mention phrases in chest_terms.py, NegEx cues in negation.py);
the fundus labeler maps the ODIR graders' per-eye keywords (odir_terms.py).
"""

from __future__ import annotations

import re
import unicodedata
from collections import OrderedDict
from typing import Literal

from trainer.data import chest_terms as ct
from trainer.data.negation import ABSENT, PRESENT, UNCERTAIN, SentenceContext, split_sentences
from trainer.data.odir_terms import fundus_keyword_status
from trainer.errors import DataError

CHEXPERT_CLASSES: tuple[str, ...] = (
    ct.NO_FINDING, ct.ECM, ct.CARDIOMEGALY, ct.OPACITY, ct.LESION, ct.EDEMA, ct.CONSOLIDATION,
    ct.PNEUMONIA, ct.ATELECTASIS, ct.PNEUMOTHORAX, ct.EFFUSION, ct.PLEURAL_OTHER, ct.FRACTURE, ct.DEVICES,
)
# Per-eye names (what a fundus photograph shows), also used verbatim in captions and text prompts;
# ODIR's patient-level names for D and H are "diabetes" and "hypertension".
ODIR_CLASSES: OrderedDict[str, str] = OrderedDict(
    N="normal",
    D="diabetic retinopathy",
    G="glaucoma",
    C="cataract",
    A="age-related macular degeneration",
    H="hypertensive retinopathy",
    M="pathological myopia",
    O="other abnormalities",
)

Domain = Literal["chest", "fundus"]
UncertainPolicy = Literal["positive", "negative", "ignore"]

# CheXpert: No Finding is positive only when no *pathology* is positive or uncertain; support
# devices are not a pathology.
_PATHOLOGIES = frozenset(CHEXPERT_CLASSES) - {ct.NO_FINDING, ct.DEVICES}
_DEID_RE = re.compile(r"\bX{2,}\b")  # de-identification token of IU X-ray / Open-i
_SPACES_RE = re.compile(r"[ \t\u00a0]+")


def _clean(text: str) -> str:
    return _SPACES_RE.sub(" ", _DEID_RE.sub(" ", unicodedata.normalize("NFKC", text)))


_RANK = {PRESENT: 2, UNCERTAIN: 1, ABSENT: 0}


def _merge(labels: dict[str, int], name: str, status: int) -> None:
    """CheXpert's aggregation over mentions: positive > uncertain > negative."""
    if name not in labels or _RANK[status] > _RANK[labels[name]]:
        labels[name] = status


def _label_sentence(sentence: str, labels: dict[str, int]) -> None:
    sentence = sentence.lower()
    context: SentenceContext | None = None
    for match in ct.TERMS_RE.finditer(sentence):
        term = ct.TERMS[ct.term_index(match)]
        if not term.labels:
            continue  # a blocker
        status = term.status
        if status is None:
            context = context or SentenceContext.of(sentence)
            status = context.assertion(match.start(), match.end())
        for name in term.labels:
            _merge(labels, name, status)


def label_chest_report(text: str) -> dict[str, int]:
    """CheXpert-style labels of a chest report: {class: 1 present | 0 absent | -1 uncertain}.

    Classes the report does not mention are omitted. "No Finding" is 1 when the text reads as a
    chest report and no pathology is positive or uncertain. Empty or non-English text gives {}.
    """
    if not isinstance(text, str):
        raise DataError(None, f"a report must be text, not {type(text).__name__}")
    cleaned = _clean(text)
    labels: dict[str, int] = {}
    for sentence in split_sentences(cleaned):
        _label_sentence(sentence, labels)
    found = any(labels.get(name) in (PRESENT, UNCERTAIN) for name in _PATHOLOGIES)
    if not found and (labels or ct.REPORT_VOCABULARY_RE.search(cleaned)):
        labels[ct.NO_FINDING] = PRESENT
    return {name: labels[name] for name in CHEXPERT_CLASSES if name in labels}


def label_fundus_keywords(text: str) -> list[str]:
    """ODIR codes (in ODIR_CLASSES order) of one eye's diagnostic keywords.

    "suspected glaucoma" counts as G, as the ODIR graders count it; image-quality notes ("lens
    dust") give no code; "N" only when "normal fundus" is there and nothing abnormal is.
    """
    if not isinstance(text, str):
        raise DataError(None, f"fundus keywords must be text, not {type(text).__name__}")
    status = fundus_keyword_status(text)
    return [code for code in ODIR_CLASSES if status.get(code) in (PRESENT, UNCERTAIN)]


def _positives(status: dict[str, int], uncertain: UncertainPolicy) -> set[str]:
    accepted = {PRESENT, UNCERTAIN} if uncertain == "positive" else {PRESENT}
    return {name for name, value in status.items() if value in accepted}


def labels_from_report(text: str, domain: Domain, uncertain: UncertainPolicy = "positive") -> list[str]:
    """Positive class names (chest) or ODIR codes (fundus) of a report, in the class order.

    `uncertain` says what a hedged finding ("possible pneumonia", "suspected glaucoma") becomes:
    "positive" (CheXpert's U-Ones, the default), "negative" or "ignore". In a list of positives
    "negative" and "ignore" agree; they differ for callers that mask -1 in label_chest_report.
    No Finding follows CheXpert whatever the policy: an uncertain pathology still rules it out.
    """
    if uncertain not in ("positive", "negative", "ignore"):
        raise DataError(None, f"unknown uncertain-label policy {uncertain!r}")
    if domain == "chest":
        return [name for name in CHEXPERT_CLASSES if name in _positives(label_chest_report(text), uncertain)]
    if domain == "fundus":
        if not isinstance(text, str):
            raise DataError(None, f"fundus keywords must be text, not {type(text).__name__}")
        positives = _positives(fundus_keyword_status(text), uncertain)
        return [code for code in ODIR_CLASSES if code in positives]
    raise DataError(None, f"unknown report domain {domain!r}: use 'chest' or 'fundus'")
