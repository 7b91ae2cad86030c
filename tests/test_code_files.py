"""The codes file beside the FAISS caches (core/library/code_files.py): used only while current and
whole, rebuilt from SQLite otherwise, so it can never give other codes than the library holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from medhash_app.core.library import Library, code_files
from medhash_app.core.library.code_files import SUFFIX


def case_id(i: int) -> str:
    return hashlib.sha256(f"case-{i}".encode()).hexdigest()[:32]


@pytest.fixture()
def lib(tmp_path: Path):
    with Library.open(tmp_path / "lib", create=True) as library:
        library.add_cases([{"id": case_id(i), "source_path": f"/d/{i}.png"} for i in range(50)])
        model = library.register_model("m", "base", [64], "/ck")
        rng = np.random.default_rng(0)
        library.put_codes(model, "image", 64, [case_id(i) for i in range(50)],
                          rng.integers(0, 256, (50, 8), dtype=np.uint8))
        yield library


def _truth(lib: Library) -> tuple[list[str], list[list[int]]]:
    """What SQLite holds, read the old way (dict rows), in database order."""
    rows = list(lib.db.query("SELECT k.case_id, k.code FROM codes k JOIN cases c ON c.id = k.case_id "
                             "WHERE k.model_id = 1 AND k.modality = 'image' AND k.bits = 64 ORDER BY c.seq"))
    return [r["case_id"] for r in rows], [list(r["code"]) for r in rows]


def _same(stored: code_files.StoredCodes, lib: Library) -> bool:
    ids, codes = _truth(lib)
    seqs = [r["seq"] for r in lib.db.query("SELECT seq FROM cases WHERE id IN (SELECT case_id FROM codes) "
                                           "ORDER BY seq")]
    return stored.ids.tolist() == ids and stored.codes.tolist() == codes and stored.seqs.tolist() == seqs


def _file(lib: Library) -> Path:
    return lib.indexes_dir / f"m1-image-64{SUFFIX}"


def test_first_load_writes_the_file_and_the_next_one_uses_it(lib: Library) -> None:
    first = lib.load_codes(1, "image", 64)
    assert first.source.startswith("sqlite") and _file(lib).is_file() and _same(first, lib)
    again = lib.load_codes(1, "image", 64)
    assert again.source == "file" and _same(again, lib) and again.digest == first.digest


@pytest.mark.parametrize("change", ["replace one code", "delete a case", "add codes", "delete codes"])
def test_file_is_rebuilt_when_codes_change(lib: Library, change: str) -> None:
    lib.load_codes(1, "image", 64)
    if change == "replace one code":
        lib.put_codes(1, "image", 64, [case_id(7)], np.full((1, 8), 255, np.uint8))
    elif change == "delete a case":  # the codes go by ON DELETE CASCADE, past every Python method
        with lib.transaction() as db:
            db.execute("DELETE FROM cases WHERE id = ?", [case_id(3)])
    elif change == "add codes":
        lib.add_cases([{"id": case_id(99), "source_path": "/d/99.png"}])
        lib.put_codes(1, "image", 64, [case_id(99)], np.zeros((1, 8), np.uint8))
    else:
        lib.delete_case_codes(1, "image", [case_id(0), case_id(1)])
    reread = lib.load_codes(1, "image", 64)
    assert reread.source == "sqlite (codes changed since the file was written)"
    assert _same(reread, lib)
    assert lib.load_codes(1, "image", 64).source == "file"


def test_other_keys_do_not_invalidate_the_file(lib: Library) -> None:
    lib.load_codes(1, "image", 64)
    lib.put_codes(1, "text", 64, [case_id(0)], np.zeros((1, 8), np.uint8))
    assert lib.load_codes(1, "image", 64).source == "file"


def _flip_code_byte(path: Path) -> None:
    """A whole, readable file (zip CRCs fine) whose codes differ from the ones it was written with."""
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["codes"][5, 3] ^= 0xFF
    with path.open("wb") as fh:
        np.savez(fh, **arrays)


def _flip_raw_byte(path: Path) -> None:
    """Flipped bytes on disk inside the codes array (the zip layer notices)."""
    data = bytearray(path.read_bytes())
    with np.load(path) as npz:
        at = data.find(npz["codes"].tobytes()[:16])
    data[at + 3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "reason"), [
    (_flip_code_byte, "codes file damaged (checksum)"),
    (_flip_raw_byte, "codes file unreadable"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "codes file unreadable"),
    (lambda p: p.write_bytes(b""), "codes file unreadable"),
    (lambda p: p.write_text("not a zip at all"), "codes file unreadable"),
])
def test_damaged_file_is_detected_and_rebuilt(lib: Library, damage, reason: str) -> None:
    lib.load_codes(1, "image", 64)
    damage(_file(lib))
    reread = lib.load_codes(1, "image", 64)
    assert reread.source.startswith(f"sqlite ({reason}") and _same(reread, lib)
    assert lib.load_codes(1, "image", 64).source == "file"


def test_file_of_another_key_with_a_stale_token_is_not_used(lib: Library) -> None:
    """A file copied in from elsewhere (another key, an older library) carries another token."""
    lib.put_codes(1, "text", 64, [case_id(0)], np.zeros((1, 8), np.uint8))
    lib.load_codes(1, "text", 64)
    lib.load_codes(1, "image", 64)
    (lib.indexes_dir / f"m1-text-64{SUFFIX}").replace(_file(lib))
    reread = lib.load_codes(1, "image", 64)
    assert reread.source.startswith("sqlite (codes changed") and _same(reread, lib)


def test_read_only_library_reads_without_writing(lib: Library, tmp_path: Path) -> None:
    lib.close()
    with Library.open(tmp_path / "lib", read_only=True) as ro:
        stored = ro.load_codes(1, "image", 64)
        assert stored.source.startswith("sqlite") and not _file(ro).exists() and _same(stored, ro)
