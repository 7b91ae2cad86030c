"""Checkpoint -> binary codes for images and texts, batched, on the GPU when there is one.

A code depends only on its own item: images are encoded from their own pixels (through the same
`imaging.model_image` as ingest and training), texts from their own words, and the model is in
eval mode so nothing mixes samples of a batch. Stored codes and query codes come from here alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medhash_app.core.encoder.stem_features import capture, stem_module
from medhash_app.core.errors import InvalidReportError, ModelError
from medhash_app.core.imaging import LoadedImage, load_image, model_image
from medhash_app.core.imaging.render import MODEL_SIDE
from trainer.checkpoint import load_checkpoint
from trainer.data.captions import IMAGE_META_KEYS
from trainer.errors import CheckpointError
from trainer.evaluate import pack_signs

MAX_REPORT_CHARS = 100_000  # longer input is cut (the text tower reads its first tokens anyway)


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is usable, else "cpu"; explicit choices are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(device, "no CUDA GPU is available on this machine; use --device cpu")
    return device


@dataclass
class EncodedBatch:
    """Packed codes per code length plus the continuous embeddings (for re-ranking)."""

    codes: dict[int, np.ndarray]  # bits -> (N, bits/8) uint8
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    # images only: pooled output of the tower's frozen pretrained layers (core/encoder/stem_features.py)
    features: np.ndarray | None = None


def clean_report(text: str | None, item: str = "report") -> str:
    """Reject empty reports and text that is not valid Unicode (a terminal or file in another
    encoding gives Python lone surrogates, which the tokenizer cannot take) with a clear error;
    cut absurdly long ones instead of failing."""
    if text is None or not text.strip():
        raise InvalidReportError(item, "the report is empty; type a few words of findings")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidReportError(item, "the text is not valid UTF-8 (was it typed or saved in another encoding?); "
                                 "re-type it or convert it to UTF-8") from None
    return " ".join(text.split())[:MAX_REPORT_CHARS]


class EncoderService:
    """Loads one checkpoint (never unpickled) and encodes images and texts with it."""

    def __init__(self, checkpoint_dir: str | Path, device: str = "auto", batch_size: int = 32, *,
                 lite: bool = True) -> None:
        """`lite`: the backbone's plain-PyTorch form where it has one (trainer/models/embedded_lite.py):
        the same codes, loaded in a fraction of the time and without open_clip/timm/transformers."""
        self.checkpoint_dir = Path(checkpoint_dir)
        self.device = resolve_device(device)
        try:
            self.model, self.model_cfg, self.meta = load_checkpoint(self.checkpoint_dir, device=self.device, lite=lite)
        except CheckpointError as exc:
            raise ModelError(exc.item, exc.reason) from exc
        self.model.eval()
        self.batch_size = batch_size
        self._stem = stem_module(self.model.backbone)

    @property
    def bits(self) -> list[int]:
        return list(self.model_cfg.bits)

    def _finish(self, codes: dict[int, torch.Tensor], emb: torch.Tensor | None) -> EncodedBatch:
        packed = {int(b): pack_signs(c.float().cpu().numpy()) for b, c in codes.items()}
        n = next(iter(codes.values())).shape[0]
        return EncodedBatch(packed, emb.float().cpu().numpy() if emb is not None else np.zeros((n, 0), np.float32))

    def prepare(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Model images -> input tensors, one per encoder batch: the CPU work before the tower, which
        library encoding does in a second thread while the tower runs on the batch before."""
        pre = [self.model.backbone.preprocess(im) for im in images]
        return [torch.stack(pre[i:i + self.batch_size]) for i in range(0, len(pre), self.batch_size)]

    def encode_pil(self, images: Sequence[Image.Image], meta: Sequence[dict] | None = None, *,
                   embeddings: bool = True) -> EncodedBatch:
        """Encode model images (the output of `imaging.model_image`) with their own metadata.

        `embeddings=False` skips the continuous embedding, which only re-ranking needs."""
        return self.encode_prepared(self.prepare(images), meta, embeddings=embeddings)

    @torch.inference_mode()
    def encode_prepared(self, batches: Sequence[torch.Tensor], meta: Sequence[dict] | None = None, *,
                        embeddings: bool = True) -> EncodedBatch:
        """Encode the tensors of `prepare` (meta: one dict per image, in order)."""
        parts: list[EncodedBatch] = []
        start = 0
        for x in batches:
            chunk_meta = list(meta[start:start + len(x)]) if meta is not None else None
            start += len(x)
            with capture(self._stem) as stems:  # the stem features come from the same forward
                if embeddings:  # codes and embedding from one tower pass (two cost twice the time)
                    part = self._finish(*self.model.encode_embed_image(x.to(self.device), meta=chunk_meta))
                else:
                    part = self._finish(self.model.encode_image(x.to(self.device), meta=chunk_meta), None)
            part.features = stems[0].numpy() if stems and len(stems[0]) == len(x) else None
            parts.append(part)
        return _concat(parts, self.bits)

    def encode_loaded(self, images: Sequence[LoadedImage], *, embeddings: bool = True) -> EncodedBatch:
        return self.encode_pil([model_image(im) for im in images],
                               meta=[image_meta(im.facts.to_dict()) for im in images], embeddings=embeddings)

    def encode_files(self, paths: Sequence[str | Path], frame: int | None = None, *,
                     embeddings: bool = True) -> EncodedBatch:
        # the model input is MODEL_SIDE wide: a JPEG 2000 file may decode at a reduced resolution
        return self.encode_loaded([load_image(Path(p), frame=frame, min_side=MODEL_SIDE) for p in paths],
                                  embeddings=embeddings)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, embeddings: bool = True) -> EncodedBatch:
        parts: list[EncodedBatch] = []
        cleaned = [clean_report(t, f"report {i + 1}") for i, t in enumerate(texts)]
        for start in range(0, len(cleaned), self.batch_size):
            tokens = self.model.backbone.tokenize(cleaned[start:start + self.batch_size])
            tokens = _to_device(tokens, self.device)
            parts.append(self._finish(*self.model.encode_embed_text(tokens)) if embeddings
                         else self._finish(self.model.encode_text(tokens), None))
        return _concat(parts, self.bits)


def image_meta(record: dict) -> dict:
    """The side information that travels with an image (header facts or a case row): never the
    report. The same keys the trainer saw in training (trainer.data.captions.IMAGE_META_KEYS)."""
    return {k: record[k] for k in IMAGE_META_KEYS if record.get(k) not in (None, "")}


def _to_device(tokens: object, device: str) -> object:
    if isinstance(tokens, torch.Tensor):
        return tokens.to(device)
    if isinstance(tokens, dict):
        return {k: v.to(device) for k, v in tokens.items()}
    return tokens


def _concat(parts: list[EncodedBatch], bits: list[int]) -> EncodedBatch:
    if not parts:
        return EncodedBatch({b: np.zeros((0, b // 8), np.uint8) for b in bits}, np.zeros((0, 0), np.float32))
    codes = {b: np.concatenate([p.codes[b] for p in parts]) for b in parts[0].codes}
    features = (np.concatenate([p.features for p in parts]) if all(p.features is not None for p in parts)
                else None)
    return EncodedBatch(codes, np.concatenate([p.embeddings for p in parts]), features)


ProgressFn = Callable[[int, int], None]
