"""A decoder that crashes outright (pylibjpeg-rle panics in Rust: pyo3's PanicException, a
BaseException) fails its own file with a reason, inline and in worker processes; the rest goes on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhash_app.core.errors import CorruptFileError
from medhash_app.core.imaging import dicom as dicom_module
from medhash_app.core.imaging import load_image
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
from tests.hostile_files import panicking_rle, tiny_dicom


def make_png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def lib(tmp_path: Path) -> Iterator[Library]:
    with Library.open(tmp_path / "lib", create=True) as library:
        yield library


@pytest.mark.shared_data
def test_the_crafted_rle_file_really_panics_in_pylibjpeg_rle(dicom_dir: Path, tmp_path: Path) -> None:
    rle = pytest.importorskip("rle.rle")
    import pydicom
    from pydicom.encaps import generate_fragments

    ds = pydicom.dcmread(panicking_rle(dicom_dir, tmp_path / "bad.dcm"))
    frame = list(generate_fragments(ds.PixelData))[-1]
    try:
        rle.decode_frame(frame, ds.Rows * ds.Columns, ds.BitsAllocated, "<")
    except Exception:  # noqa: BLE001 - an ordinary error: this pylibjpeg-rle no longer panics
        pytest.skip("the installed pylibjpeg-rle raises an ordinary error on this file")
    except BaseException as exc:  # noqa: BLE001 - the point: pyo3's PanicException
        assert type(exc).__name__ == "PanicException"
    else:
        pytest.skip("the installed pylibjpeg-rle decodes this file")


@pytest.mark.shared_data
@pytest.mark.parametrize("workers", [1, 2])
def test_a_panicking_decoder_fails_only_its_file(dicom_dir: Path, tmp_path: Path, lib: Library,
                                                 workers: int) -> None:
    folder = tmp_path / "in"
    bad = panicking_rle(dicom_dir, folder / "bad_rle.dcm")
    make_png(folder / "a.png", 1)
    make_png(folder / "b.png", 2)
    report = ingest([folder], lib, workers=workers)
    assert report.added == 2
    assert [p for p, _ in report.failed] == [str(bad)]
    reason = report.failed[0][1]
    assert "RLE" in reason and "crashed" in reason and "PanicException" not in reason  # plain words for the user
    assert "PanicException" in Path(report.log_file).read_text()  # the exception, for whoever debugs it
    again = ingest([folder], lib, workers=workers)  # the same file does not kill every re-run
    assert (again.added, again.skipped, [p for p, _ in again.failed]) == (0, 2, [str(bad)])


class NativePanic(BaseException):
    """What a native decoder raises when it panics (pyo3's PanicException derives from BaseException)."""


def test_any_failure_at_the_decoder_plugin_edge_is_that_files_error(tmp_path: Path, lib: Library,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def panics(*_args: object, **_kwargs: object) -> None:
        raise NativePanic("index out of bounds")

    monkeypatch.setattr(dicom_module, "pixel_array", panics)
    path = tiny_dicom(tmp_path / "in" / "x.dcm")
    with pytest.raises(CorruptFileError) as err:
        load_image(path)
    assert err.value.item == str(path) and "crashed" in err.value.reason
    assert isinstance(err.value.__cause__, NativePanic)
    make_png(tmp_path / "in" / "y.png", 3)
    report = ingest([tmp_path / "in"], lib, workers=1)
    assert report.added == 1 and [Path(p).name for p, _ in report.failed] == ["x.dcm"]


def test_ctrl_c_inside_a_decoder_still_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dicom_module, "pixel_array", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_image(tiny_dicom(tmp_path / "x.dcm"))
