"""Model and training configuration as plain dataclasses that round-trip through JSON.

Checkpoints store `ModelConfig.to_dict()` so a model can be rebuilt without the code that trained
it; the CLI and the trainer tab build `TrainConfig` from user input, so `from_dict` rejects unknown
or badly typed fields with a message naming them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config_schema import BITS, MIN_TEXT_WINDOW, validate_model_config
from trainer.errors import MedHashError

DEFAULT_BITS = (16, 32, 64, 128)

# Per-component switches: every term/module a method has can be turned off for ablations.
# Methods read the keys they know; unknown keys are kept so newer methods can add their own.
DEFAULT_COMPONENTS: dict[str, bool] = {
    "contrastive": True,  # symmetric InfoNCE between image and text codes
    "similarity": True,  # label-similarity preservation (DCMH-style likelihood)
    "quantization": True,  # ||h - sign(h)||^2
    "bit_balance": False,  # each bit half +1 / half -1 over a batch
    "classifier": False,  # multi-label classifier head on the embeddings
}

# BASE's loss weights. Each method owns its own table (MCPH_LOSS_WEIGHTS, tripah.LOSS_WEIGHTS, ...);
# ModelConfig.loss_weights holds only what the user overrides, resolved by `method_loss_weights`, so
# a shared default can never silently replace a method's own weight of the same name.
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {
    "contrastive": 1.0,
    "similarity": 1.0,  # beta
    "quantization": 0.1,  # alpha
    "bit_balance": 0.01,
    "classifier": 1.0,
}

NOISE_HANDLINGS = ("none", "adaptive_temperature")
DEVICES = ("auto", "cpu", "cuda")
VAL_DATABASES = ("val", "train+val")


def _from_dict(cls: type, data: dict[str, Any], what: str) -> Any:
    """Build dataclass `cls` from `data`, naming unknown fields instead of a TypeError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MedHashError(what, f"unknown setting(s): {', '.join(unknown)}")
    return cls(**data)


# The method the trainer uses unless told otherwise: the fair protocol's measured winner
# (docs/results/README.md, "The default"). A paper method replaces BASE only when, with 3 seeds at the
# protocol's budget, it beats BASE in at least one direction on each dataset and loses in none.
DEFAULT_METHOD = "base"


@dataclass
class ModelConfig:
    """What to build: method, backbone, code lengths, and which components are on."""

    method: str = DEFAULT_METHOD
    backbone: str = "embedded"  # "embedded" | "tiny" | "open_clip:<arch>"
    weights_path: str | None = None  # local weights for open_clip:<arch>
    bits: list[int] = field(default_factory=lambda: list(DEFAULT_BITS))
    embed_dim: int = 256
    trainable_top_blocks: int = 2  # the papers fine-tune the last two layers of each tower
    components: dict[str, bool] = field(default_factory=lambda: dict(DEFAULT_COMPONENTS))
    loss_weights: dict[str, float] = field(default_factory=dict)  # overrides only: see method_loss_weights
    temperature: float = 0.3  # InfoNCE on tanh codes; 0.07 (CLIP) learned far slower in our runs
    label_names: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # method-specific extras (MCPH, TriPAH, ...)
    # Text window in tokens (None = the tower's own limit): e.g. 77 emulates CLIP's window on the
    # 256-token MiniLM tower. Applied by build_model to the tokenizer and to `max_text_length`.
    text_window: int | None = None

    def __post_init__(self) -> None:
        try:
            self.bits = sorted({int(b) for b in self.bits})
        except (TypeError, ValueError):
            raise MedHashError("model config", f"bits must be whole numbers, got {self.bits!r}") from None
        if not self.bits or any(not BITS[0] <= b <= BITS[1] or b % 8 for b in self.bits):
            raise MedHashError("model config", f"bits must be multiples of 8 from {BITS[0]} to {BITS[1]}, "
                                               f"got {self.bits}")
        self.components = {**DEFAULT_COMPONENTS, **self.components}
        self.loss_weights = {k: float(v) for k, v in self.loss_weights.items()}
        self.label_names = [str(n) for n in self.label_names]
        window = self.text_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < MIN_TEXT_WINDOW):
            raise MedHashError("model config", f"text_window must be a whole number of tokens >= {MIN_TEXT_WINDOW} "
                               f"or None (the tower's own limit), not {window!r}")

    def on(self, component: str) -> bool:
        """True when `component` is switched on (unknown components count as off)."""
        return bool(self.components.get(component, False))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["text_window"] is None:  # written as before the field existed: old resume states and
            del data["text_window"]  # experiment fingerprints still compare equal
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Checked against config_schema (types and bounds, naming the field) before anything is built."""
        return _from_dict(cls, dict(validate_model_config(data)), "model config")


def method_loss_weights(cfg: ModelConfig, defaults: dict[str, float], method: str | None = None) -> dict[str, float]:
    """The weights a method's loss uses: its own `defaults`, overridden by `cfg.loss_weights`.

    A name the method does not have is an error naming it (a typo, or another method's weight),
    except in a checkpoint written before methods owned their weights: those stored BASE's whole
    table, and a name of that table the method lacks is ignored (it was never read).
    """
    given = dict(cfg.loss_weights)
    legacy = {k for k, v in given.items() if k in DEFAULT_LOSS_WEIGHTS and k not in defaults
              and v == DEFAULT_LOSS_WEIGHTS[k]}
    unknown = sorted(set(given) - set(defaults) - legacy)
    if unknown:
        raise MedHashError("model config", f"{method or cfg.method} has no loss weight(s) {', '.join(unknown)} "
                           f"(it has {', '.join(sorted(defaults))})")
    return {**defaults, **{k: v for k, v in given.items() if k in defaults}}


@dataclass
class TrainConfig:
    """How to train: optimisation, device, noise injection and validation cadence."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "auto"  # "auto" uses CUDA when available
    amp: bool = True  # mixed precision on CUDA only
    grad_clip: float | None = 1.0
    noise_rate: float = 0.0  # fraction of training pairs whose reports get shuffled
    noise_handling: str = "none"  # "none" | "adaptive_temperature" (MCPH)
    num_workers: int = 2
    val_every: int = 1  # validate every n epochs (and always after the last)
    # What validation ranks against. "val": val queries against the val items only (the app's
    # default, cheap). "train+val": val queries against train + val items (each query's own item
    # left out), which mirrors the test, whose database holds the training set: a model chosen on
    # "val" alone can be the worse one on the test (trainer/fair_protocol.py uses "train+val").
    val_database: str = "val"
    # The backbone's learning rate relative to `lr`; None = the method's own choice (its
    # param_groups). Set by a tuning protocol that searches it, and recorded with the run.
    backbone_lr_scale: float | None = None
    warmup_steps: int = 50
    # Frozen-stem cache (trainer/feature_cache.py): much faster epochs, but training images use the
    # deterministic eval transform (no augmentation). False = the augmented, uncached path.
    feature_cache: bool = True
    cache_dir: str | None = None  # None = <out_dir>/../.feature-cache (shared by sibling runs)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (contrastive losses need pairs)"),
            (self.lr > 0, "lr must be > 0"),
            (0.0 <= self.noise_rate < 1.0, "noise_rate must be in [0, 1)"),
            (self.noise_handling in NOISE_HANDLINGS, f"noise_handling must be one of {NOISE_HANDLINGS}"),
            (self.device in DEVICES or self.device.startswith("cuda:"), f"device must be one of {DEVICES}"),
            (self.val_every >= 1, "val_every must be >= 1"),
            (self.val_database in VAL_DATABASES, f"val_database must be one of {VAL_DATABASES}"),
            (self.backbone_lr_scale is None or self.backbone_lr_scale > 0, "backbone_lr_scale must be > 0"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
        ]
        for ok, reason in checks:
            if not ok:
                raise MedHashError("training config", reason)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name, default in (("val_database", "val"), ("backbone_lr_scale", None)):
            if data[name] == default:  # written as before the field existed: old resume states and
                del data[name]  # experiment fingerprints still compare equal
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, dict(data), "training config")


def save_json(obj: ModelConfig | TrainConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(obj.to_dict(), indent=2), encoding="utf-8")


def load_json(cls: type[ModelConfig | TrainConfig], path: str | Path) -> ModelConfig | TrainConfig:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON, not UTF-8
        raise MedHashError(path, f"cannot read configuration: {exc}") from exc
    except RecursionError:
        raise MedHashError(path, "cannot read configuration: it is nested too deeply") from None
    return cls.from_dict(data)
