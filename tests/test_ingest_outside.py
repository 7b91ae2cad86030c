"""A manifest (or DICOMDIR, or folder) may only make MedHash read files inside the folder being imported,
judged after resolving symbolic links and "..": rows naming ../../x or /etc/shadow are that row's error,
unopened, unless the user allows their folder (`allowed_roots`, `medhash ingest --allow-outside`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.errors import DatasetLayoutError
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")


def png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def layout(tmp_path: Path) -> dict[str, Path]:
    """import/ holds the manifest and its images; outside/ is a sibling the manifest reaches for."""
    inside = tmp_path / "import"
    png(inside / "img" / "a.png", 1)
    png(inside / "img" / "b.png", 2)
    secret = png(tmp_path / "outside" / "secret.png", 3)
    (inside / "img" / "link_out.png").symlink_to(secret)  # inside by name, outside in fact
    (inside / "img" / "link_in.png").symlink_to(inside / "img" / "b.png")
    manifest = inside / "manifest.csv"
    manifest.write_text("image,report\n"
                        "img/a.png,Clear.\n"
                        "img/../img/b.png,Clear.\n"  # ".." that stays inside is fine
                        "../outside/secret.png,Effusion.\n"
                        f"{secret},Effusion.\n"
                        "/etc/shadow,Effusion.\n"
                        "img/link_out.png,Effusion.\n"
                        "img/link_in.png,Clear.\n", encoding="utf-8")
    return {"manifest": manifest, "outside": tmp_path / "outside", "secret": secret, "inside": inside}


def test_manifest_rows_outside_its_folder_fail_alone_unread(layout: dict[str, Path], tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib", create=True) as lib:
        report = ingest([layout["manifest"]], lib, workers=1)
        sources = {Path(c["source_path"]).name for c in lib.iter_cases()}
    assert report.added == 2 and sources == {"a.png", "b.png"}  # link_in.png is b.png's content: skipped
    reasons = {Path(p).name: r for p, r in report.failed}
    assert set(reasons) == {"secret.png", "shadow", "link_out.png"}
    assert "row 3 of manifest.csv names a file outside the folder being imported" in report.failed[0][1]
    for reason in reasons.values():
        assert "outside the folder being imported" in reason and "--allow-outside" in reason
    assert str(layout["secret"].resolve()) in reasons["link_out.png"]  # links resolved before the check
    assert "/etc/shadow" in reasons["shadow"] and "not a regular file" not in reasons["shadow"]  # never opened


def test_allowed_folder_is_read(layout: dict[str, Path], tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib", create=True) as lib:
        report = ingest([layout["manifest"]], lib, workers=1, allowed_roots=[layout["outside"]])
    assert report.added == 3  # a, b and the secret (four rows name it; its content is stored once)
    assert [Path(p).name for p, _ in report.failed] == ["shadow"]  # /etc is still not allowed


def test_folder_tree_follows_the_same_rule_and_a_named_file_is_always_read(layout: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    layout["manifest"].unlink()
    with Library.open(tmp_path / "lib", create=True) as lib:
        report = ingest([layout["inside"]], lib, workers=1)
        assert [Path(p).name for p, _ in report.failed] == ["link_out.png"]
        named = ingest([layout["inside"] / "img" / "link_out.png"], lib, workers=1)
        assert named.added == 1 and not named.failed  # the user chose this file


def test_a_missing_allowed_folder_is_a_layout_error(layout: dict[str, Path], tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib", create=True) as lib, pytest.raises(DatasetLayoutError, match="allow-outside"):
        ingest([layout["manifest"]], lib, workers=1, allowed_roots=[tmp_path / "nowhere"])


def test_cli_allow_outside(layout: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    refused = runner.invoke(app, ["ingest", str(layout["manifest"]), "-l", str(tmp_path / "lib1"), "--json"])
    assert refused.exit_code == 0, refused.output
    assert json.loads(refused.stdout)["added"] == 2
    allowed = runner.invoke(app, ["ingest", str(layout["manifest"]), "-l", str(tmp_path / "lib2"), "--json",
                                  "--allow-outside", str(layout["outside"])])
    assert allowed.exit_code == 0, allowed.output
    assert json.loads(allowed.stdout)["added"] == 3
