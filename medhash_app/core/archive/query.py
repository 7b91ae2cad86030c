"""A query (image file, report text or a raw code) turned into the packed code an archive search needs,
with the local model whose checkpoint the archive knows (same config and weights fingerprint), or,
on a workstation without a library, with the checkpoint the archive holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psycopg

from medhash_app.core.archive.connection import ArchiveError
from medhash_app.core.archive.model_cache import ArchiveModel, choose_model, fetch_checkpoint
from medhash_app.core.archive.models import find_model
from medhash_app.core.library import Library

if TYPE_CHECKING:
    from medhash_app.core.encoder.service import EncoderService


@dataclass(frozen=True)
class ArchiveQuery:
    archive_model_id: int
    kind: str  # image or text: what the query is
    bits: int
    code: np.ndarray  # packed uint8 (bits/8,)


def targets_for(kind: str, target: str | None) -> list[str]:
    """Which archive codes to search (the local search's rule: the other modality by default)."""
    if target is None:
        return ["text" if kind == "image" else "image"]
    if target not in ("reports", "images", "both"):
        raise ArchiveError("--target", "must be reports, images or both")
    return {"reports": ["text"], "images": ["image"], "both": ["text", "image"]}[target]


def parse_code(text: str, bits: int) -> np.ndarray:
    """A hex code (as `medhash export` writes them) of `bits` bits."""
    try:
        packed = np.frombuffer(bytes.fromhex(text.strip()), dtype=np.uint8)
    except ValueError:
        raise ArchiveError("--code", "expected hexadecimal digits") from None
    if packed.size * 8 != bits:
        raise ArchiveError("--code", f"has {packed.size * 8} bits, the search uses {bits}")
    return packed


def encode_query(conn: psycopg.Connection, library: Library | None, *, model_id: int | None, image: Path | None,
                 text: str | None, code: str | None, code_kind: str, bits: int | None,
                 device: str = "auto", encoder: EncoderService | None = None,
                 archive_model_id: int | None = None, cache: Path | None = None) -> ArchiveQuery:
    """Encode with the library's active (or chosen) model, which must be published to the archive, or,
    with no library, with the archive's own published checkpoint (core/archive/model_cache.py: the
    newest with weights and codes, or `archive_model_id`), fetched to this workstation's cache once.
    `encoder`: that model's already loaded encoder, as the desktop keeps one; else one is loaded."""
    published: ArchiveModel | None = None
    if library is not None:
        archive_id, have, checkpoint = _library_model(conn, library, model_id)
    else:  # a code query needs no weights, only the model whose codes it is compared with
        published = choose_model(conn, archive_model_id, need_weights=code is None)
        archive_id, have, checkpoint = published.id, sorted(published.bits), None
    use = have[-1] if bits is None else bits
    if use not in have:
        raise ArchiveError("--bits", f"the query's model has {have} bits")
    if sum(x is not None for x in (image, text, code)) != 1:
        raise ArchiveError("query", "give exactly one of --image FILE, --text TEXT or --code HEX")
    if code is not None:
        return ArchiveQuery(archive_id, code_kind, use, parse_code(code, use))
    if encoder is None:
        from medhash_app.core.encoder.service import EncoderService  # torch: only when a query needs encoding

        if checkpoint is None and published is not None:
            checkpoint = str(fetch_checkpoint(conn, published, cache))
        encoder = EncoderService(checkpoint, device=device)
    if image is not None:
        batch, kind = encoder.encode_files([image], embeddings=False), "image"
    else:
        batch, kind = encoder.encode_texts([text or ""], embeddings=False), "text"
    return ArchiveQuery(archive_id, kind, use, batch.codes[use][0])


def _library_model(conn: psycopg.Connection, library: Library, model_id: int | None) -> tuple[int, list[int], str]:
    """(archive model id, bits, checkpoint folder) of the library's active or chosen model."""
    model = library.get_model(model_id) if model_id is not None else library.active_model()
    if model is None:
        raise ArchiveError(str(library.folder), "no such model" if model_id is not None else "no active model")
    archive_id = find_model(conn, model)
    if archive_id is None:
        raise ArchiveError(f"model {model['id']}", "its checkpoint was never published to this archive; run "
                           "`medhash archive publish` first")
    return archive_id, sorted(int(b) for b in model["bits"]), str(model["checkpoint_path"])
