"""Registered hashing models: which checkpoints made the stored codes, and which one is active."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medhash_app.core.errors import LibraryError
from medhash_app.core.library.base import LibraryBase
from medhash_app.core.library.cases import now_iso


def _decode_model(row: dict[str, Any], folder: Path) -> dict[str, Any]:
    for key in ("bits", "metrics", "config"):
        row[key] = json.loads(row[key])
    row["active"] = bool(row["active"])
    row["checkpoint_path"] = str(folder / row["checkpoint_path"])  # stored relative when inside
    return row


def _stored_path(checkpoint_path: str | Path, folder: Path) -> str:
    """Checkpoints inside the library are stored relative to it, so a moved or copied library
    keeps finding its models; checkpoints elsewhere keep their absolute path."""
    path = Path(checkpoint_path).resolve()
    try:
        return str(path.relative_to(folder.resolve()))
    except ValueError:
        return str(path)


class ModelStore(LibraryBase):
    """At most one model is active: the one search and encoding use by default."""

    def register_model(self, name: str, method: str, bits: Sequence[int], checkpoint_path: str | Path,
                       *, metrics: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                       activate: bool = False) -> int:
        """Record a checkpoint; returns its model id. `activate` makes it the active model."""
        values = [name, method, json.dumps([int(b) for b in bits]), _stored_path(checkpoint_path, self.folder), now_iso(),
                  json.dumps(metrics or {}, default=str), json.dumps(config or {}, default=str)]
        with self.transaction() as db:
            cursor = db.conn.execute(
                "INSERT INTO models (name, method, bits, checkpoint_path, created_at, metrics, config) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", values)
            model_id = int(cursor.lastrowid or 0)
            if activate:
                self.set_active_model(model_id)
        return model_id

    def set_active_model(self, model_id: int) -> None:
        with self.transaction() as db:
            if db.conn.execute("SELECT 1 FROM models WHERE id = ?", [model_id]).fetchone() is None:
                raise LibraryError(f"model {model_id}", "no such model in this library")
            db.conn.execute("UPDATE models SET active = (id = ?)", [model_id])

    def set_model_metrics(self, model_id: int, metrics: dict[str, Any]) -> None:
        """Replace a model's metrics (evaluation runs after registration)."""
        with self.transaction() as db:
            cursor = db.conn.execute("UPDATE models SET metrics = ? WHERE id = ?",
                                     [json.dumps(metrics, default=str), model_id])
            if cursor.rowcount == 0:
                raise LibraryError(f"model {model_id}", "no such model in this library")

    def active_model(self) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM models WHERE active = 1")
        return _decode_model(rows[0], self.folder) if rows else None

    def get_model(self, model_id: int) -> dict[str, Any] | None:
        rows = self._rows("SELECT * FROM models WHERE id = ?", [model_id])
        return _decode_model(rows[0], self.folder) if rows else None

    def list_models(self) -> list[dict[str, Any]]:
        """All registered models, oldest first."""
        return [_decode_model(row, self.folder) for row in self._rows("SELECT * FROM models ORDER BY id")]
