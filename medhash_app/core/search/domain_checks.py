"""The out-of-domain verdict of one query: every check's say, combined into one plain reason.

Checks (each calibrated on held-out library items, each may say "too few to judge"):
  codes            core/search/ood.py           image and report queries, per model
  image statistics core/image_stats.py          image queries, model-free
  image features   core/search/feature_ood.py   image queries, the backbone's pretrained layers
  words            core/search/lexical.py       report queries, model-free TF-IDF

A query is out of domain when any check says so; the reason names the checks that fired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from medhash_app.core.encoder.service import EncoderService
from medhash_app.core.encoder.stem_features import checkpoint_identity, load_features, save_features
from medhash_app.core.library import Library
from medhash_app.core.search.feature_ood import FeatureReference, build_feature_reference, sample_rows

TAIL = "The matches below are the least unlike cases, not similar ones."
BATCH = 32


@dataclass(frozen=True)
class Verdict:
    """One check's answer: out (True/False) or None when it cannot judge; `detail` names the check."""

    out: bool | None
    detail: str | None = None


def combine(kind: str, verdicts: list[Verdict]) -> tuple[bool | None, str | None]:
    """Out of domain when any check says so; None only when no check could judge."""
    known = [v for v in verdicts if v.out is not None]
    if not known:
        return None, None
    fired = [v.detail for v in known if v.out and v.detail]
    if not fired:
        return False, None
    what = "image" if kind == "image" else "report"
    return True, " ".join([f"This {what} is unlike every case in this library.", *fired, TAIL])


def library_feature_reference(library: Library, model_id: int, encoder: EncoderService) -> FeatureReference | None:
    """Stem features of a fixed sample of library images: read from the library's store (filled while
    the library was encoded), the missing ones computed from the stored model inputs and kept."""
    cases = [(c["id"], c["input_path"]) for c in library.iter_cases() if c.get("input_path")]
    picked = [cases[i] for i in sample_rows(len(cases))]
    checkpoint = checkpoint_identity(encoder.checkpoint_dir)
    stored = load_features(library.folder, model_id, checkpoint)
    missing = [(cid, rel) for cid, rel in picked if cid not in stored]
    for start in range(0, len(missing), BATCH):
        ids, images = _read_inputs(library, missing[start:start + BATCH])
        if not images:
            continue
        found = encoder.encode_pil(images, embeddings=False).features
        if found is None:
            return None  # this backbone has no frozen stem to compare in
        stored.update(zip(ids, found))
        save_features(library.folder, model_id, checkpoint, ids, found)
    feats = [stored[cid] for cid, _ in picked if cid in stored]
    return build_feature_reference(np.stack(feats).astype(np.float32)) if feats else None


def _read_inputs(library: Library, items: list[tuple[str, str]]) -> tuple[list[str], list[Image.Image]]:
    ids, images = [], []
    for case_id, rel in items:
        try:
            with Image.open(library.path_of(rel)) as im:
                images.append(im.convert("RGB"))
            ids.append(case_id)
        except OSError:
            continue  # a missing model input: the case is left out of the reference
    return ids, images
