"""Backbones, prompt-ready towers, hash heads and the hashing methods behind one registry."""

from trainer.models.backbones import Backbone, build_backbone
from trainer.models.hashing import HashingModel
from trainer.models.registry import available_methods, build_model, get_method, register_method

__all__ = [
    "Backbone",
    "HashingModel",
    "available_methods",
    "build_backbone",
    "build_model",
    "get_method",
    "register_method",
]
