"""Shared fixtures: the real third-party data in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDHASH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; the test is skipped when it is not there (as on a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def dicom_dir(shared_data: Path) -> Path:
    path = shared_data / "dicom"
    if not (path / "manifest.tsv").is_file():
        pytest.skip(f"DICOM test files not found at {path}")
    return path


@pytest.fixture(scope="session")
def odir_dir(shared_data: Path) -> Path:
    path = shared_data / "odir5k-256"
    if not (path / "pairs.jsonl").is_file():
        pytest.skip(f"ODIR-5K images not found at {path}")
    return path


@pytest.fixture(scope="session")
def iu_reports(shared_data: Path) -> Path:
    path = shared_data / "iu-reports.jsonl"
    if not path.is_file():
        pytest.skip(f"IU X-ray reports not found at {path}")
    return path
