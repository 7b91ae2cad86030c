"""Hostile inputs: files that never end (FIFO, /dev/zero), oversize files, unreadable sidecars,
files and folders. Each becomes that item's error with a reason; the rest of the import goes on."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
from tests.hostile_files import make_unreadable, run_python

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, /dev/zero and file modes are POSIX")

CHILD = """
import json, sys
from pathlib import Path
from medhash_app.core.errors import MedHashError
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
with Library.open(Path(sys.argv[1]), create=True) as library:
    try:
        report = ingest([Path(p) for p in sys.argv[2:]], library, workers=1).to_dict()
    except MedHashError as exc:
        report = {"error": type(exc).__name__, "item": exc.item, "reason": exc.reason}
print(json.dumps(report))
"""


def make_png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
    return path


def ingest_in_child(library: Path, *paths: Path, obey_file_modes: bool = False) -> dict:
    """An ingest in a fresh process, so a hang fails the test on a timeout instead of stalling it."""
    out = run_python(CHILD, str(library), *map(str, paths), obey_file_modes=obey_file_modes)
    return json.loads(out.strip().splitlines()[-1])


def failures(report: dict) -> dict[str, str]:
    return {Path(f["path"]).name: f["reason"] for f in report["failed"]}


@pytest.fixture()
def lib(tmp_path: Path) -> Iterator[Library]:
    with Library.open(tmp_path / "lib", create=True) as library:
        yield library


@pytest.fixture()
def restore_modes(tmp_path: Path) -> Iterator[list[Path]]:
    """Paths made unreadable by a test get their mode back, so the temporary folder can be removed."""
    locked: list[Path] = []
    yield locked
    for path in locked:
        path.chmod(0o755)


# --- 2. files that never end ---------------------------------------------------------------------

def test_fifos_and_devices_are_skipped_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    make_png(folder / "good.png", 1)
    os.mkfifo(folder / "pipe.dcm")
    os.mkfifo(folder / "IM0001")  # no suffix: would be sniffed for DICOM content
    (folder / "zero.dcm").symlink_to("/dev/zero")  # outside the folder: refused unopened
    make_png(folder / "linked_target.png", 2)
    (folder / "linked.png").symlink_to(folder / "linked_target.png")  # a link to a regular file is fine
    report = ingest_in_child(tmp_path / "lib", folder)
    assert report["added"] == 2  # good.png and linked_target.png (linked.png is the same content)
    reasons = failures(report)
    assert set(reasons) == {"pipe.dcm", "zero.dcm"}
    assert "not a regular file" in reasons["pipe.dcm"] and "pipe" in reasons["pipe.dcm"]
    assert "outside the folder being imported" in reasons["zero.dcm"]


def test_a_manifest_row_pointing_at_dev_zero_is_skipped(tmp_path: Path) -> None:
    make_png(tmp_path / "good.png", 1)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,report\ngood.png,Clear lungs.\n/dev/zero,Effusion.\n", encoding="utf-8")
    report = ingest_in_child(tmp_path / "lib", manifest)
    assert report["added"] == 1
    reasons = failures(report)
    assert set(reasons) == {"zero"} and "outside the folder being imported" in reasons["zero"]  # never opened


def test_a_fifo_or_device_given_directly_is_skipped(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.dcm")
    (tmp_path / "zero.dcm").symlink_to("/dev/zero")  # named directly, so the outside rule does not apply
    report = ingest_in_child(tmp_path / "lib", tmp_path / "pipe.dcm", tmp_path / "zero.dcm")
    reasons = failures(report)
    assert report["added"] == 0 and "not a regular file" in reasons["pipe.dcm"]
    assert "not a regular file" in reasons["zero.dcm"] and "device" in reasons["zero.dcm"]


def test_files_over_the_size_limit_are_skipped_unread(tmp_path: Path, lib: Library) -> None:
    from medhash_app.core.input_files import MAX_INPUT_BYTES

    huge = tmp_path / "in" / "huge.dcm"
    huge.parent.mkdir()
    with open(huge, "wb") as handle:
        handle.truncate(MAX_INPUT_BYTES + 1)  # sparse: no disk space used
    make_png(tmp_path / "in" / "good.png", 1)
    report = ingest([tmp_path / "in"], lib, workers=1)
    assert report.added == 1
    assert [Path(p).name for p, _ in report.failed] == ["huge.dcm"]
    assert "over the limit" in report.failed[0][1]


# --- 3. unreadable sidecars and folders ----------------------------------------------------------

def test_unreadable_sidecar_file_and_subfolder_fail_alone(tmp_path: Path, restore_modes: list[Path]) -> None:
    folder = tmp_path / "in"
    make_png(folder / "a.png", 1)
    (folder / "a.txt").write_text("Clear lungs.")
    make_png(folder / "b.png", 2)
    (folder / "b.txt").write_text("Small effusion.")
    make_png(folder / "c.png", 3)
    make_png(folder / "locked" / "d.png", 4)
    for path in (folder / "a.txt", folder / "c.png", folder / "locked"):
        restore_modes.append(path)
        make_unreadable(path)
    report = ingest_in_child(tmp_path / "lib", folder, obey_file_modes=True)
    assert report["added"] == 1  # b.png
    reasons = failures(report)
    assert set(reasons) == {"a.png", "c.png", "locked"}
    assert "a.txt" in reasons["a.png"] and "cannot be read" in reasons["a.png"]
    assert "cannot be read" in reasons["c.png"]
    assert "folder" in reasons["locked"] and "cannot be read" in reasons["locked"]


def test_an_unreadable_folder_given_directly_is_a_clear_error(tmp_path: Path, restore_modes: list[Path]) -> None:
    locked = tmp_path / "locked"
    make_png(locked / "a.png", 1)
    restore_modes.append(locked)
    make_unreadable(locked)
    report = ingest_in_child(tmp_path / "lib", locked, obey_file_modes=True)
    if "error" in report:
        assert report["item"] == str(locked) and "cannot be read" in report["reason"]
    else:
        assert report["added"] == 0 and "cannot be read" in failures(report)["locked"]
