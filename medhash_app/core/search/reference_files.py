"""Calibration references (out-of-domain, match, image statistics) kept on disk between sessions.

Building them reads the whole library (the image-statistics reference decodes up to 3,000 stored
images: ~40 s of a cold `medhash search` at 100k cases on 2 busy cores; the code references run a
k-NN over every code: ~2.5 s). Each is a dataclass of arrays and numbers, saved as one .npz under
`indexes/` with the key it was built for: the library state it depends on (code tokens, a fingerprint
of the cases) and the source of the module that builds it, so a changed algorithm or a changed
library builds it again. The file carries a SHA-256 of its arrays; anything unreadable, damaged or
stale is rebuilt, never trusted. Written to a temporary name and moved into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np

from medhash_app.core.library.files import atomic_savez

log = logging.getLogger(__name__)

FORMAT = 1
T = TypeVar("T")


@cache
def source_digest(module: ModuleType) -> str:
    """SHA-256 of a module's source: a reference built by other code is not reused."""
    return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:16]


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def load_or_build(folder: Path, name: str, key: str, cls: type[T], build: Callable[[], T | None],
                  *, save: bool = True) -> T | None:
    """The reference `name` saved for `key`, else `build()` (saved for next time when not None)."""
    path = folder / f"{name}.ref.npz"
    found = _read(path, key, cls)
    if found is not None:
        return found
    built = build()
    if built is not None and save:
        _write(path, key, built)
    return built


def _read(path: Path, key: str, cls: type[T]) -> T | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            arrays = {n: data[n] for n in data.files if n != "__meta__"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key
            or meta.get("class") != cls.__qualname__ or meta.get("sha256") != _digest(arrays)):
        return None
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if set(arrays) != fields:
        return None
    scalars = set(meta.get("scalars", []))
    return cls(**{n: (v.item() if n in scalars else v) for n, v in arrays.items()})


def _write(path: Path, key: str, ref: object) -> None:
    values = {f.name: getattr(ref, f.name) for f in dataclasses.fields(ref)}  # type: ignore[arg-type]
    arrays = {n: np.asarray(v) for n, v in values.items()}
    meta = {"format": FORMAT, "key": key, "class": type(ref).__qualname__, "sha256": _digest(arrays),
            "scalars": [n for n, v in values.items() if not isinstance(v, np.ndarray)]}
    try:
        atomic_savez(path, __meta__=np.array(json.dumps(meta)), **arrays)
    except OSError as exc:
        log.warning("reference %s not saved: %s", path.name, exc)
