"""A workstation without a library searches the archive with the archive's own published checkpoint
(`medhash archive publish --with-weights`): fetched once into the user's cache, checked against its
fingerprint, and ranking exactly as the library that published it does (real PostgreSQL + pgvector from
tests/archive_server.py, the real trained tiny library and its real checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.archive import connect, init_archive, publish_library
from medhash_app.core.archive.model_cache import choose_model, fetch_checkpoint, list_models
from medhash_app.core.library import Library
from tests.archive_server import fresh_archive_url

REPORT = "Small left pleural effusion. Heart size normal."


def _publish(library: Path, *, with_weights: bool) -> str:
    url = fresh_archive_url()
    with connect(url, autocommit=True) as conn:
        init_archive(conn)
    with Library.open(library, read_only=True) as lib:
        publish_library(lib, url, batch=50, with_weights=with_weights)
    return url


def _search(url: str, *args: str) -> tuple[int, dict | str]:
    result = CliRunner().invoke(app, ["archive", "search", "--archive", url, "-k", "12", "--device", "cpu",
                                      "--json", *args])
    return result.exit_code, json.loads(result.stdout) if result.exit_code == 0 else result.output


def _ranked(payload: dict) -> list[tuple[int, int, str]]:
    return [(h["case_id"], h["distance"], h["matched"]) for h in payload["hits"]]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache folder (platformdirs reads XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "medhash" / "archive-models"


def test_without_a_library_the_archive_model_ranks_as_the_publishing_library(tiny_library: Path, cache: Path) -> None:
    url = _publish(tiny_library, with_weights=True)
    with Library.open(tiny_library, read_only=True) as lib:
        image = Path(next(c for c in lib.iter_cases() if c["domain"] == "chest")["source_path"])
    for query in (["--image", str(image)], ["--text", REPORT, "--target", "both"]):
        code, alone = _search(url, *query)
        assert code == 0, alone
        code, with_library = _search(url, "--library", str(tiny_library), *query)
        assert code == 0, with_library
        assert len(alone["hits"]) == 12 and _ranked(alone) == _ranked(with_library)
        assert alone["model_id"] == with_library["model_id"]
    fetched = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(fetched) == 1 and {f.name for f in fetched[0].iterdir()} == {"config.json", "model.safetensors"}
    assert not [p for p in cache.iterdir() if p.name.startswith(".fetch-")]  # no half-written download left


def test_a_damaged_cached_checkpoint_is_fetched_again(tiny_library: Path, cache: Path) -> None:
    url = _publish(tiny_library, with_weights=True)
    with connect(url, autocommit=True) as conn:
        model = choose_model(conn)
        folder = fetch_checkpoint(conn, model)
        good = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(good[:-64] + bytes(64))  # a flipped tail: not this model
        again = fetch_checkpoint(conn, model)
    assert again == folder and (folder / "model.safetensors").read_bytes() == good


def test_an_archive_without_published_weights_says_what_to_do(tiny_library: Path, cache: Path) -> None:
    url = _publish(tiny_library, with_weights=False)
    with connect(url, autocommit=True) as conn:
        [model] = list_models(conn)
    assert model.has_codes and not model.has_weights
    code, output = _search(url, "--text", REPORT)
    assert code != 0 and "--with-weights" in output and "Traceback" not in output
    hex_code = "00" * (max(model.bits) // 8)  # a code query needs no weights
    code, payload = _search(url, "--code", hex_code, "--code-kind", "text")
    assert code == 0 and len(payload["hits"]) == 12 and payload["model_id"] == model.id
    status = CliRunner().invoke(app, ["archive", "status", "--archive", url, "--json"])
    assert json.loads(status.stdout)["models"][0]["weights_published"] is False


def test_medhash_search_takes_an_archive_url_as_its_library(tiny_library: Path, cache: Path) -> None:
    """`medhash search --library postgresql://…` is the archive's search without a library."""
    url = _publish(tiny_library, with_weights=True)
    plain = CliRunner().invoke(app, ["search", "--library", url, "--text", REPORT, "-k", "12", "--device", "cpu",
                                     "--json", "--no-serve"])
    assert plain.exit_code == 0, plain.output
    code, archive = _search(url, "--text", REPORT)
    assert code == 0 and _ranked(json.loads(plain.stdout)) == _ranked(archive)
    refused = CliRunner().invoke(app, ["search", "--library", url, "--text", REPORT, "--rerank", "--no-serve"])
    assert refused.exit_code == 2 and "re-ranking needs a local library" in refused.output
