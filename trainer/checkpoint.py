"""Checkpoint folders: `model.safetensors` + `config.json`, written atomically, never unpickled.

config.json holds everything needed to rebuild the model and to judge it: method, backbone, bits,
label names, preprocessing, training data hash, metrics, creation time and library versions.
The engine adds its resume state (`trainer_state.safetensors` + `trainer_state.json`) through
`extra_tensors` / `extra_json`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from trainer.config import ModelConfig
from trainer.config_schema import MAX_CONFIG_BYTES, check_depth, validate_model_config
from trainer.errors import CheckpointError, MedHashError
from trainer.models.hashing import HashingModel
from trainer.models.registry import build_model, get_method

FORMAT = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
_PACKAGES = ("medhash", "torch", "open_clip_torch", "timm", "transformers", "safetensors")


def _versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _config_json(model: HashingModel, meta: dict[str, Any]) -> dict[str, Any]:
    cfg = model.cfg
    return {
        "format": FORMAT,
        "method": cfg.method,
        "backbone": cfg.backbone,
        "bits": list(cfg.bits),
        "label_names": list(cfg.label_names),
        "preprocessing": model.backbone.preprocessing_info(),
        "training_data_hash": meta.get("training_data_hash"),
        "metrics": meta.get("metrics", {}),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "model_config": cfg.to_dict(),
        "training": {k: v for k, v in meta.items() if k not in ("training_data_hash", "metrics")},
    }


def save_checkpoint(
    folder: str | Path,
    model: HashingModel,
    *,
    meta: dict[str, Any] | None = None,
    extra_tensors: dict[str, Tensor] | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint into a temporary sibling folder, then swap it in place of `folder`.

    A crash leaves either the old complete checkpoint or the new one, never a half-written folder.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_model(model, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(_config_json(model, meta or {}), indent=2), encoding="utf-8")
        if extra_tensors is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra_tensors.items()}, str(tmp / STATE_TENSORS))
        if extra_json is not None:
            (tmp / STATE_JSON).write_text(json.dumps(extra_json), encoding="utf-8")
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace `folder` by `tmp` with renames only (a directory cannot be replaced in one call)."""
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a checkpoint, checked (config_schema) before anything is built from it:
    the format version, the nesting depth, and every model_config field's type and bounds."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "checkpoint folder not found")
    try:
        config = json.loads(_read_config_text(folder / CONFIG))
    except FileNotFoundError as exc:
        raise CheckpointError(folder, f"{CONFIG} is missing") from exc
    except RecursionError:
        raise CheckpointError(folder, f"{CONFIG} is nested too deeply to be a checkpoint configuration") from None
    except OSError as exc:
        raise CheckpointError(folder, f"{CONFIG} is unreadable ({exc.strerror or exc})") from exc
    except ValueError as exc:  # not JSON, not UTF-8
        raise CheckpointError(folder, f"{CONFIG} is unreadable ({exc.__class__.__name__})") from exc
    if not isinstance(config, dict) or "model_config" not in config:
        raise CheckpointError(folder, f"{CONFIG} is not a MedHash checkpoint configuration")
    version = config.get("format")
    if isinstance(version, bool) or version != FORMAT:
        raise CheckpointError(folder, f"{CONFIG} has format {version!r:.20}; this MedHash reads checkpoint "
                                      f"format {FORMAT} (a newer MedHash wrote it, or it is not a checkpoint)")
    if not isinstance(config.get("metrics", {}), dict):
        raise CheckpointError(folder, f"{CONFIG}: metrics must be a JSON object")
    try:
        check_depth(config, CONFIG)
        validate_model_config(config["model_config"], prefix="model_config.")
    except MedHashError as exc:
        raise CheckpointError(folder, f"{CONFIG}: {exc.reason}") from exc
    return config


def _assigned(cfg: ModelConfig, weights: Path) -> HashingModel | None:
    """The lite model built without initialising its weights (skip_init below) and the file's tensors
    assigned in; None when the file's names are not exactly the model's tensors (names saved once for
    shared tensors, or a buffer the file does not hold), so the caller builds it the usual way."""
    with skip_init():
        model = build_model(cfg, pretrained=False, lite=True)
    state = load_file(str(weights))
    names = set(model.state_dict())
    if set(state) != names or any(name not in names for name, _ in _all_tensors(model)):
        return None
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _all_tensors(model: HashingModel) -> Iterable[tuple[str, Tensor]]:
    yield from model.named_parameters(remove_duplicate=False)
    yield from model.named_buffers(remove_duplicate=False)


_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                   "sparse_")
_skipping = threading.local()
_patch_lock = threading.Lock()
_patch_users = 0


@contextmanager
def skip_init() -> Iterator[None]:
    """Modules built in this thread inside the block skip torch.nn.init (their tensors are left as
    allocated), for weights that a checkpoint overwrites at once: 0.4 s of random init of the embedded
    towers on 2 cores. Building on the meta device would do it too, but imports torch._dynamo and sympy
    (2-3 s) on first use. Other threads see the real functions; the originals are back afterwards."""
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            for name in _INIT_FUNCTIONS:
                setattr(nn.init, name, _skipper(getattr(nn.init, name)))
        _patch_users += 1
    _skipping.on = True
    try:
        yield
    finally:
        _skipping.on = False
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                for name in _INIT_FUNCTIONS:
                    setattr(nn.init, name, getattr(nn.init, name).__wrapped__)


def _skipper(original: Callable[..., Tensor]) -> Callable[..., Tensor]:
    @functools.wraps(original)
    def init(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return tensor if getattr(_skipping, "on", False) else original(tensor, *args, **kwargs)
    return init


def _read_config_text(path: Path) -> str:
    """The text of a regular file of at most MAX_CONFIG_BYTES (a FIFO or a huge file is refused)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{path.name} is not a regular file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise OSError(f"{path.name} is larger than {MAX_CONFIG_BYTES:,} bytes")
    with open(path, "rb") as handle:
        return handle.read(MAX_CONFIG_BYTES + 1)[:MAX_CONFIG_BYTES].decode("utf-8")


def load_checkpoint(
    folder: str | Path,
    device: str = "cpu",
    *,
    require_bits: int | Iterable[int] | None = None,
    lite: bool = False,
) -> tuple[HashingModel, ModelConfig, dict[str, Any]]:
    """Rebuild the model from config.json and load model.safetensors (no unpickling), in eval mode.

    `lite`: for encoding only: the backbone's plain-PyTorch form where it has one (embedded_lite.py),
    built without initialising weights the file then replaces (meta device, then the file's tensors
    are assigned); a model that cannot be built that way is built and loaded as usual.
    Raises CheckpointError for a missing folder/file, a damaged or truncated weights file, an
    unknown method, or a checkpoint lacking one of `require_bits`.
    """
    folder = Path(folder)
    config = read_checkpoint_config(folder)
    try:
        cfg = ModelConfig.from_dict(config["model_config"])
        get_method(cfg.method)
    except MedHashError as exc:
        raise CheckpointError(folder, exc.reason) from exc
    if require_bits is not None:
        wanted = {require_bits} if isinstance(require_bits, int) else set(require_bits)
        if not wanted <= set(cfg.bits):
            raise CheckpointError(folder, f"this model has {cfg.bits}-bit codes, not {sorted(wanted - set(cfg.bits))}")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(folder, f"{WEIGHTS} is missing")
    try:
        model = _assigned(cfg, weights) if lite else None
        if model is None:  # (not lite, or the lite build could not take the file as it is)
            model = build_model(cfg, pretrained=False)
            load_model(model, str(weights), strict=True)
    except SafetensorError as exc:
        raise CheckpointError(folder, f"{WEIGHTS} is damaged or truncated") from exc
    except RuntimeError as exc:  # strict load: keys/shapes do not match the configuration
        raise CheckpointError(folder, f"{WEIGHTS} does not match its configuration ({str(exc)[:200]})") from exc
    model.to(device).eval()
    return model, cfg, config
