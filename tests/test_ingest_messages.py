"""What an import tells the user: plain reasons (no Python exception text), a transfer syntax that does not
match the data said as such, decoder warnings in logs/ingest.log instead of on the terminal (redacted),
and no decoder worker outliving a killed import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medhash_app.core.errors import CorruptFileError
from medhash_app.core.imaging import load_image
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
from tests.fuzzing import unclear_reason
from tests.hostile_files import tiny_dicom

REPO = Path(__file__).resolve().parents[1]
LE_UID, BE_UID = b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00"


def _relabelled_as_big_endian(tmp_path: Path) -> Path:
    """Little Endian data whose file meta says Explicit VR Big Endian (same UID length: a one-byte edit)."""
    data = tiny_dicom(tmp_path / "le.dcm").read_bytes()
    assert data.count(LE_UID) == 1
    path = tmp_path / "relabelled.dcm"
    path.write_bytes(data.replace(LE_UID, BE_UID))
    return path


def test_big_endian_uid_on_little_endian_data_says_so(tmp_path: Path) -> None:
    path = _relabelled_as_big_endian(tmp_path)
    with pytest.raises(CorruptFileError) as caught:
        load_image(path)
    reason = caught.value.reason
    assert "transfer syntax" in reason and "Explicit VR Big Endian" in reason and "Little Endian" in reason
    assert "Rows/Columns" not in reason


def test_little_endian_uid_on_big_endian_data_says_so(tmp_path: Path) -> None:
    ds = pydicom.dcmread(tiny_dicom(tmp_path / "le.dcm"))
    path = tmp_path / "be.dcm"  # Big Endian data under a Little Endian UID in the file meta
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    with pytest.raises(CorruptFileError, match="which is written Big Endian"):
        load_image(path)


def _broken_files(folder: Path) -> dict[str, Path]:
    short = pydicom.dcmread(tiny_dicom(folder / "src1.dcm", seed=1))
    short.PixelData = short.PixelData[:100]
    short.save_as(folder / "short_pixels.dcm")
    lut = pydicom.dcmread(tiny_dicom(folder / "src2.dcm", seed=2))
    item = Dataset()
    item.add_new(0x00283002, "US", [4, 0])  # LUT Descriptor: two numbers where three are required
    item.add_new(0x00283006, "US", [0, 1, 2, 3])  # LUT Data
    lut.VOILUTSequence = Sequence([item])
    lut.save_as(folder / "bad_lut.dcm")
    png = folder / "cut.png"
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(folder / "full.png")
    png.write_bytes((folder / "full.png").read_bytes()[:300])
    for name in ("src1.dcm", "src2.dcm", "full.png"):
        (folder / name).unlink()
    return {"short_pixels.dcm": folder / "short_pixels.dcm", "bad_lut.dcm": folder / "bad_lut.dcm", "cut.png": png}


def test_reasons_are_plain_sentences_and_details_go_to_the_log(tmp_path: Path) -> None:
    files = _broken_files(tmp_path / "in")
    _relabelled_as_big_endian(tmp_path / "in")
    (tmp_path / "in" / "le.dcm").unlink()
    with Library.open(tmp_path / "lib", create=True) as lib:
        report = ingest([tmp_path / "in"], lib, workers=1)
    reasons = {Path(p).name: r for p, r in report.failed}
    assert set(reasons) == {*files, "relabelled.dcm"}
    for name, reason in reasons.items():
        assert not unclear_reason(reason), (name, reason)
    assert "length does not match the image size" in reasons["short_pixels.dcm"]
    assert "lookup table" in reasons["bad_lut.dcm"]
    assert "truncated or damaged" in reasons["cut.png"]
    log = Path(report.log_file).read_text()
    assert "ValueError" in log  # the exception behind the plain reason, for whoever debugs it
    assert str(tmp_path) not in log  # files are named by case id in the log, never by path


CHILD = """
import json, sys
from pathlib import Path
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
with Library.open(Path(sys.argv[1]), create=True) as library:
    report = ingest([Path(sys.argv[2])], library, workers=int(sys.argv[3]))
print(json.dumps(report.to_dict()))
"""


def _warning_dicoms(folder: Path, count: int) -> None:
    for i in range(count):
        ds = pydicom.dcmread(tiny_dicom(folder / f"w{i}.dcm", seed=i))
        ds.SOPInstanceUID = f"1.2.QZSECRET{i}"  # invalid UI, read for the facts: pydicom's warning quotes it
        ds.save_as(folder / f"w{i}.dcm")


@pytest.mark.parametrize("workers", [1, 2])
def test_decoder_warnings_go_to_the_log_not_the_terminal(tmp_path: Path, workers: int) -> None:
    _warning_dicoms(tmp_path / "in", 6)
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "lib"), str(tmp_path / "in"), str(workers)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["added"] == 6 and not report["failed"]
    assert "Warning" not in done.stderr and "Invalid value" not in done.stderr, done.stderr[:2000]
    assert report["decoder_warnings"] >= 6 and report["log_file"].endswith("logs/ingest.log")
    log = Path(report["log_file"]).read_text()
    assert "Invalid value for VR UI" in log and "QZSECRET" not in log  # quoted values are removed


WORKERS_CHILD = """
import sys, time
from pathlib import Path
from medhash_app.core.ingest.decode import Decoder, DecodeJob
folder = Path(sys.argv[1])
decoder = Decoder(2)
jobs = [DecodeJob(str(p), f"{i:032x}", None, b"", str(folder / "lib")) for i, p in enumerate(sorted(folder.glob("*.dcm")))]
decoder.run(jobs)
print(" ".join(str(pid) for pid in decoder._pool._processes), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is pending


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_decoder_workers_exit_when_the_import_is_killed(tmp_path: Path) -> None:
    for i in range(2):
        tiny_dicom(tmp_path / f"{i}.dcm", seed=i)
    parent = subprocess.Popen([sys.executable, "-c", WORKERS_CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        line = parent.stdout.readline()
        workers = [int(pid) for pid in line.split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers), line
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # do not leave them behind even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, "decoder workers outlived the killed import"


def test_damaged_gzip_manifest_and_dicomdir_are_plain_layout_errors(tmp_path: Path) -> None:
    import gzip

    from medhash_app.core.errors import DatasetLayoutError

    data = gzip.compress(b"image,report\n" + b"a.png,Clear.\n" * 2000)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.csv.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x001.2\0" + b"\xff" * 64)
    with Library.open(tmp_path / "lib", create=True) as lib:
        for source in (tmp_path / "m" / "manifest.csv.gz", tmp_path / "d"):
            with pytest.raises(DatasetLayoutError) as caught:
                ingest([source], lib, workers=1)
            assert not unclear_reason(caught.value.reason) and "(" not in caught.value.reason, caught.value.reason
