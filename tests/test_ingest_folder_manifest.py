"""A folder of images that also holds a `manifest.tsv` of some other kind (a file list without an
`image` column, like ../shared/data/dicom's) is imported as a folder, in the core, the CLI and the
window; a folder whose manifest names its images is still read through the manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.errors import DatasetLayoutError
from medhash_app.core.ingest import detect_source, ingest
from medhash_app.core.library import Library

FILE_LIST = "file\tbytes\tmodality\n{rows}"  # the shape of ../shared/data/dicom/manifest.tsv: no `image`
DICOMS = ("xray_chest/CR_cspine_MONO1_Agfa_16x16_thumb1.dcm", "transfer_syntax_misc/CT_small.dcm")


def _pngs(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_a_folder_whose_manifest_has_no_image_column_is_a_folder(tmp_path: Path) -> None:
    source = tmp_path / "incoming"
    images = _pngs(source)
    (source / "manifest.tsv").write_text(FILE_LIST.format(rows="".join(f"{p.name}\t1\tOT\n" for p in images)))
    assert detect_source(source) == "folder"
    with Library.open(tmp_path / "lib", create=True) as lib:
        report = ingest([source], lib, workers=1)
        assert report.added == len(images) and not report.failed
    # given as a file, it is a manifest, and one without the column it needs
    with Library.open(tmp_path / "lib2", create=True) as lib, pytest.raises(DatasetLayoutError, match="'image' column"):
        ingest([source / "manifest.tsv"], lib, workers=1)


def test_a_folder_whose_manifest_names_images_is_read_through_it(tmp_path: Path) -> None:
    source = tmp_path / "pairs"
    images = _pngs(source / "files")
    rows = [{"image": f"files/{p.name}", "report": f"Report {i}.", "labels": ["No Finding"]}
            for i, p in enumerate(images)]
    (source / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (source / "manifest.tsv").write_text(FILE_LIST.format(rows=""))  # a file list next to it is not used
    assert detect_source(source) == "manifest"
    with Library.open(tmp_path / "lib", create=True) as lib:
        assert ingest([source], lib, workers=1).added == len(images)
        assert sorted(c["report"] for c in lib.iter_cases()) == ["Report 0.", "Report 1.", "Report 2."]


def test_an_unreadable_folder_manifest_is_still_reported(tmp_path: Path) -> None:
    """Not knowing its columns, the manifest's own problem is shown rather than guessed away."""
    source = tmp_path / "latin1"
    _pngs(source)
    (source / "manifest.csv").write_bytes("image,report\nimg0.png,\xe9panchement\n".encode("latin-1"))
    assert detect_source(source) == "manifest"


@pytest.mark.shared_data
def test_cli_imports_a_dicom_folder_with_a_file_list(dicom_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "dicoms"
    source.mkdir()
    for rel in DICOMS:
        shutil.copy(dicom_dir / rel, source / Path(rel).name)
    header = (dicom_dir / "manifest.tsv").read_text(encoding="utf-8").splitlines()[0]
    (source / "manifest.tsv").write_text(header + "\n" + "".join(f"{Path(r).name}\n" for r in DICOMS))
    result = CliRunner().invoke(app, ["ingest", str(source), "--library", str(tmp_path / "lib"), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["added"] == len(DICOMS) and payload["failed"] == []
