"""A published model fetched to a workstation that has no library of its own.

A reading room that only searches the department's archive needs the checkpoint that made the
archive's codes, to encode its queries the same way. `medhash archive publish --with-weights` stores
the checkpoint's config.json and model.safetensors in `medhash.models`; here a workstation lists the
models it could search with, picks one (the newest with weights and codes, unless told), and copies it
into its cache folder once, keyed by the model's fingerprint (config + weights SHA-256) and checked
against it before use, so a damaged or altered download is refused and fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from medhash_app.core.archive.connection import ArchiveError
from medhash_app.core.archive.models import CONFIG, WEIGHTS, checkpoint_identity


@dataclass(frozen=True)
class ArchiveModel:
    """One model row of the archive, as a searching workstation sees it."""

    id: int
    name: str
    method: str
    bits: list[int]
    fingerprint: str
    weights_sha256: str | None
    has_weights: bool  # the checkpoint's weights are stored in the archive (publish --with-weights)
    has_codes: bool  # some codes of it were published


def default_cache_folder() -> Path:
    """Where fetched checkpoints live: the user's cache folder (platformdirs), `archive-models/`."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("medhash")) / "archive-models"


def list_models(conn: psycopg.Connection) -> list[ArchiveModel]:
    """Every model of the archive, newest first."""
    rows = conn.execute(
        "SELECT m.id, m.name, m.method, m.bits, m.fingerprint, m.weights_sha256, m.weights IS NOT NULL, "
        "EXISTS (SELECT 1 FROM medhash.code_versions v WHERE v.model_id = m.id AND v.version > 0) "
        "FROM medhash.models m ORDER BY m.id DESC").fetchall()
    return [ArchiveModel(int(r[0]), r[1], r[2], [int(b) for b in r[3]], r[4], r[5], bool(r[6]), bool(r[7]))
            for r in rows]


def choose_model(conn: psycopg.Connection, model_id: int | None = None, label: str = "this archive", *,
                 need_weights: bool = True) -> ArchiveModel:
    """The archive model that encodes queries: `model_id`, or the newest one with weights and codes
    (`need_weights=False`: a query that is already a code needs only the model's codes)."""
    models = list_models(conn)
    if model_id is not None:
        chosen = next((m for m in models if m.id == model_id), None)
        if chosen is None:
            raise ArchiveError(label, f"has no model {model_id} (`medhash archive status` lists them)")
        if need_weights and not chosen.has_weights:
            raise ArchiveError(f"archive model {model_id}", "its weights were not published, so a workstation "
                               "without its library cannot encode queries with it; publish again with "
                               "`medhash archive publish --with-weights`")
        return chosen
    usable = [m for m in models if m.has_codes and (m.has_weights or not need_weights)]
    if not usable:
        raise ArchiveError(label, "no model with published weights and codes; a workstation without a library "
                           "needs one (`medhash archive publish --with-weights` from a library)")
    return usable[0]


def fetch_checkpoint(conn: psycopg.Connection, model: ArchiveModel, cache: Path | None = None) -> Path:
    """The model's checkpoint folder in the cache, downloaded when absent or not matching its fingerprint."""
    folder = (cache or default_cache_folder()) / model.fingerprint
    if _matches(folder, model):
        return folder
    row = conn.execute("SELECT config, weights FROM medhash.models WHERE id = %s", [model.id]).fetchone()
    if row is None or row[1] is None:
        raise ArchiveError(f"archive model {model.id}", "its weights are no longer in the archive")
    config, weights = row[0], bytes(row[1])
    if hashlib.sha256(weights).hexdigest() != model.weights_sha256:
        raise ArchiveError(f"archive model {model.id}", "the stored weights do not match their SHA-256; "
                           "ask the archive's administrator to publish the model again")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        (tmp / WEIGHTS).write_bytes(weights)
        shutil.rmtree(folder, ignore_errors=True)  # a damaged earlier copy
        os.replace(tmp, folder)  # whole or not at all: a reader never sees half a checkpoint
    except OSError as exc:
        raise ArchiveError(str(folder.parent), f"cannot write the model cache ({exc.strerror or exc})") from None
    if not _matches(folder, model):
        raise ArchiveError(f"archive model {model.id}", "its config does not match its fingerprint")
    return folder


def _matches(folder: Path, model: ArchiveModel) -> bool:
    """The folder holds exactly the published checkpoint (the fingerprint rule of models.checkpoint_identity)."""
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        return False
    try:
        fingerprint, _, weights_sha = checkpoint_identity({"checkpoint_path": str(folder)})
    except (OSError, ValueError):
        return False
    return fingerprint == model.fingerprint and weights_sha == model.weights_sha256
