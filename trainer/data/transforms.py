"""Image transforms for the model input: one deterministic eval path, one light train augmentation.

Images reach the trainer already square (medhash_app.core.imaging.model_image letterboxes them);
`Letterbox` makes any other image square the same way instead of cropping it, so a manifest of
raw files sees what the app sees. No flips: left/right carries meaning in chest films (heart side)
and fundus photographs (which eye).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:  # imported where used: torchvision costs seconds at start-up
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
    from torchvision.transforms import v2

    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


class EvalTransform:
    """Letterbox to size, scale to [0, 1], normalise: PIL -> float tensor (3, size, size).

    The same arithmetic as torchvision's v2.PILToTensor + ToDtype(float32, scale=True) + Normalize,
    and the same repr (feature caches are keyed by it), without importing torchvision, which pulls in
    torch._dynamo and sympy: seconds at the start of every `medhash search` (tests/test_embedded_lite.py
    checks both against torchvision)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.letterbox = Letterbox(size)
        self.mean_list, self.std_list = list(mean), list(std)
        self.mean = torch.tensor(self.mean_list, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(self.std_list, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(self.letterbox(img), dtype=np.uint8)).permute(2, 0, 1)
        return pixels.to(torch.float32).mul_(1.0 / 255).sub(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return (f"Compose(\n      {self.letterbox!r}\n      PILToTensor()\n      ToDtype(scale=True)\n"
                f"      Normalize(mean={self.mean_list}, std={self.std_list}, inplace=False)\n)")


def eval_transform(size: int, mean: Sequence[float] = HALF, std: Sequence[float] = HALF) -> EvalTransform:
    """Deterministic: letterbox to size, scale to [0, 1], normalise. PIL -> float tensor (3, size, size)."""
    return EvalTransform(size, mean, std)


def train_transform(size: int, mean: Sequence[float] = HALF, std: Sequence[float] = HALF) -> v2.Compose:
    """Light augmentation that keeps anatomy plausible: small crop/scale, small rotation, contrast."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            Letterbox(size),
            v2.RandomResizedCrop(size, scale=(0.85, 1.0), ratio=(0.95, 1.05), antialias=True),
            v2.RandomRotation(5),
            v2.ColorJitter(brightness=0.1, contrast=0.1),
            *_to_normalized(mean, std),
        ]
    )
