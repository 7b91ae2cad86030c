"""Torch dataset over `Sample`s: reads the image file with PIL, keeps the report as text.

Tokenization happens in the collate function (batch-level padding); transforms and tokenizers
are plain picklable objects, so DataLoader workers never receive the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.data.captions import image_meta
from trainer.data.manifest import Sample
from trainer.errors import DataError

Tokenizer = Callable[[Sequence[str]], dict[str, Tensor]]


@dataclass
class Batch:
    """One training/encoding batch. `extras` carries method-specific inputs (captions, context)."""

    images: Tensor  # (B, 3, S, S)
    tokens: dict[str, Tensor]  # input_ids / attention_mask, (B, L)
    labels: Tensor  # (B, C) float multi-hot
    index: Tensor  # (B,) position of each item in its dataset
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        move = lambda t: t.to(device, non_blocking=non_blocking) if isinstance(t, Tensor) else t
        return Batch(
            images=move(self.images),
            tokens={k: move(v) for k, v in self.tokens.items()},
            labels=move(self.labels),
            index=move(self.index),
            extras={k: move(v) for k, v in self.extras.items()},
        )


def read_rgb(path: str) -> Image.Image:
    """Open an image file as RGB, raising DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(path, "image file not found") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(path, f"cannot read image: {exc.__class__.__name__}") from exc


def multi_hot(labels: Sequence[str], label_names: Sequence[str]) -> Tensor:
    """Label strings -> float multi-hot over `label_names` (labels outside the list are ignored)."""
    index = {n: i for i, n in enumerate(label_names)}
    out = torch.zeros(len(label_names))
    for name in labels:
        if name in index:
            out[index[name]] = 1.0
    return out


class PairDataset(Dataset):
    """Image-report pairs: item i -> (image tensor, report, multi-hot labels, i, image meta).

    The image meta (captions.image_meta: allow-listed image-side metadata + the image's caption
    from `captions`, if given) never contains the report, unless `paired_report` is set (the leak
    study's diagnostic models only, models.views.LEAK_OPTION).
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], Tensor],
                 label_names: Sequence[str], captions: Mapping[str, str] | None = None,
                 paired_report: bool = False) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.label_names = list(label_names)
        self.captions = captions
        self.paired_report = paired_report

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, str, Tensor, int, dict[str, Any]]:
        s = self.samples[i]
        image = self.transform(read_rgb(s.image_path))
        meta = image_meta(s, self.captions, paired_report=self.paired_report)
        return image, s.report, multi_hot(s.labels, self.label_names), i, meta


class Collate:
    """Stack images and labels, tokenize the reports of the batch together; extras["meta"] = image metas."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[Tensor, str, Tensor, int, dict[str, Any]]]) -> Batch:
        images, reports, labels, index, metas = zip(*items, strict=True)
        # A tokenizer that builds per-report context prompts (TriPAH) also gets each case's metadata.
        accepts_meta = getattr(self.tokenizer, "accepts_meta", False)
        return Batch(
            images=torch.stack(images),
            tokens=self.tokenizer(list(reports), metas=list(metas)) if accepts_meta else self.tokenizer(list(reports)),
            labels=torch.stack(labels),
            index=torch.tensor(index, dtype=torch.long),
            extras={"meta": list(metas)},
        )


def make_loader(
    samples: Sequence[Sample],
    transform: Callable[[Image.Image], Tensor],
    tokenizer: Tokenizer,
    label_names: Sequence[str],
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    captions: Mapping[str, str] | None = None,
    sampler: Sampler | None = None,
    paired_report: bool = False,
) -> DataLoader:
    """DataLoader of `Batch`es; with shuffle, the order is fixed by `seed` (the engine passes seed+epoch).

    `captions` (captions.load_captions) adds each image's caption to Batch.extras["meta"].
    A `sampler` (the engine's DistributedSampler under torchrun) replaces `shuffle`.
    `paired_report` adds each image's paired report to its meta: ONLY for a model built with the
    leak study's diagnostic option (models.views.LEAK_OPTION); off, the meta is exactly as before.
    """
    shuffle = shuffle and sampler is None
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        PairDataset(samples, transform, label_names, captions, paired_report),
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        collate_fn=Collate(tokenizer),
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
