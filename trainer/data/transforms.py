"""Image transforms for the model input: one deterministic eval path, one light train augmentation.

Images reach the trainer already square (medhash_app.core.imaging.model_image letterboxes them);
`Letterbox` makes any other image square the same way instead of cropping it, so a manifest of
raw files sees what the app sees. No flips: left/right carries meaning in chest films (heart side)
and fundus photographs (which eye).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


class Letterbox:
    """Resize keeping the aspect ratio and pad with black to a `size` x `size` RGB image."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        img = img.convert("RGB")
        w, h = img.size
        if (w, h) == (self.size, self.size):
            return img
        scale = self.size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (self.size, self.size))
        canvas.paste(img, ((self.size - nw) // 2, (self.size - nh) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size})"


def _to_normalized(mean: Sequence[float], std: Sequence[float]) -> list:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def eval_transform(size: int, mean: Sequence[float] = HALF, std: Sequence[float] = HALF) -> v2.Compose:
    """Deterministic: letterbox to size, scale to [0, 1], normalise. PIL -> float tensor (3, size, size)."""
    return v2.Compose([Letterbox(size), *_to_normalized(mean, std)])


def train_transform(size: int, mean: Sequence[float] = HALF, std: Sequence[float] = HALF) -> v2.Compose:
    """Light augmentation that keeps anatomy plausible: small crop/scale, small rotation, contrast."""
    return v2.Compose(
        [
            Letterbox(size),
            v2.RandomResizedCrop(size, scale=(0.85, 1.0), ratio=(0.95, 1.05), antialias=True),
            v2.RandomRotation(5),
            v2.ColorJitter(brightness=0.1, contrast=0.1),
            *_to_normalized(mean, std),
        ]
    )
