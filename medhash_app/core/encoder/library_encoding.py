"""Encode every case of a library with one model and store the codes in SQLite.

Resumable: a case is picked when its image code of the longest length is missing, so an
interrupted run (Ctrl-C, SIGKILL) picks up where it stopped. Each (modality, bits) of a batch is
one transaction; a batch stores its text codes first and its longest image code last, so a case
whose longest image code exists has all its codes. A case whose image codes were removed (a new
caption, core/captions.py) while its text codes stayed gets only its image re-encoded.

An image is encoded with its case's own side information: the allow-listed header facts and the
image's caption (`extra["caption"]`), the same metadata training gives it (training.library_samples).

Speed (issue 14, benchmarks/results/library_encode.md): the image tower runs once per image (codes and
embedding from one forward), a report text repeated across cases (ODIR-5K: 98 distinct texts in 3,106
cases) is encoded once per run, the next batch's images are read and preprocessed while the tower
runs, and progress is reported after every encoder batch (throttled), so the bar moves at the
tower's pace.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from medhash_app.core.encoder.service import EncodedBatch, EncoderService, image_meta
from medhash_app.core.encoder.stem_features import checkpoint_identity, save_features
from medhash_app.core.errors import CorruptFileError
from medhash_app.core.library import Library
from medhash_app.core.progress_gate import ProgressGate

Progress = Callable[[int, int], None]
PROGRESS_INTERVAL_S = 0.25  # at most this often between two progress reports (first and last at once)


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


class _ReportCodes:
    """Each distinct report text encoded once per run: a code depends on the text alone, and
    templated reports repeat ("normal fundus" is 1,429 of ODIR-5K's 3,106). Bounded, so a library
    of unique reports does not keep them all."""

    MAX_KEPT = 20_000

    def __init__(self, encoder: EncoderService) -> None:
        self.encoder = encoder
        self.rows: dict[str, tuple[dict[int, np.ndarray], np.ndarray]] = {}

    def encode(self, texts: list[str]) -> EncodedBatch:
        new = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if new:
            if len(self.rows) + len(new) > self.MAX_KEPT:
                self.rows.clear()
            enc = self.encoder.encode_texts(new)
            for i, text in enumerate(new):
                self.rows[text] = ({b: c[i] for b, c in enc.codes.items()}, enc.embeddings[i])
        rows = [self.rows[t] for t in texts]
        return EncodedBatch({b: np.stack([r[0][b] for r in rows]) for b in rows[0][0]},
                            np.stack([r[1] for r in rows]))


class _Reporter:
    """(done, total) to `progress`: the first and last at once, the rest at most every PROGRESS_INTERVAL_S
    (a GPU encodes a batch in milliseconds; the window's trainer tab reads each report as a JSON line)."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.gate = progress, total, ProgressGate(PROGRESS_INTERVAL_S)

    def __call__(self, done: int, force: bool = False) -> None:
        if self.progress is not None and self.gate.due(force or done >= self.total):
            self.progress(done, self.total)


def _read_prepared(library: Library, encoder: EncoderService, cases: list[dict]) -> list[torch.Tensor]:
    return encoder.prepare(_load_inputs(library, cases))


def encode_library(library: Library, model_id: int, encoder: EncoderService, *, batch_size: int | None = None,
                   progress: Progress | None = None, cancel: threading.Event | None = None) -> int:
    """Encode the images (and the reports not yet encoded) of every case without an image code;
    returns how many cases were encoded. `batch_size`: cases per step (default: the encoder's
    batch, so progress moves with every tower batch). The next batch's images are read and
    preprocessed in a second thread while the tower runs (PIL and torch release the GIL)."""
    bits = max(encoder.bits)
    batch_size = batch_size or encoder.batch_size
    todo = _missing_case_ids(library, model_id, bits)
    have_text = set(library.get_codes(model_id, "text", bits)[0].tolist()) if todo else set()
    done, report, reports = 0, _Reporter(progress, len(todo)), _ReportCodes(encoder)
    if todo:  # the total is known before the first (slow) batch
        report(0, force=True)
    steps = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    feature_ids: list[str] = []
    features: list[np.ndarray] = []
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medhash-encode-read") as reader:
            upcoming = library.get_cases(steps[0]) if steps else []
            pending = reader.submit(_read_prepared, library, encoder, upcoming) if steps else None
            for step in range(len(steps)):
                if cancel is not None and cancel.is_set():
                    break
                cases, inputs = upcoming, pending.result()
                if step + 1 < len(steps):
                    upcoming = library.get_cases(steps[step + 1])
                    pending = reader.submit(_read_prepared, library, encoder, upcoming)
                texts = [c for c in cases if c["id"] not in have_text and c.get("report") and c["report"].strip()]
                if texts:
                    _store(library, model_id, "text", [c["id"] for c in texts],
                           reports.encode([c["report"] for c in texts]))
                images = encoder.encode_prepared(inputs, meta=[case_image_meta(c) for c in cases])
                _store(library, model_id, "image", [c["id"] for c in cases], images)
                if images.features is not None:  # kept for the out-of-domain image check (search/feature_ood.py)
                    feature_ids += [c["id"] for c in cases]
                    features.append(images.features)
                done += len(cases)
                report(done)
    finally:
        if features:
            save_features(library.folder, model_id, checkpoint_identity(encoder.checkpoint_dir), feature_ids,
                          np.concatenate(features))
    return done
