"""Shared fixtures: the real third-party data in ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MEDHASH_NO_SERVE", "1")  # CLI tests search in-process; tests/test_serve.py starts its own

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDHASH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def pseudonym_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never read or make the user's real pseudonym key: one test key, named by
    MEDHASH_KEY_FILE for this process and the children it starts (core/pseudonym.py)."""
    from medhash_app.core.pseudonym import KEY_ENV, create_key_file

    path = tmp_path_factory.mktemp("medhash-key") / "pseudonym.key"
    create_key_file(path)
    before = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = str(path)
    yield path
    if before is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = before


@pytest.fixture()
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest single-threaded on 2 cores (no thread hand-offs, not slowed by other
    busy cores); a module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def tiny_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library built with the real services from the project's own demo data (no shared data
    needed): generated chest DICOMs + fundus PNGs, a BASE model on the tiny backbone (2 epochs),
    every case encoded. About half a minute on 2 CPU cores; shared by the service and CLI tests."""
    from medhash_app.core.demo.generator import generate_demo_dataset
    from medhash_app.core.session import MedHashSession
    from medhash_app.core.training import TrainRequest, train_on_library

    root = tmp_path_factory.mktemp("tiny-library")
    manifest = generate_demo_dataset(root / "source", n_chest=60, n_fundus=60, seed=1)
    library = root / "library"
    with MedHashSession(library, create=True, device="cpu") as session:
        report = session.ingest([manifest])
        assert report.added == 120 and not report.failed
        train_on_library(session, TrainRequest(method="base", bits=[16, 32], epochs=2, backbone="tiny",
                                               device="cpu", seed=0))
    return library
