"""A library model as the archive knows it: config + weights fingerprint, registered once for everyone.

Two workstations that publish codes of the same checkpoint (same config.json and model.safetensors
bytes) land on one archive model; a retrained checkpoint is a new model with its own partition.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from medhash_app.core.archive.schema import add_model_partition, lock_models

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_identity(model: dict[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    """(fingerprint, config, weights SHA-256) of a library model row; the config comes from the
    checkpoint's config.json when it is there, else from the library's copy."""
    folder = Path(model["checkpoint_path"])
    config = model.get("config") or {}
    if (folder / CONFIG).is_file():
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    weights = _file_sha256(folder / WEIGHTS)
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    fingerprint = hashlib.sha256(f"{canonical}\0{weights or ''}".encode()).hexdigest()
    return fingerprint, config, weights


def register_model(conn: psycopg.Connection, model: dict[str, Any], *, with_weights: bool = False) -> int:
    """The archive id of this checkpoint, registering it (and its codes partition) when new."""
    fingerprint, config, weights_sha = checkpoint_identity(model)
    weights = None
    if with_weights and weights_sha is not None:
        weights = (Path(model["checkpoint_path"]) / WEIGHTS).read_bytes()
    with conn.transaction():
        lock_models(conn)
        conn.execute(
            "INSERT INTO medhash.models (fingerprint, name, method, bits, config, weights_sha256, weights, "
            "weights_uri) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (fingerprint) DO NOTHING",
            [fingerprint, model["name"], model["method"], [int(b) for b in model["bits"]], Jsonb(config),
             weights_sha, weights, None if weights_sha is None else f"sha256:{weights_sha}"])
        if weights is not None:  # a model first published without its weights gets them now
            conn.execute("UPDATE medhash.models SET weights = %s WHERE fingerprint = %s AND weights IS NULL",
                         [weights, fingerprint])
        model_id = int(conn.execute("SELECT id FROM medhash.models WHERE fingerprint = %s",
                                    [fingerprint]).fetchone()[0])
        add_model_partition(conn, model_id)
    return model_id


def find_model(conn: psycopg.Connection, model: dict[str, Any]) -> int | None:
    """The archive id of a library model's checkpoint, or None when it was never published."""
    fingerprint, _, _ = checkpoint_identity(model)
    row = conn.execute("SELECT id FROM medhash.models WHERE fingerprint = %s", [fingerprint]).fetchone()
    return None if row is None else int(row[0])
