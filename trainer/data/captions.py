"""Image captions for MCPH: a captions file made offline, and a built-in captioner.

MCPH (MICCAI 2024) conditions its prompts on a caption *of the image* (the paper uses CheXagent).
Retrieval stays honest only if that caption comes from the image alone, never from the paired
report, so this module offers exactly two sources:

- a captions file (CSV or JSONL, `id` and/or `image` -> `caption`), written offline e.g. by
  `scripts/chexagent_captions.py`; `load_captions` / `save_captions`;
- `BuiltinCaptioner`: a small multi-label classifier on image features, trained on the training
  labels, that renders "Findings: cardiomegaly, pleural effusion." or "No acute findings." from
  the image alone; it needs no extra weights and runs at query time too.

`image_meta(sample, captions)` builds the side information that travels with an image
(`encode_image(images, meta=...)`): an allow-list of image-side keys, so a report-like
manifest column can never reach the image side.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from trainer.data.labels import ODIR_CLASSES
from trainer.data.manifest import Sample
from trainer.errors import DataError

CAPTION_KEY = "caption"
# Side information that belongs to the image itself (DICOM header facts, its own caption).
IMAGE_META_KEYS = ("caption", "age", "sex", "view", "laterality", "modality", "eye", "body_part")
# The paired report, in the image meta ONLY for the leak study's diagnostic models
# (models.views.LEAK_OPTION); never part of an honest image's meta.
PAIRED_REPORT_KEY = "paired_report"
NO_FINDINGS_SENTENCE = "No acute findings."
_NORMAL_NAMES = frozenset({"no finding", "normal"})
_KEY_COLUMNS = ("id", "image")


# ---- captions files ---------------------------------------------------------------------------------
def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for every record of a .jsonl or .csv captions file."""
    suffix = path.suffix.lower()
    out: list[tuple[str, dict[str, Any]]] = []
    with path.open(encoding="utf-8-sig", newline="") as fh:
        if suffix == ".jsonl":
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{n}", f"not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{n}", "each line must be a JSON object")
                out.append((f"{path}:{n}", record))
        elif suffix == ".csv":
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or [])
            if CAPTION_KEY not in columns or not columns & set(_KEY_COLUMNS):
                raise DataError(path, "captions CSV needs a 'caption' column and an 'id' or 'image' column")
            out.extend((f"{path}:{n}", dict(row)) for n, row in enumerate(reader, start=2))
        else:
            raise DataError(path, "captions file must be a .jsonl or .csv file")
    return out


def _keys(record: dict[str, Any], root: Path) -> list[str]:
    """Lookup keys of one record: its id, its image path as written and resolved against `root`."""
    keys = []
    if record.get("id") not in (None, ""):
        keys.append(str(record["id"]))
    image = record.get("image")
    if image not in (None, ""):
        keys.append(str(image))
        path = Path(str(image))
        keys.append(str((path if path.is_absolute() else root / path).resolve()))
    return keys


def load_captions(path: str | Path) -> dict[str, str]:
    """Read a captions file into {key: caption}; keys are ids and image paths (as written and absolute).

    Relative image paths are resolved against the captions file's folder, as in manifests.
    Raises DataError naming the line for a record without a key or caption, or a key given two
    different captions.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "captions file not found")
    captions: dict[str, str] = {}
    for where, record in _rows(path):
        text = record.get(CAPTION_KEY)
        keys = _keys(record, path.parent)
        if not keys:
            raise DataError(where, "record has neither 'id' nor 'image'")
        if not isinstance(text, str) or not text.strip():
            raise DataError(where, "record has no caption text")
        for key in keys:
            if captions.get(key, text.strip()) != text.strip():
                raise DataError(where, f"{key!r} already has a different caption")
            captions[key] = text.strip()
    if not captions:
        raise DataError(path, "captions file has no records")
    return captions


def save_captions(path: str | Path, rows: Sequence[Mapping[str, str]]) -> Path:
    """Write rows ({"id" and/or "image", "caption"}) as JSONL or CSV (by suffix), atomically."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise DataError(path, "captions file must be a .jsonl or .csv file")
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".jsonl":
            for row in rows:
                fh.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
        else:
            columns = [c for c in (*_KEY_COLUMNS, CAPTION_KEY) if any(c in r for r in rows)]
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(dict(r) for r in rows)
    os.replace(tmp, path)
    return path


def caption_for(sample: Sample, captions: Mapping[str, str] | None) -> str | None:
    """The sample's caption: the captions mapping (by id, then image path), else a `caption` metadata field."""
    if captions:
        for key in (sample.id, sample.image_path, str(Path(sample.image_path).resolve())):
            if key in captions:
                return captions[key]
    text = sample.metadata.get(CAPTION_KEY)
    return text.strip() if isinstance(text, str) and text.strip() else None


def image_meta(sample: Sample, captions: Mapping[str, str] | None = None, *,
               paired_report: bool = False) -> dict[str, Any]:
    """Side information that travels with the image: allow-listed metadata plus its caption.

    Never contains the report (only IMAGE_META_KEYS are copied), unless `paired_report` is set:
    then the report is added under PAIRED_REPORT_KEY, for the leak study's diagnostic models only.
    """
    meta = {k: sample.metadata[k] for k in IMAGE_META_KEYS if k in sample.metadata and k != CAPTION_KEY}
    caption = caption_for(sample, captions)
    if caption is not None:
        meta[CAPTION_KEY] = caption
    if paired_report:
        meta[PAIRED_REPORT_KEY] = sample.report
    return meta


def captions_from_meta(meta: Sequence[Mapping[str, Any] | None] | None, n: int) -> list[str | None]:
    """Per-image caption text (None where the image has none) from an `encode_image` meta list."""
    if meta is None:
        return [None] * n
    if len(meta) != n:
        raise ValueError(f"meta has {len(meta)} entries for {n} images")
    out: list[str | None] = []
    for m in meta:
        text = (m or {}).get(CAPTION_KEY)
        out.append(text.strip() if isinstance(text, str) and text.strip() else None)
    return out


# ---- the built-in captioner ---------------------------------------------------------------------------
def display_name(label: str) -> str:
    """Label name as it reads in a sentence: ODIR codes become their names, everything lower case."""
    return ODIR_CLASSES.get(label, label).lower() if len(label) == 1 else label.lower()


def render_findings(labels: Sequence[str]) -> str:
    """"Findings: a, b." for the abnormal labels, "No acute findings." when there are none."""
    names = [display_name(x) for x in labels]
    findings = [n for n in names if n not in _NORMAL_NAMES]
    return f"Findings: {', '.join(findings)}." if findings else NO_FINDINGS_SENTENCE


class BuiltinCaptioner(nn.Module):
    """Multi-label classifier on pooled image features that writes a one-line finding sentence.

    Trained jointly with the hashing model as an auxiliary loss on *detached* image features, so
    it is a probe of the image tower and never reshapes it; its sentences depend on the image only.
    """

    def __init__(self, in_dim: int, label_names: Sequence[str], hidden: int = 256, threshold: float = 0.5) -> None:
        super().__init__()
        if not label_names:
            raise ValueError("the built-in captioner needs label names")
        self.label_names = list(label_names)
        self.threshold = threshold
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, len(self.label_names)))

    def forward(self, features: Tensor) -> Tensor:
        """Pooled image features (B, D) -> label logits (B, C)."""
        return self.net(features)

    @torch.no_grad()
    def sentences(self, features: Tensor) -> list[str]:
        """One finding sentence per image, from the labels whose probability reaches the threshold."""
        positive = (torch.sigmoid(self.forward(features).float()) >= self.threshold).cpu().tolist()
        return [render_findings([n for n, on in zip(self.label_names, row, strict=True) if on]) for row in positive]
