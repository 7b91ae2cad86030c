"""`medhash …` end to end: JSON shapes, exit codes, error messages, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medhash_app.cli import app

runner = CliRunner()


def _json(args: list[str]) -> tuple[int, dict | list]:
    result = runner.invoke(app, [*args, "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_search_json_has_the_documented_shape(tiny_library: Path) -> None:
    code, payload = _json(["search", "--library", str(tiny_library), "--text", "pleural effusion", "-k", "4"])
    assert code == 0
    assert set(payload) == {"query_kind", "model_id", "bits", "device", "timing_ms", "query_findings", "hits",
                            "out_of_domain", "out_of_domain_reason", "domain_score", "domain_threshold",
                            "query_domain"}
    assert payload["query_kind"] == "text" and payload["bits"] == 32 and len(payload["hits"]) == 4
    hit = payload["hits"][0]
    assert {"rank", "case_id", "matched", "distance", "similarity", "labels", "report", "source_path"} <= set(hit)
    assert [h["rank"] for h in payload["hits"]] == [1, 2, 3, 4]


def test_search_errors_exit_2_with_a_reason(tiny_library: Path, tmp_path: Path) -> None:
    code, payload = _json(["search", "--library", str(tiny_library)])
    assert code == 2 and "exactly one of --image" in payload["reason"]
    code, payload = _json(["search", "--library", str(tmp_path / "none"), "--text", "x"])
    assert code == 2 and payload["error"] == "LibraryError" and "none" in payload["item"]
    code, payload = _json(["search", "--library", str(tiny_library), "--text", "  "])
    assert code == 2 and payload["error"] == "InvalidReportError"


def test_info_on_a_real_dicom_shows_facts_without_phi(dicom_dir: Path) -> None:
    path = dicom_dir / "xray_chest" / "CR_chest_MONO1_Philips_RG1_explicitLE.dcm"
    code, payload = _json(["info", str(path)])
    assert code == 0
    assert payload["modality"] == "CR" and payload["photometric"] == "MONOCHROME1"
    assert payload["shape"] == [1955, 1841]
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    text = json.dumps(payload)
    for tag in ("PatientName", "PatientID"):
        value = str(ds.get(tag, "") or "")
        if len(value) > 2:
            assert value not in text


def test_info_and_eval_on_a_library(tiny_library: Path) -> None:
    code, info = _json(["info", "--library", str(tiny_library)])
    assert code == 0 and info["cases"] == 120 and info["by_domain"] == {"chest": 60, "fundus": 60}
    assert info["models"][0]["codes"]["image-32"] == 120
    code, report = _json(["eval", "--library", str(tiny_library)])
    assert code == 0
    i2t = report["metrics"]["i2t@32"]
    assert 0.0 <= i2t["map_all"] <= 1.0 and i2t["queries"] == report["splits"]["query"]
    assert set(report["metrics"]) == {f"{d}@{b}" for d in ("i2t", "t2i", "i2i", "t2t") for b in (16, 32)}
    by_domain = report["by_domain"]  # each domain on its own, at the longest code length
    assert set(by_domain) == {"chest", "fundus"}
    assert sum(e["cases"] for e in by_domain.values()) == report["metrics"]["i2t@32"]["database"]
    assert all(e["bits"] == 32 and 1 <= e["distinct_image_codes"] <= e["cases"] for e in by_domain.values())
    assert isinstance(report["warnings"], list)


def test_ingest_lists_bad_files_and_keeps_the_rest(dicom_dir: Path, tmp_path: Path) -> None:
    code, payload = _json(["ingest", str(dicom_dir / "xray_chest"), "--library", str(tmp_path / "lib")])
    assert code == 0 and payload["added"] == 9
    assert len(payload["failed"]) == 1 and "CORRUPT" in payload["failed"][0]["path"]
    code, again = _json(["ingest", str(dicom_dir / "xray_chest"), "--library", str(tmp_path / "lib")])
    assert again["added"] == 0 and again["skipped"] == 9


def _make_pngs(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir()
    for i in range(n):
        image = Image.new("L", (600, 600), color=i % 250)
        image.putpixel((0, 0), i // 250)  # every file's content differs (ids are content hashes)
        image.save(folder / f"img{i:04d}.png")
        (folder / f"img{i:04d}.txt").write_text(f"Report {i}: no pleural effusion.")


def test_ctrl_c_stops_ingest_cleanly(tmp_path: Path) -> None:
    """SIGINT during an ingest: exit 130, the library is consistent and a re-run completes it."""
    source, library = tmp_path / "src", tmp_path / "lib"
    _make_pngs(source, 400)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medhash_app.cli", "ingest", str(source), "--library",
                             str(library)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = library / "library.sqlite"
    deadline = time.time() + 120
    while time.time() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    if conn.execute("SELECT count(*) FROM cases").fetchone()[0] > 0:
                        break
            except sqlite3.Error:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done = conn.execute("SELECT count(*) FROM cases").fetchone()[0]
    assert 0 < done < 400
    code, payload = _json(["ingest", str(source), "--library", str(library)])
    assert code == 0 and payload["added"] + payload["skipped"] == 400 and payload["added"] == 400 - done


@pytest.mark.parametrize("bits", ["16,abc", "12"])
def test_train_rejects_bad_bits(tiny_library: Path, bits: str) -> None:
    code, payload = _json(["train", "--library", str(tiny_library), "--bits", bits, "--backbone", "tiny"])
    assert code == 2 and ("bits" in payload["item"] or "bits" in payload["reason"])


def test_train_passes_feature_norm_to_the_model(tiny_library: Path, tmp_path: Path) -> None:
    code, payload = _json(["train", "--library", str(tiny_library), "--backbone", "tiny", "--feature-norm", "group",
                           "--out", str(tmp_path / "run")])
    assert code == 2 and "feature_norm must be one of" in payload["reason"]  # reached BASE's option check


def test_demo_builds_a_library_and_answers_example_queries(tmp_path: Path) -> None:
    """The README's main job, on the tiny backbone so it fits in the test budget; a second run
    reuses the library and its model instead of training again."""
    args = ["demo", "--library", str(tmp_path / "demo"), "--backbone", "tiny", "--epochs", "1", "--no-window"]
    code, first = _json(args)
    assert code == 0 and first["model"]["trained"] is True
    assert first["cases"] == 480
    kinds = [q["query_kind"] for q in first["queries"]]
    assert kinds.count("image") >= 2 and kinds.count("text") >= 2
    for answer in first["queries"]:
        expected = "text" if answer["query_kind"] == "image" else "image"
        assert len(answer["hits"]) == 5 and all(h["matched"] == expected for h in answer["hits"])
    code, second = _json(args)
    assert code == 0 and second["model"]["trained"] is False
    assert second["model"]["model_id"] == first["model"]["model_id"]
