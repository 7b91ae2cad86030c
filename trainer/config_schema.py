"""The bounds of a model configuration read from a file (a checkpoint's config.json), in one place.

A checkpoint is input like any other: a folder someone sent can hold any JSON. Its values are
checked here before anything is built, so a bad one is refused with one line naming the field
instead of allocating a 1e9-wide layer, handing a path to open_clip as an architecture name, or
recursing without end. Every limit sits far outside what a real configuration uses and well
inside what fits in memory.
"""

from __future__ import annotations

import math
import re
from typing import Any

from trainer.errors import MedHashError

MAX_CONFIG_BYTES = 16 * 1024**2  # label names and metrics take kilobytes
MAX_JSON_DEPTH = 32  # real configurations nest 4 levels; hostile ones nest until RecursionError
BITS = (8, 4096)  # code lengths, multiples of 8 (codes are stored as bytes); papers use 16-128
MAX_CODE_LENGTHS = 16  # code lengths one model trains at once
EMBED_DIM = (8, 8192)  # real projections are 32-1024 wide; 8192 keeps each head layer < 300 MB
TRAINABLE_TOP_BLOCKS = (0, 64)  # transformer towers have 6-48 blocks
TEMPERATURE = (1e-4, 100.0)  # InfoNCE temperatures are 0.01-1
MAX_LOSS_WEIGHT = 1e6
MAX_ENTRIES = 256  # per mapping: components, loss_weights, options
MAX_LABELS = 10_000  # label vocabularies are tens of names
MAX_NAME_CHARS = 256  # a label, method or option name
MAX_PATH_CHARS = 4096
MIN_TEXT_WINDOW = 4  # a window must hold the tower's special tokens and a few words
MAX_TEXT_WINDOW = 65_536
BACKBONES = ("embedded", "tiny")
OPEN_CLIP_PREFIX = "open_clip:"
# An open_clip architecture name as open_clip spells them (ViT-B-16, convnext_base_w, RN50x4):
# no path separators, dots or schemes, so the name can only pick a built-in architecture.
OPEN_CLIP_ARCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
METHOD_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def check_depth(value: Any, what: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                raise MedHashError(what, f"is nested more than {limit} levels deep")
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def validate_model_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """`data` if every ModelConfig field it has is of the right type and within bounds; otherwise
    MedHashError("model config", "<prefix><field> ...") naming the first bad field. Unknown
    fields are left to ModelConfig.from_dict, which names them."""
    if not isinstance(data, dict):
        raise MedHashError("model config", f"{prefix.rstrip('.') or 'the model configuration'} must be a JSON "
                                           f"object, not {_shown(data)}")
    check_depth(data, "model config")
    for name, check in _FIELDS.items():
        if name in data:
            reason = check(data[name])
            if reason:
                raise MedHashError("model config", f"{prefix}{name} {reason}, not {_shown(data[name])}")
    return data


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _real(value: Any, low: float, high: float) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high)


def _name(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_NAME_CHARS


def _mapping(value: Any, ok: Any) -> bool:
    return (isinstance(value, dict) and len(value) <= MAX_ENTRIES
            and all(_name(k) and ok(v) for k, v in value.items()))


def _backbone(value: Any) -> str | None:
    if value in BACKBONES:
        return None
    if isinstance(value, str) and value.startswith(OPEN_CLIP_PREFIX) \
            and OPEN_CLIP_ARCH.fullmatch(value[len(OPEN_CLIP_PREFIX):]):
        return None
    return f"must be {', '.join(BACKBONES)} or {OPEN_CLIP_PREFIX}<architecture name>"


def _bits(value: Any) -> str | None:
    if (isinstance(value, list) and 0 < len(value) <= MAX_CODE_LENGTHS
            and all(_whole(b, *BITS) and b % 8 == 0 for b in value)):
        return None
    return (f"must be a list of 1 to {MAX_CODE_LENGTHS} code lengths, multiples of 8 from {BITS[0]} "
            f"to {BITS[1]}")


_FIELDS = {
    "method": lambda v: None if isinstance(v, str) and METHOD_NAME.fullmatch(v) else
    "must be a method name (lower-case letters, digits, - and _)",
    "backbone": _backbone,
    "weights_path": lambda v: None if v is None or (isinstance(v, str) and len(v) <= MAX_PATH_CHARS
                                                    and "\0" not in v) else "must be a file path or null",
    "bits": _bits,
    "embed_dim": lambda v: None if _whole(v, *EMBED_DIM) else
    f"must be a whole number from {EMBED_DIM[0]} to {EMBED_DIM[1]}",
    "trainable_top_blocks": lambda v: None if _whole(v, *TRAINABLE_TOP_BLOCKS) else
    f"must be a whole number from {TRAINABLE_TOP_BLOCKS[0]} to {TRAINABLE_TOP_BLOCKS[1]}",
    "components": lambda v: None if _mapping(v, lambda x: isinstance(x, bool)) else
    "must map component names to true/false",
    "loss_weights": lambda v: None if _mapping(v, lambda x: _real(x, -MAX_LOSS_WEIGHT, MAX_LOSS_WEIGHT)) else
    f"must map loss names to finite numbers within +-{MAX_LOSS_WEIGHT:g}",
    "temperature": lambda v: None if _real(v, *TEMPERATURE) else
    f"must be a number from {TEMPERATURE[0]:g} to {TEMPERATURE[1]:g}",
    "label_names": lambda v: None if isinstance(v, list) and len(v) <= MAX_LABELS and all(map(_name, v)) else
    f"must be a list of at most {MAX_LABELS:,} label names (text of at most {MAX_NAME_CHARS} characters)",
    "options": lambda v: None if _mapping(v, lambda x: True) else
    f"must map at most {MAX_ENTRIES} option names to values",
    "text_window": lambda v: None if v is None or _whole(v, MIN_TEXT_WINDOW, MAX_TEXT_WINDOW) else
    f"must be null (the tower's own limit) or a whole number of tokens from {MIN_TEXT_WINDOW} to {MAX_TEXT_WINDOW}",
}
