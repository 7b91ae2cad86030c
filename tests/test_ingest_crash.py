"""Crash safety: an ingest killed with SIGKILL mid-run leaves a consistent library, and a re-run
completes it to exactly what an uninterrupted run produces."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library

N_ITEMS = 200
CHILD = """
import sys
from pathlib import Path
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
with Library.open(Path(sys.argv[1]), create=True) as library:
    ingest([Path(sys.argv[2])], library, batch_size=3, workers=1)
"""


def make_items(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(N_ITEMS):
        coarse = Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8))  # distinct, compressible
        coarse.resize((200, 200), Image.Resampling.BILINEAR).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"Case {i}. {'Small left pleural effusion.' if i % 3 else 'Clear lungs.'}")


def count_cases(db_path: Path) -> int:
    try:
        with sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM cases").fetchone()[0]
    except sqlite3.Error:
        return 0  # not created yet


def kill_midway(library: Path, items: Path) -> int:
    """Start an ingest in a child process and SIGKILL it once some but not all cases are in."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(library), str(items)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if 0 < count_cases(library / "library.sqlite") < N_ITEMS:
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the ingest finished before it could be interrupted"
    return count_cases(library / "library.sqlite")


def snapshot(library: Library) -> dict[str, tuple]:
    """Every case with what it says and the bytes of its stored files."""
    def digest(rel: str) -> str:
        return hashlib.sha256((library.folder / rel).read_bytes()).hexdigest()

    return {c["id"]: (c["source_path"], c["report"], tuple(c["labels"]), c["label_source"], c["domain"],
                      digest(c["input_path"]), digest(c["thumb_path"])) for c in library.iter_cases()}


def test_sigkill_mid_ingest_then_rerun_matches_clean_run(tmp_path: Path) -> None:
    items = tmp_path / "items"
    make_items(items)
    killed_lib = tmp_path / "killed"
    partial = kill_midway(killed_lib, items)
    assert 0 < partial < N_ITEMS

    with Library.open(killed_lib) as library:
        assert library.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert library.count_cases() == partial
        assert library.cases_missing_files() == set()  # every committed row has its files
        resumed = ingest([items], library, batch_size=16, workers=1)
        assert (resumed.added, resumed.skipped, resumed.failed) == (N_ITEMS - partial, partial, [])
        after = snapshot(library)
        stored = {p.relative_to(library.folder).as_posix() for p in library.inputs_dir.rglob("*.png")
                  if not p.name.startswith(".")}
        assert stored == {c["input_path"] for c in library.iter_cases()}  # no orphans once complete

    with Library.open(tmp_path / "clean", create=True) as clean:
        ingest([items], clean, batch_size=16, workers=1)
        assert snapshot(clean) == after
        assert len(after) == N_ITEMS


if sys.platform == "win32":  # SIGKILL does not exist there
    pytestmark = pytest.mark.skip("POSIX only")
