"""Encode every case of a library with one model and store the codes in SQLite.

Resumable: a case is picked when its image code of the longest length is missing, so an
interrupted run (Ctrl-C, SIGKILL) picks up where it stopped. Each (modality, bits) of a batch is
one transaction; a batch stores its text codes first and its longest image code last, so a case
whose longest image code exists has all its codes. A case whose image codes were removed (a new
caption, core/captions.py) while its text codes stayed gets only its image re-encoded.

An image is encoded with its case's own side information: the allow-listed header facts and the
image's caption (`extra["caption"]`), the same metadata training gives it (training.library_samples).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from PIL import Image

from medhash_app.core.encoder.service import EncodedBatch, EncoderService, image_meta
from medhash_app.core.encoder.stem_features import checkpoint_identity, save_features
from medhash_app.core.errors import CorruptFileError
from medhash_app.core.library import Library

Progress = Callable[[int, int], None]


def _missing_case_ids(library: Library, model_id: int, bits: int) -> list[str]:
    have = set(library.get_codes(model_id, "image", bits)[0].tolist())
    return [cid for cid in library.case_ids() if cid not in have]


def case_image_meta(case: dict) -> dict:
    """What travels with a case's image: header facts plus its caption from `extra` (never the report)."""
    caption = (case.get("extra") or {}).get("caption")
    return image_meta({**case, "caption": caption if isinstance(caption, str) and caption.strip() else None})


def _load_inputs(library: Library, cases: list[dict]) -> list[Image.Image]:
    images = []
    for case in cases:
        path = library.path_of(case["input_path"])
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except OSError as exc:
            raise CorruptFileError(path, f"the stored model image cannot be read ({exc}); re-run ingest "
                                   "to repair it") from exc
    return images


def _store(library: Library, model_id: int, modality: str, case_ids: list[str], enc: EncodedBatch) -> None:
    for bits in sorted(enc.codes):  # longest last: its presence marks a finished case
        library.put_codes(model_id, modality, bits, case_ids, enc.codes[bits], embeddings=enc.embeddings)


def encode_library(library: Library, model_id: int, encoder: EncoderService, *, batch_size: int = 64,
                   progress: Progress | None = None, cancel: threading.Event | None = None) -> int:
    """Encode the images (and the reports not yet encoded) of every case without an image code;
    returns how many cases were encoded."""
    bits = max(encoder.bits)
    todo = _missing_case_ids(library, model_id, bits)
    have_text = set(library.get_codes(model_id, "text", bits)[0].tolist()) if todo else set()
    done = 0
    if progress is not None and todo:  # the total is known before the first (slow) batch
        progress(0, len(todo))
    feature_ids: list[str] = []
    features: list[np.ndarray] = []
    try:
        for start in range(0, len(todo), batch_size):
            if cancel is not None and cancel.is_set():
                break
            cases = library.get_cases(todo[start:start + batch_size])
            texts = [c for c in cases if c["id"] not in have_text and c.get("report") and c["report"].strip()]
            if texts:
                _store(library, model_id, "text", [c["id"] for c in texts],
                       encoder.encode_texts([c["report"] for c in texts]))
            images = encoder.encode_pil(_load_inputs(library, cases), meta=[case_image_meta(c) for c in cases])
            _store(library, model_id, "image", [c["id"] for c in cases], images)
            if images.features is not None:  # kept for the out-of-domain image check (search/feature_ood.py)
                feature_ids += [c["id"] for c in cases]
                features.append(images.features)
            done += len(cases)
            if progress is not None:
                progress(done, len(todo))
    finally:
        if features:
            save_features(library.folder, model_id, checkpoint_identity(encoder.checkpoint_dir), feature_ids,
                          np.concatenate(features))
    return done
