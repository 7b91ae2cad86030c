"""Registry of hashing methods: `@register_method("name")` on a HashingModel subclass.

Built-in methods live in the modules listed in `_BUILTIN_MODULES`; they are imported on first use
so that adding a method is one new module plus one line here.
"""

from __future__ import annotations

import importlib

from trainer.config import ModelConfig
from trainer.data.long_text import unwrap_tokenizer
from trainer.errors import MedHashError
from trainer.models.backbones import Backbone, build_backbone
from trainer.models.hashing import HashingModel

_BUILTIN_MODULES = ("trainer.models.base", "trainer.models.mcph", "trainer.models.tripah", "trainer.models.prompthash")
_METHODS: dict[str, type[HashingModel]] = {}


def register_method(name: str):
    """Class decorator: make a HashingModel subclass buildable as `ModelConfig(method=name)`."""

    def decorate(cls: type[HashingModel]) -> type[HashingModel]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name].__name__}")
        cls.method = name
        _METHODS[name] = cls
        return cls

    return decorate


def _load_builtin() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def get_method(name: str) -> type[HashingModel]:
    _load_builtin()
    if name not in _METHODS:
        raise MedHashError("model config", f"unknown method {name!r} (available: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]


def build_model(cfg: ModelConfig, *, backbone: Backbone | None = None, pretrained: bool = True,
                lite: bool = False) -> HashingModel:
    """Build the method named by `cfg.method` on `backbone` (built from cfg when not given).

    `pretrained=False` skips loading the backbone's pretrained weights (used when a checkpoint
    will overwrite them anyway); `lite` asks for the backbone's plain-PyTorch form where it has one.
    """
    cls = get_method(cfg.method)
    if backbone is None:
        backbone = build_backbone(cfg.backbone, pretrained=pretrained, weights_path=cfg.weights_path, lite=lite)
    backbone.freeze_except_top(cfg.trainable_top_blocks)
    apply_text_window(backbone, cfg.text_window)
    return cls(cfg, backbone)


def apply_text_window(backbone: Backbone, window: int | None) -> None:
    """Set the text window (tokens; None = the tower's own limit) on the backbone's tokenizer and on
    `backbone.max_text_length`, which the long-report handling sizes its windows by.

    The tower's own limit is remembered on the backbone (`tower_text_limit`), so a backbone reused
    for another model can be given a different window, or its own one back.
    """
    limit = int(getattr(backbone, "tower_text_limit", backbone.max_text_length))
    backbone.tower_text_limit = limit
    size = limit if window is None else int(window)
    if size > limit:
        raise MedHashError("model config", f"text_window {size} exceeds the {backbone.spec} text tower's limit "
                           f"of {limit} tokens")
    tokenizer = unwrap_tokenizer(backbone.tokenizer)
    if not hasattr(tokenizer, "max_length"):
        if window is None:
            return
        raise MedHashError("model config", f"the {backbone.spec} tokenizer has no adjustable length; "
                           "leave text_window unset")
    tokenizer.max_length = size
    backbone.max_text_length = size
