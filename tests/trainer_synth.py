"""Synthetic image-report pairs for the trainer tests: coloured shapes named in the report.

The class (shape) is visible in the image and written in the report, so a model that learns
anything retrieves across modalities far better than chance; colour and position vary freely.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from trainer.data.manifest import Sample

SHAPES = ("circle", "square", "triangle")
COLOURS = {"circle": (220, 40, 40), "square": (40, 180, 60), "triangle": (40, 80, 220)}
PLACES = ("left", "right", "top", "bottom", "centre")


def _draw(shape: str, rng: random.Random, size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(rng.randint(0, 40) for _ in range(3)))
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 6, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    jitter = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in COLOURS[shape])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=jitter)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=jitter)
    return img


def make_samples(folder: Path, n: int = 60, seed: int = 0, per_patient: int = 2) -> list[Sample]:
    """n pairs; images written as PNG into folder; labels = [shape]; patients hold `per_patient` pairs."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        path = folder / f"img_{i:03d}.png"
        _draw(shape, rng).save(path)
        report = f"there is a {shape} at the {rng.choice(PLACES)} of the picture"
        samples.append(Sample(id=f"s{i:03d}", image_path=str(path), report=report, labels=[shape],
                              patient_id=f"p{i // per_patient:03d}"))
    return samples


def tiny_model(method: str, labels, components=None, options=None, seed: int = 0, bits=(16, 32)):
    """A seeded `method` model on the tiny backbone (embed_dim 16) for fast unit tests."""
    import torch

    from trainer.config import ModelConfig
    from trainer.models import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(method=method, backbone="tiny", bits=list(bits), embed_dim=16, label_names=list(labels),
                      components=dict(components or {}), options=dict(options or {}))
    return build_model(cfg)
