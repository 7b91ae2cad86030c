"""The one facade over a library that the CLI and the UI both call.

It owns the open Library, the loaded encoders and the search service, so a long-lived process
(the desktop app) loads weights and indexes once, and a short CLI call does the same work the
same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

from medhash_app.core.captions import CaptionImport, import_captions
from medhash_app.core.encoder import encode_library, resolve_device
from medhash_app.core.errors import ModelError
from medhash_app.core.ingest import IngestReport, ingest
from medhash_app.core.library import Library
from medhash_app.core.search import EncoderPool, SearchQuery, SearchResult, SearchService
from medhash_app.core.search.service import resolve_model
from trainer.checkpoint import read_checkpoint_config
from trainer.config import ModelConfig
from trainer.errors import CheckpointError
from trainer.models.views import refuse_leak

ProgressFn = Callable[..., None]


class MedHashSession:
    """A library opened for work: ingest, encode, index, search."""

    def __init__(self, library_dir: str | Path, *, create: bool = False, device: str = "auto",
                 index_kind: str = "flat") -> None:
        self.library = Library.open(Path(library_dir), create=create)
        self.device = resolve_device(device)
        self.encoders = EncoderPool(self.device)
        self.searcher = SearchService(self.library, self.encoders, index_kind=index_kind)
        self._search_lock = threading.Lock()  # warm_up and search share the encoder and code caches

    def close(self) -> None:
        self.library.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- search ---------------------------------------------------------------------------------
    def search(self, query: SearchQuery, model_id: int | None = None) -> SearchResult:
        with self._search_lock:  # a search during warm_up waits for it instead of loading it all twice
            return self.searcher.search(query, model_id)

    def warm_up(self) -> int:
        """Load the active model's encoder, the codes + index of each modality (longest code) and the
        out-of-domain references (from their files under indexes/, built once), so the first search does
        not wait for them; the app runs it in the background when a library opens.
        Returns the number of codes loaded (0 without an active model)."""
        model = self.library.active_model()
        if model is None:
            return 0
        with self._search_lock:
            self.encoders.get(model)
            bits = max(int(b) for b in model["bits"])
            count = sum(len(self.searcher.warm(int(model["id"]), modality, bits).ids) for modality in ("image", "text"))
            self.searcher.warm_checks(int(model["id"]))
            return count

    # -- ingest / encode ------------------------------------------------------------------------
    def ingest(self, paths: Sequence[str | Path], *, progress: ProgressFn | None = None,
               cancel: threading.Event | None = None, domain: str | None = None,
               allowed_roots: Sequence[str | Path] = ()) -> IngestReport:
        return ingest([Path(p) for p in paths], self.library, domain=domain, progress=progress, cancel=cancel,
                      allowed_roots=allowed_roots)

    def encode_library(self, model_id: int | None = None, *, progress: ProgressFn | None = None,
                       cancel: threading.Event | None = None, prepare_checks: bool = True) -> int:
        """Store the model's codes of every case not yet encoded. Then (unless cancelled, or
        `prepare_checks` is False) build and save the out-of-domain checks' references for the active
        model, so the first search after the library next opens does not build them (at 100k cases
        that took ~30 s on the busy 2-core VM, most of it the image-statistics sample)."""
        model = self.resolve_model(model_id)
        encoder = self.encoders.get(model)
        count = encode_library(self.library, int(model["id"]), encoder, progress=progress, cancel=cancel)
        self.searcher.invalidate()
        active = self.library.active_model()
        if prepare_checks and not (cancel is not None and cancel.is_set()) and not self.library.read_only \
                and active is not None and int(active["id"]) == int(model["id"]):
            with self._search_lock:
                self.searcher.warm_checks(int(model["id"]))
        return count

    def import_captions(self, path: str | Path) -> CaptionImport:
        """Store a captions file's captions in the cases (core/captions.py); the caption-reading models'
        image codes of the changed cases are deleted, so `encode_library` re-encodes exactly them."""
        outcome = import_captions(self.library, path)
        self.searcher.invalidate()
        return outcome

    # -- models ---------------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        return self.library.list_models()

    def active_model(self) -> dict[str, Any] | None:
        return self.library.active_model()

    def set_active_model(self, model_id: int) -> None:
        self.library.set_active_model(int(model_id))
        self.searcher.invalidate()

    def register_checkpoint(self, folder: str | Path, *, activate: bool = True, name: str | None = None,
                            metrics: dict[str, Any] | None = None) -> int:
        """Record a trained checkpoint in the library (after checking it loads as a config).

        A model built with the leak study's diagnostic option is refused (ModelError naming it): its
        image codes need the paired report, which no query or stored image has."""
        folder = Path(folder).resolve()
        try:
            meta = read_checkpoint_config(folder)
            cfg = ModelConfig.from_dict(meta["model_config"])
        except CheckpointError as exc:
            raise ModelError(exc.item, exc.reason) from exc
        refuse_leak(cfg.options, folder, ModelError)
        return self.library.register_model(
            name or folder.name, cfg.method, cfg.bits, folder, metrics=metrics or meta.get("metrics"),
            config=cfg.to_dict(), activate=activate)

    def resolve_model(self, model_id: int | None = None) -> dict[str, Any]:
        """The chosen model's row, or the active one (ModelError when there is none)."""
        return resolve_model(self.library, model_id)

    # -- indexes --------------------------------------------------------------------------------
    def index_status(self) -> list[dict[str, Any]]:
        """One row per (model, modality, bits) with the code count and the cache state."""
        rows = []
        for model in self.models():
            for modality in ("image", "text"):
                for bits in model["bits"]:
                    key = f"m{model['id']}-{modality}-{bits}"
                    rows.append({"key": key, "model_id": model["id"], "modality": modality, "bits": bits,
                                 "count": self.library.count_codes(model["id"], modality, bits),
                                 "state": self.searcher.indexes.last_status.get(key, "not loaded")})
        return rows

    def rebuild_indexes(self) -> None:
        """Drop every cached index and build each again from the codes in SQLite."""
        self.searcher.invalidate()
        for row in self.index_status():
            self.searcher.indexes.remove(row["key"])
            self.library.forget_code_file(row["model_id"], row["modality"], row["bits"])
            if row["count"]:
                self.searcher.warm(row["model_id"], row["modality"], row["bits"])
