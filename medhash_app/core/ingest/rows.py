"""Turn a source item plus its decoded facts into a `cases` row: domain, labels, metadata."""

from __future__ import annotations

import os
from typing import Any

from medhash_app.core.ingest.decode import DecodeResult
from medhash_app.core.ingest.items import IngestItem
from medhash_app.core.library import input_rel_path, thumb_rel_path
from medhash_app.core.pseudonym import Pseudonymizer
from trainer.data.labels import labels_from_report

DOMAINS = ("chest", "fundus", "other")
_CHEST_MODALITIES = {"CR", "DX"}
_FUNDUS_MODALITIES = {"OP"}  # DICOM ophthalmic photography


def clean_report(report: str | None) -> str | None:
    """Empty or whitespace-only reports are stored as NULL; anything else is kept whole."""
    return report.strip() if report and report.strip() else None


def resolve_domain(explicit: str | None, item: IngestItem, facts: dict[str, Any], looks_grey: bool,
                   guess: tuple[str, float, str] | None = None) -> str:
    """The user's choice, else the source's, else the file's: DICOM CR/DX of the chest (or with no
    body part) is chest, OP is fundus, other DICOM is "other"; for PNG/JPEG the image check
    (core/image_stats.py: fundus = colour, red, a round field of view on black corners; chest = grey
    filled edge to edge; CT/MR slices on black and other pictures = "other"), or, without one, grey =
    chest and colour = fundus."""
    return domain_and_confidence(explicit, item, facts, looks_grey, guess)[0]


def domain_and_confidence(explicit: str | None, item: IngestItem, facts: dict[str, Any], looks_grey: bool,
                          guess: tuple[str, float, str] | None = None) -> tuple[str, str, float | None]:
    """(domain, where it came from: user / dataset / dicom / image / grey-colour, confidence 0..1 for
    the image check, else None)."""
    if explicit:
        return explicit, "user", None
    if item.metadata.get("domain") in DOMAINS:
        return str(item.metadata["domain"]), "dataset", None
    if facts.get("file_format") == "DICOM":
        modality, body = (facts.get("modality") or "").upper(), (facts.get("body_part") or "").upper()
        if modality in _CHEST_MODALITIES and (not body or "CHEST" in body or "THORAX" in body):
            return "chest", "dicom", None
        return ("fundus" if modality in _FUNDUS_MODALITIES else "other"), "dicom", None
    if guess is not None:
        return guess[0], "image", float(guess[1])
    return ("chest" if looks_grey else "fundus"), "grey-colour", None


def resolve_labels(item: IngestItem, report: str | None, domain: str) -> tuple[list[str], str]:
    """(labels, label_source): the dataset's labels when it has them, else the report labeler."""
    if item.labels is not None:
        return list(item.labels), "dataset"
    if report is None or domain not in ("chest", "fundus"):
        return [], "none"
    return labels_from_report(report, domain), "labeler"  # type: ignore[arg-type]


def build_row(item: IngestItem, result: DecodeResult, *, domain: str | None,
              pseudonyms: Pseudonymizer) -> dict[str, Any]:
    """The `cases` row; source metadata wins over header facts where both say something.

    What identifies a patient or study is stored only as a keyed pseudonym (patient key, Study and
    SOP Instance UIDs, a manifest's study id); `source_path` is kept so the original can be opened
    again (docs/architecture.md, "What the library stores about patients")."""
    facts, meta = result.facts, item.metadata
    report = clean_report(item.report)
    resolved, domain_source, confidence = domain_and_confidence(domain, item, facts, result.looks_grey,
                                                                result.domain_guess)
    extra = dict(meta.get("extra") or {})
    if domain_source == "image":  # the domain is the image check's guess: say how sure (docs/architecture.md)
        extra["domain_confidence"] = round(float(confidence or 0.0), 2)
    labels, label_source = resolve_labels(item, report, resolved)
    pid = meta.get("patient_id")
    return {
        "id": result.case_id, "source_path": os.path.abspath(item.path),
        "source_kind": str(facts.get("file_format") or "").lower() or None,
        "sop_instance_uid": pseudonyms.uid(facts.get("sop_instance_uid")),
        "study_instance_uid": pseudonyms.uid(facts.get("study_instance_uid") or meta.get("study_id")),
        "report": report, "labels": labels, "label_source": label_source, "domain": resolved,
        "modality": facts.get("modality"), "body_part": facts.get("body_part"),
        "view": meta.get("view") or facts.get("view"),
        "laterality": meta.get("laterality") or facts.get("laterality"),
        "study_date": meta.get("study_date") or facts.get("study_date"),
        "age": meta.get("age") if meta.get("age") is not None else facts.get("age"),
        "sex": meta.get("sex") or facts.get("sex"),
        "patient_key": pseudonyms.patient(pid) if pid else facts.get("patient_key"),
        "split": meta.get("split"), "extra": extra,
        "input_path": input_rel_path(result.case_id), "thumb_path": thumb_rel_path(result.case_id),
    }
