"""Encode every case of a library with one model and store the codes in SQLite.

Resumable: cases that already have codes for this model are skipped, so an interrupted run
(Ctrl-C, SIGKILL) picks up where it stopped. Each batch is stored in one transaction per
(modality, bits), so a batch is either fully there or not at all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from PIL import Image

from medhash_app.core.encoder.service import EncodedBatch, EncoderService, image_meta
from medhash_app.core.errors import CorruptFileError
from medhash_app.core.library import Library

Progress = Callable[[int, int], None]


def _missing_case_ids(library: Library, model_id: int, bits: int) -> list[str]:
    have = set(library.get_codes(model_id, "image", bits)[0].tolist())
    return [cid for cid in library.case_ids() if cid not in have]


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
    for bits, packed in enc.codes.items():
        library.put_codes(model_id, modality, bits, case_ids, packed, embeddings=enc.embeddings)


def encode_library(library: Library, model_id: int, encoder: EncoderService, *, batch_size: int = 64,
                   progress: Progress | None = None, cancel: threading.Event | None = None) -> int:
    """Encode the images and reports of all not-yet-encoded cases; returns how many were encoded."""
    todo = _missing_case_ids(library, model_id, max(encoder.bits))
    done = 0
    for start in range(0, len(todo), batch_size):
        if cancel is not None and cancel.is_set():
            break
        cases = library.get_cases(todo[start:start + batch_size])
        _store(library, model_id, "image", [c["id"] for c in cases],
               encoder.encode_pil(_load_inputs(library, cases), meta=[image_meta(c) for c in cases]))
        with_report = [c for c in cases if c.get("report") and c["report"].strip()]
        if with_report:
            _store(library, model_id, "text", [c["id"] for c in with_report],
                   encoder.encode_texts([c["report"] for c in with_report]))
        done += len(cases)
        if progress is not None:
            progress(done, len(todo))
    return done
