"""User-caused errors through `medhash …`: exit status 2 and one line naming the item and the
reason (README: "Every command takes --json ..."), never a traceback."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from PIL import Image
from typer.testing import CliRunner

from medhash_app.cli import app
from tests.hostile_files import panicking_rle

runner = CliRunner()


def one_line_error(args: list[str], *needles: str) -> str:
    """Run the command; it must exit 2 with exactly one line holding every needle, and no traceback."""
    result = runner.invoke(app, args)
    _no_traceback(result)
    lines = result.output.strip("\n").splitlines()  # not even a blank line or a stale progress bar
    assert len(lines) == 1, result.output
    assert all(needle in lines[0] for needle in needles), lines[0]
    return lines[0]


def json_error(args: list[str]) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    _no_traceback(result)
    return json.loads(result.stdout)


def _no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output


def make_png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def model_without_codes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library with a registered (tiny, untrained) model that has encoded nothing yet."""
    from medhash_app.core.session import MedHashSession
    from trainer.checkpoint import save_checkpoint
    from trainer.config import ModelConfig
    from trainer.models.registry import build_model

    root = tmp_path_factory.mktemp("no-codes")
    checkpoint = save_checkpoint(root / "model", build_model(ModelConfig(backbone="tiny", bits=[16]),
                                                             pretrained=False))
    with MedHashSession(root / "library", create=True, device="cpu") as session:
        session.register_checkpoint(checkpoint)
    return root / "library"


def test_a_latin1_manifest_names_the_file_and_the_encoding(tmp_path: Path) -> None:
    make_png(tmp_path / "a.png")
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes("image,report\na.png,Épanchement pleural.\n".encode("latin-1"))
    one_line_error(["ingest", str(manifest), "-l", str(tmp_path / "lib")], "manifest.csv", "UTF-8")
    payload = json_error(["ingest", str(manifest), "-l", str(tmp_path / "lib")])
    assert payload["error"] == "DatasetLayoutError" and payload["item"].endswith("manifest.csv")


def test_a_csv_gz_that_is_not_gzip_names_the_file(tmp_path: Path) -> None:
    make_png(tmp_path / "a.png")
    fake = tmp_path / "rows.csv.gz"
    fake.write_text("image,report\na.png,Clear.\n", encoding="utf-8")
    one_line_error(["ingest", str(fake), "-l", str(tmp_path / "lib")], "rows.csv.gz", "gzip")


def test_a_truncated_csv_gz_names_the_file(tmp_path: Path) -> None:
    make_png(tmp_path / "a.png")
    data = gzip.compress(("image,report\n" + "a.png,Clear lungs and more words.\n" * 2000).encode())
    broken = tmp_path / "rows.csv.gz"
    broken.write_bytes(data[: len(data) // 2])
    one_line_error(["ingest", str(broken), "-l", str(tmp_path / "lib")], "rows.csv.gz", "gzip")


def test_an_unknown_domain_names_the_option(tmp_path: Path) -> None:
    make_png(tmp_path / "in" / "a.png")
    one_line_error(["ingest", str(tmp_path / "in"), "-l", str(tmp_path / "lib"), "--domain", "foo"],
                   "--domain", "foo", "chest")
    assert not (tmp_path / "lib").exists()  # refused before the library is created


def test_searching_a_model_without_codes_says_to_encode(model_without_codes: Path) -> None:
    one_line_error(["search", "-l", str(model_without_codes), "--text", "pleural effusion"],
                   "model 1", "no codes", "medhash encode")
    payload = json_error(["search", "-l", str(model_without_codes), "--text", "pleural effusion"])
    assert payload["error"] == "ModelError" and payload["item"] == "model 1"


@pytest.mark.shared_data
def test_info_and_search_on_a_file_that_makes_the_decoder_panic(dicom_dir: Path, tmp_path: Path,
                                                                 model_without_codes: Path) -> None:
    bad = panicking_rle(dicom_dir, tmp_path / "bad_rle.dcm")
    one_line_error(["info", str(bad)], "bad_rle.dcm", "decoder crashed")
    one_line_error(["search", "-l", str(model_without_codes), "--image", str(bad)], "bad_rle.dcm", "crashed")


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs are POSIX")
def test_info_on_a_fifo_says_it_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.dcm")
    one_line_error(["info", str(tmp_path / "pipe.dcm")], "pipe.dcm", "not a regular file")


def test_a_long_reason_stays_on_one_line(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 8, "manifest.csv")
    deep.parent.mkdir(parents=True)
    deep.write_text("report\nno image column\n", encoding="utf-8")
    one_line_error(["ingest", str(deep), "-l", str(tmp_path / "lib")], str(deep), "'image' column")


def _ct_with(dicom_dir: Path, out: Path, edit) -> Path:
    import pydicom

    ds = pydicom.dcmread(dicom_dir / "transfer_syntax_misc" / "CT_small.dcm")
    edit(ds)
    ds.save_as(out, enforce_file_format=False)
    return out


@pytest.mark.shared_data
def test_a_uid_element_holding_a_number_is_read_not_a_traceback(dicom_dir: Path, tmp_path: Path) -> None:
    def number_uid(ds) -> None:  # (0008,0016) SOP Class UID written as US 5
        del ds["SOPClassUID"]
        ds.add_new(0x00080016, "US", 5)

    bad = _ct_with(dicom_dir, tmp_path / "uid_number.dcm", number_uid)
    result = runner.invoke(app, ["info", str(bad), "--json"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert json.loads(result.stdout)["file_format"] == "DICOM"


@pytest.mark.shared_data
def test_an_unknown_vr_in_the_pixel_description_is_one_clear_line(dicom_dir: Path, tmp_path: Path) -> None:
    good = _ct_with(dicom_dir, tmp_path / "plain.dcm", lambda ds: None)
    data = good.read_bytes()
    columns = bytes([0x28, 0x00, 0x11, 0x00]) + b"US"  # (0028,0011) Columns, explicit VR
    at = data.find(columns)
    assert at > 0
    bad = tmp_path / "vr_ts.dcm"
    bad.write_bytes(data[:at + 4] + b"TS" + data[at + 6:])  # a VR no standard has
    one_line_error(["info", str(bad)], "vr_ts.dcm", "cannot be interpreted")
