"""Pooled features of the image tower's frozen, pretrained layers: captured, and kept per library.

Why: the out-of-domain image check (core/search/feature_ood.py) compares a query with library
images in the space of the pretrained layers. Those layers run anyway whenever an image is
encoded, so a forward hook on the last frozen module takes their output for free (no second
pass), at query time and while a library is encoded.

Where they are kept: `<library>/ood/image-features-m<model id>.npz` (case ids, float16 features,
the checkpoint they came from, by `checkpoint_identity`). It is a cache: a missing, unreadable or foreign file (another
checkpoint under the same model id) is ignored and refilled; cases that left the library are
simply not looked up.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

FOLDER = "ood"


def stem_module(backbone: nn.Module) -> nn.Module | None:
    """The module whose output is the frozen stem's output (the last frozen image block, or the
    patch/conv embedding when every block trains); None when the backbone does not say."""
    split = getattr(backbone, "_image_split", None)  # Backbone keeps the frozen/trainable split here
    if split is None or not hasattr(backbone, "image_blocks"):
        return None
    if split > 0:
        return backbone.image_blocks()[split - 1]
    embed = backbone.image_embed_modules() if hasattr(backbone, "image_embed_modules") else []
    return embed[-1] if embed else None


def _pool(out: object) -> torch.Tensor | None:
    """(B, C, H, W) feature maps or (B, N, D) tokens -> (B, C | D)."""
    t = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(t, torch.Tensor) or t.dim() < 2:
        return None
    if t.dim() == 4:
        return t.float().mean(dim=(2, 3))
    if t.dim() == 3:
        return t.float().mean(dim=1)
    return t.float()


@contextmanager
def capture(module: nn.Module | None) -> Iterator[list[torch.Tensor]]:
    """Collect the pooled output of every call of `module` while the block runs."""
    seen: list[torch.Tensor] = []
    if module is None:
        yield seen
        return

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        pooled = _pool(out)
        if pooled is not None:
            seen.append(pooled.detach().cpu())

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def checkpoint_identity(checkpoint_dir: str | Path) -> str:
    """Which checkpoint features came from, unchanged when the library folder moves: the checkpoint
    folder's name and its weights file's size (a different model under the same id differs)."""
    folder = Path(checkpoint_dir)
    weights = folder / "model.safetensors"
    return f"{folder.name}:{weights.stat().st_size if weights.is_file() else 0}"


def store_path(library_folder: Path, model_id: int) -> Path:
    return Path(library_folder) / FOLDER / f"image-features-m{int(model_id)}.npz"


def load_features(library_folder: Path, model_id: int, checkpoint: str) -> dict[str, np.ndarray]:
    """Case id -> stored feature of this model's checkpoint; empty when none or not readable."""
    path = store_path(library_folder, model_id)
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["checkpoint"]) != str(checkpoint):
                return {}
            return dict(zip(data["ids"].tolist(), data["features"]))
    except (OSError, KeyError, ValueError):
        return {}


def save_features(library_folder: Path, model_id: int, checkpoint: str, ids: Iterable[str],
                  features: np.ndarray) -> None:
    """Merge these cases' features into the store, written atomically (temp file + os.replace)."""
    merged = load_features(library_folder, model_id, checkpoint)
    merged.update(zip(ids, np.asarray(features, dtype=np.float16)))
    if not merged:
        return
    path = store_path(library_folder, model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{uuid.uuid4().hex}.npz")
    keys = list(merged)
    np.savez(tmp, ids=np.array(keys, dtype=str), features=np.stack([merged[k] for k in keys]),
             checkpoint=np.array(str(checkpoint)))
    os.replace(tmp, path)
