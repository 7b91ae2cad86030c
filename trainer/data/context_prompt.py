"""TriPAH's semantic context prompts (Eqs. 1-2): patient metadata and normalised findings as text.

Text side:  p_ctx = phi(metadata) + "Findings:" + Extract(report)
Image side: p_img = phi(image metadata)   (what travels with the image: age, sex, view,
            laterality, modality, caption; never the paired report, never the indication,
            never a label-bearing field such as ODIR's file_label)

`phi` turns normalised metadata into a short clinical phrase ("67-year-old female, PA view, left
eye"); `Extract` is ontology-grounded: the CheXpert / ODIR classes the project's own labelers find
in the report ("cardiomegaly, possible pleural effusion"), falling back to the impression's
first sentences. When nothing is known the generic fallback prompt is used; during training
TriPAH also swaps a sample's prompt for the fallback at random (stochastic gating, delta ~
Bernoulli(rho)), so the codes stay usable for a query that comes without metadata.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from trainer.data.labels import ODIR_CLASSES, label_chest_report, labels_from_report
from trainer.data.long_text import Tokenizer, section_text, unwrap_tokenizer
from trainer.data.negation import split_sentences

IMAGE_META_KEYS = ("age", "sex", "view", "laterality", "modality", "caption")
TEXT_META_KEYS = ("age", "sex", "view", "laterality", "indication")
GENERIC_IMAGE_PROMPT = "A medical image of a patient."
GENERIC_CONTEXT_PROMPT = "Findings: a medical imaging report."
CONTEXT_DOMAINS = ("auto", "chest", "fundus", "text")

_SEX = {"m": "male", "male": "male", "f": "female", "female": "female", "o": "other", "other": "other"}
_SIDE = {"l": "left", "left": "left", "r": "right", "right": "right", "b": "bilateral", "bilateral": "bilateral"}
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)\s*$", re.IGNORECASE)  # DICOM AS "067Y" or a number
_AGE_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
_DEID_RE = re.compile(r"\bX{2,}\b")
_MAX_EXTRACT_WORDS = 40


def _age_years(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if 0 <= value < 130 else None
    m = _AGE_RE.match(str(value))
    if not m:
        return None
    years = float(m.group(1)) * _AGE_UNIT[m.group(2).upper()]
    return years if 0 <= years < 130 else None


def _clean(value: Any, max_words: int = 20) -> str | None:
    if value is None:
        return None
    text = " ".join(_DEID_RE.sub(" ", str(value)).split()[:max_words]).strip(" .,;")
    return text or None


def normalize_meta(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """Raw metadata (DICOM header facts, manifest columns) -> {key: normalised phrase}.

    Understands age as years or DICOM AS ("067Y"), sex M/F/Male/Female, ODIR's "eye" as
    laterality, and view / modality / caption / indication as given. Unknown keys are dropped.
    """
    raw = dict(raw or {})
    out: dict[str, str] = {}
    age = _age_years(raw.get("age"))
    if age is not None:
        out["age"] = f"{int(age)}-year-old" if age >= 2 else f"{max(1, round(age * 12))}-month-old"
    sex = _SEX.get(str(raw.get("sex", "")).strip().lower())
    if sex:
        out["sex"] = sex
    side = _SIDE.get(str(raw.get("laterality") or raw.get("eye") or "").strip().lower())
    if side:
        out["laterality"] = side
    for key in ("view", "modality", "caption", "indication"):
        value = _clean(raw.get(key), max_words=40 if key == "caption" else 20)
        if value:
            out[key] = value
    return out


def image_meta(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """The normalised metadata an image may use: only keys that travel with the image itself."""
    return {k: v for k, v in normalize_meta(raw).items() if k in IMAGE_META_KEYS}


def text_meta(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """The normalised metadata a report may use (its case's header facts and its indication)."""
    return {k: v for k, v in normalize_meta(raw).items() if k in TEXT_META_KEYS}


def describe_patient(meta: Mapping[str, str]) -> str:
    """phi(metadata): "Patient: 67-year-old female. View: PA. Laterality: left." ('' when empty)."""
    who = " ".join(p for p in (meta.get("age"), meta.get("sex")) if p)
    parts = [f"Patient: {who}." if who else ""]
    for key, label in (("view", "View"), ("laterality", "Laterality"), ("modality", "Modality"),
                       ("indication", "Indication"), ("caption", "Image")):
        if meta.get(key):
            parts.append(f"{label}: {meta[key]}.")
    return " ".join(p for p in parts if p)


def _chest_findings(report: str) -> list[str]:
    status = label_chest_report(report)
    return [name.lower() if value == 1 else f"possible {name.lower()}" for name, value in status.items()
            if value in (1, -1)]


def _fundus_findings(report: str) -> list[str]:
    return [ODIR_CLASSES[code] for code in labels_from_report(report, "fundus")]


def _leading_sentences(report: str) -> str:
    body = section_text(report, "impression") or section_text(report, "findings") or report
    words: list[str] = []
    for sentence in split_sentences(_DEID_RE.sub(" ", body)):
        words.extend(sentence.split())
        if len(words) >= _MAX_EXTRACT_WORDS // 2:
            break
    return " ".join(words[:_MAX_EXTRACT_WORDS]).rstrip(".")


def extract_findings(report: str, domain: str = "auto") -> str:
    """Extract(report): normalised findings ("cardiomegaly, possible pleural effusion").

    domain "chest" / "fundus" uses that labeler; "auto" prefers fundus classes when the chest
    labeler sees nothing but "no finding"; "text" (or a labeler that finds nothing) falls back to
    the first sentences of the impression (or findings, or the whole report).
    """
    found: list[str] = []
    if domain in ("auto", "fundus"):
        found = _fundus_findings(report)
    if domain == "chest" or (domain == "auto" and not found):
        found = _chest_findings(report)
    elif domain == "auto" and found:
        chest = _chest_findings(report)
        found = found if set(chest) <= {"no finding"} else chest
    return ", ".join(found) if found else _leading_sentences(report)


def context_prompt(report: str, meta: Mapping[str, Any] | None = None, domain: str = "auto") -> str:
    """Eq. 1: p_ctx = phi(metadata) + "Findings:" + Extract(report); the report's own INDICATION
    section stands in for a missing `indication`."""
    tm = text_meta(meta)
    if "indication" not in tm:
        indication = _clean(section_text(report, "indication"))
        if indication:
            tm["indication"] = indication
    findings = extract_findings(report, domain)
    if not findings:
        return GENERIC_CONTEXT_PROMPT if not tm else f"{describe_patient(tm)} Findings: none stated."
    return f"{describe_patient(tm)} Findings: {findings}.".strip()


def image_prompt(meta: Mapping[str, Any] | None) -> str:
    """The image's own metadata prompt, or the generic fallback when nothing travels with it."""
    described = describe_patient(image_meta(meta))
    return described or GENERIC_IMAGE_PROMPT


class ContextPromptTokenizer:
    """Report tokenizer that also returns the context-prompt view (`ctx_input_ids`, `ctx_attention_mask`).

    Wraps the backbone tokenizer (or a LongTextTokenizer); `accepts_meta` tells the collate function
    to pass each report's case metadata. Picklable, so DataLoader workers get it.
    """

    accepts_meta = True

    def __init__(self, inner: Tokenizer, domain: str = "auto") -> None:
        self.base = inner  # what the reports themselves go through
        self.domain = domain

    def __call__(self, texts: Sequence[str], metas: Sequence[Mapping[str, Any] | None] | None = None) -> dict[str, Tensor]:
        texts = list(texts)
        metas = list(metas) if metas is not None else [None] * len(texts)
        out = dict(self.base(texts))
        ctx = unwrap_tokenizer(self.base)([context_prompt(t, m, self.domain) for t, m in zip(texts, metas, strict=True)])
        out["ctx_input_ids"], out["ctx_attention_mask"] = ctx["input_ids"], ctx["attention_mask"]
        return out
