"""Registry of hashing methods: `@register_method("name")` on a HashingModel subclass.

Built-in methods live in the modules listed in `_BUILTIN_MODULES`; they are imported on first use
so that adding a method is one new module plus one line here.
"""

from __future__ import annotations

import importlib

from trainer.config import ModelConfig
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


def build_model(cfg: ModelConfig, *, backbone: Backbone | None = None, pretrained: bool = True) -> HashingModel:
    """Build the method named by `cfg.method` on `backbone` (built from cfg when not given).

    `pretrained=False` skips loading the backbone's pretrained weights (used when a checkpoint
    will overwrite them anyway).
    """
    cls = get_method(cfg.method)
    if backbone is None:
        backbone = build_backbone(cfg.backbone, pretrained=pretrained, weights_path=cfg.weights_path)
    backbone.freeze_except_top(cfg.trainable_top_blocks)
    return cls(cfg, backbone)
