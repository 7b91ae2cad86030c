"""Every real DICOM file in ../shared/data/dicom decodes (or fails) as its manifest says.

Set MEDHASH_CODEC_TABLE=<file.md> to write the outcome table that docs/codecs.md quotes.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from medhash_app.core.errors import CorruptFileError, UnsupportedFileError
from medhash_app.core.imaging import load_image, render

pytestmark = pytest.mark.shared_data

_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_MANIFEST = Path(os.environ.get("MEDHASH_SHARED_DATA", _DEFAULT_DATA)) / "dicom" / "manifest.tsv"
_OUTCOMES: dict[str, tuple[str, str, str, str]] = {}  # file -> (syntax, plugins, expected, got)


def _manifest_files() -> list[str]:
    """File names for parametrization; the dicom_dir fixture skips when the data is absent."""
    if not _MANIFEST.is_file():
        return ["<manifest not found>"]
    with _MANIFEST.open(newline="") as handle:
        return [row["file"] for row in csv.DictReader(handle, delimiter="\t")]


def _manifest_row(dicom_dir: Path, name: str) -> dict[str, str]:
    with (dicom_dir / "manifest.tsv").open(newline="") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle, delimiter="\t")}
    if name not in rows:
        pytest.skip(f"{name} is not in the manifest")
    return rows[name]


def _expected_shape(decode_default: str) -> tuple[tuple[int, ...], str]:
    """'ok 120x480x640x3 uint8' -> ((120, 480, 640, 3), 'uint8')."""
    match = re.match(r"ok\s+([\dx]+)\s+(\w+)", decode_default)
    assert match, f"unexpected manifest value {decode_default!r}"
    return tuple(int(v) for v in match.group(1).split("x")), match.group(2)


def _syntax_and_plugins(text: str) -> tuple[str, str]:
    """'JPEG-LS Lossy (1.2.840.10008.1.2.4.81)' -> (name, installed pydicom plugins for it)."""
    match = re.search(r"\((1\.2[\d.]+)\)", text)
    if not match:
        return text or "none (no file meta)", "-"
    uid = UID(match.group(1))
    if not uid.is_encapsulated:
        return uid.name, "pydicom (native)"
    return uid.name, ", ".join(get_decoder(uid).available_plugins) or "none installed"


@pytest.fixture(scope="module", autouse=True)
def _codec_table():
    """Write the per-file outcome table when MEDHASH_CODEC_TABLE names a file."""
    yield
    target = os.environ.get("MEDHASH_CODEC_TABLE")
    if target and _OUTCOMES:
        lines = ["| file | transfer syntax | installed plugins | manifest | MedHash |",
                 "|---|---|---|---|---|"]
        lines += [f"| `{name}` | {' | '.join(cells)} |" for name, cells in sorted(_OUTCOMES.items())]
        Path(target).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", _manifest_files())
def test_manifest_file_decodes_or_fails_as_listed(dicom_dir: Path, name: str) -> None:
    row = _manifest_row(dicom_dir, name)
    path = dicom_dir / name
    syntax, plugins = _syntax_and_plugins(row["transfer_syntax"])
    if row["decode_default"].startswith("ok"):
        img = load_image(path)
        _OUTCOMES[name] = (syntax, plugins, "ok", f"ok {'x'.join(map(str, img.pixels.shape))} {img.pixels.dtype}")
        _check_decoded(img, row)
    else:
        assert row["decode_default"].startswith("FAIL")
        with pytest.raises((CorruptFileError, UnsupportedFileError)) as caught:
            load_image(path)
        _OUTCOMES[name] = (syntax, plugins, "FAIL", f"{type(caught.value).__name__}: {caught.value.reason}")
        assert path.name in str(caught.value)
        assert len(caught.value.reason) > 20


def _check_decoded(img, row: dict[str, str]) -> None:
    shape, dtype = _expected_shape(row["decode_default"])
    frames = int(row["frames"] or 1)
    rows, cols = shape[-3:-1] if row["samples"] == "3" else shape[-2:]
    assert img.frame_count == frames
    assert img.frame_index == frames // 2  # documented default: the middle frame
    assert img.pixels.shape[:2] == (rows, cols)
    _check_facts(img.facts, row)
    display = render(img)
    assert display.dtype == np.uint8 and display.shape == img.pixels.shape
    if row["samples"] == "3" or row["photometric"] == "PALETTE COLOR":
        assert img.is_color and img.pixels.dtype == np.uint8 and img.pixels.shape == (rows, cols, 3)
        return
    assert not img.is_color and img.pixels.dtype == np.float32 and img.pixels.ndim == 2
    assert img.invert == (row["photometric"] == "MONOCHROME1")
    if not row["rescale"].strip("/ "):  # no modality LUT: pixels are the stored integers
        info = np.iinfo(np.dtype(dtype))
        assert np.array_equal(img.pixels, np.round(img.pixels))
        assert info.min <= img.pixels.min() and img.pixels.max() <= info.max
        if info.min == 0:
            assert img.pixels.max() < 2 ** int(row["bits_stored"])
    assert display.max() > display.min()  # a real picture, not a flat field


def _check_facts(facts, row: dict[str, str]) -> None:
    """Header facts agree with the manifest, which was written from the files by other tools."""
    assert f"{facts.rows}x{facts.cols}" == row["rows_cols"]
    assert facts.frames == int(row["frames"] or 1)
    assert facts.bits_stored == int(row["bits_stored"])
    assert facts.photometric == row["photometric"]
    assert (facts.modality or "") == row["modality"]
    assert (facts.view or "") == row["view"]
    assert (facts.manufacturer or "") == row["manufacturer"]
    assert facts.transfer_syntax == row["transfer_syntax"].split(" (1.2")[0]
