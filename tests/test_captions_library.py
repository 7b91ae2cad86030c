"""Image captions in the library (core/captions.py, `medhash captions`): a captions file is matched to
cases by id, manifest id or file name; unmatched and ambiguous entries are reported; a bad file or a
failed write leaves the library as it was; a caption-reading model (MCPH) loses exactly the changed
cases' image codes, which `encode` re-makes from the image *with its caption*, while BASE keeps its."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medhash_app.cli import app
from medhash_app.core.captions import import_captions, reads_captions, set_captions
from medhash_app.core.errors import DataError, LibraryError
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
from medhash_app.core.session import MedHashSession
from medhash_app.core.training import TrainRequest, library_samples, train_on_library
from tests.trainer_synth import make_samples
from trainer.checkpoint import load_checkpoint
from trainer.data.captions import image_meta
from trainer.evaluate import pack_signs

SMALL_MCPH = {"token_tower_dim": 64, "lta_dim": 64, "captioner_hidden": 32}
BITS = [16, 32]


def _write_manifest(folder: Path, samples, with_ids: bool) -> Path:
    rows = [{"image": Path(s.image_path).name, "report": s.report, "labels": s.labels, "patient_id": s.patient_id,
             **({"id": s.id} if with_ids else {})} for s in samples]
    path = folder / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic pairs (manifest ids s000..) plus 2 more whose files share names with two of them;
    a BASE and an MCPH model (tiny backbone, 1 epoch), both registered and encoded."""
    root = tmp_path_factory.mktemp("captions-lib")
    main = _write_manifest(root / "src", make_samples(root / "src", n=24, seed=0), with_ids=True)
    twins = _write_manifest(root / "twins", make_samples(root / "twins", n=2, seed=7), with_ids=False)
    with MedHashSession(root / "library", create=True, device="cpu") as session:
        assert ingest([main, twins], session.library, workers=1).added == 26
        for method, options in (("base", {}), ("mcph", SMALL_MCPH)):
            train_on_library(session, TrainRequest(method=method, bits=BITS, epochs=1, backbone="tiny", device="cpu",
                                                   lr=1e-3, options=options, activate=method == "mcph"))
    return root / "library"


@pytest.fixture
def lib_dir(trained: Path, tmp_path: Path) -> Path:
    """A private copy (the models live inside the library, so the copy keeps them)."""
    return Path(shutil.copytree(trained, tmp_path / "library"))


def _dump(folder: Path) -> tuple[list, list]:
    """Every case row and every code row, as stored."""
    with sqlite3.connect(folder / "library.sqlite") as conn:
        return (conn.execute("SELECT * FROM cases ORDER BY seq").fetchall(),
                conn.execute("SELECT * FROM codes ORDER BY model_id, modality, bits, case_id").fetchall())


def _case_by_source(lib: Library, name: str, folder: str = "src") -> dict:
    return next(c for c in lib.iter_cases() if Path(c["source_path"]).name == name
                and Path(c["source_path"]).parent.name == folder)


def _models(lib: Library) -> dict[str, dict]:
    return {m["method"]: m for m in lib.list_models()}


def _codes(lib: Library, model_id: int, modality: str, bits: int) -> dict[str, bytes]:
    ids, codes = lib.get_codes(model_id, modality, bits)
    return {cid: row.tobytes() for cid, row in zip(ids.tolist(), codes, strict=True)}


def test_entries_match_by_case_id_manifest_id_and_file_name(lib_dir: Path, tmp_path: Path) -> None:
    with Library.open(lib_dir) as lib:
        by_hash = _case_by_source(lib, "img_005.png")
        by_name = _case_by_source(lib, "img_007.png")
        by_manifest_id = _case_by_source(lib, "img_009.png")
        rows = [{"id": by_hash["id"], "caption": "Findings: a circle."},
                {"image": "elsewhere/img_007.png", "caption": "Findings: a square."},  # resolves to no source
                {"id": "s009", "caption": "Findings: a triangle."},
                {"id": "nobody", "caption": "x"},
                {"image": "img_000.png", "caption": "twin"},  # src/ and twins/ both hold an img_000.png
                {"image": "img_001", "caption": "twin too"}]  # stem: also two cases
        (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        outcome = import_captions(lib, tmp_path / "c.jsonl")
        assert (outcome.entries, outcome.matched, outcome.changed) == (6, 3, 3)
        assert outcome.unmatched == ["nobody"] and outcome.unmatched_count == 1
        assert outcome.ambiguous == [{"key": "img_000.png", "rule": "file name", "cases": 2},
                                     {"key": "img_001", "rule": "file stem", "cases": 2}]
        captions = {c["id"]: c["extra"].get("caption") for c in lib.iter_cases()}
        assert captions[by_hash["id"]] == "Findings: a circle."
        assert captions[by_name["id"]] == "Findings: a square."
        assert captions[by_manifest_id["id"]] == "Findings: a triangle."
        assert sum(v is not None for v in captions.values()) == 3  # nothing guessed for the twins
        assert lib.get_case(by_manifest_id["id"])["extra"]["id"] == "s009"  # other extra keys kept
        again = import_captions(lib, tmp_path / "c.jsonl")  # same file again: nothing changes
        assert (again.matched, again.changed, again.invalidated_codes) == (3, 0, 0)


@pytest.mark.parametrize("name, content", [
    ("bad.jsonl", '{"id": "s001", "caption": "fine"}\n{"id": "s002", "caption": \n'),  # broken JSON, line 2
    ("bad.csv", "id,text\ns001,fine\n"),  # no caption column
    ("empty.jsonl", '{"id": "s001", "caption": "  "}\n'),  # a record without caption text
    ("binary.jsonl", b"\xff\xfe\x00\x81garbage"),
    ("bad.txt", "id,caption\n"),  # not a captions file type
    ("conflict.jsonl", '{"id": "s003", "caption": "one"}\n{"image": "img_003.png", "caption": "two"}\n'),
    ("missing.jsonl", None),
])
def test_a_bad_captions_file_leaves_the_library_unchanged(lib_dir: Path, tmp_path: Path, name: str,
                                                          content: str | bytes | None) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    before = _dump(lib_dir)
    with Library.open(lib_dir) as lib, pytest.raises(DataError) as err:
        import_captions(lib, path)
    assert str(path) in err.value.item and err.value.reason
    assert _dump(lib_dir) == before


def test_a_failed_write_rolls_back_captions_and_code_deletions(lib_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "c.jsonl").write_text('{"id": "s003", "caption": "Findings: a circle."}\n', encoding="utf-8")
    before = _dump(lib_dir)
    with Library.open(lib_dir) as lib:
        real = Library.delete_case_codes
        calls = []

        def fail_second(self, *args, **kwargs):  # the first model's codes go, then the disk "fills up"
            calls.append(real(self, *args, **kwargs))
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(Library, "delete_case_codes", fail_second)
        with pytest.raises(LibraryError, match="disk is full"):
            import_captions(lib, tmp_path / "c.jsonl")
        assert calls and calls[0] > 0  # something was deleted inside the transaction ...
    assert _dump(lib_dir) == before  # ... and rolled back with the caption


def test_only_caption_reading_models_lose_their_image_codes_and_encode_makes_them_with_the_caption(
        lib_dir: Path, tmp_path: Path) -> None:
    with MedHashSession(lib_dir, device="cpu") as session:
        lib = session.library
        models = _models(lib)
        base, mcph = models["base"], models["mcph"]
        assert reads_captions(mcph) and not reads_captions(base)
        old = {(m, mod, b): _codes(lib, models[m]["id"], mod, b) for m in models for mod in ("image", "text")
               for b in BITS}
        session.rebuild_indexes()  # the FAISS caches exist before the import
        cache = lib_dir / "indexes" / f"m{mcph['id']}-image-32.faissbin"
        assert cache.is_file()
        names = ("img_002.png", "img_004.png", "img_006.png", "img_008.png")
        cases = [_case_by_source(lib, n) for n in names]
        rows = [{"id": c["id"], "caption": f"Findings: {i} large shapes at the left."} for i, c in enumerate(cases)]
        (tmp_path / "c.csv").write_text("id,caption\n" + "".join(f"{r['id']},{r['caption']}\n" for r in rows),
                                        encoding="utf-8")
        outcome = session.import_captions(tmp_path / "c.csv")
        changed = {c["id"] for c in cases}
        assert (outcome.matched, outcome.changed, outcome.models) == (4, 4, [mcph["id"]])
        assert outcome.invalidated_codes == 4 * len(BITS)
        assert not cache.exists()
        for bits in BITS:  # MCPH lost exactly the changed images; texts and BASE untouched
            now = _codes(lib, mcph["id"], "image", bits)
            assert set(now) == set(old[("mcph", "image", bits)]) - changed
            assert _codes(lib, mcph["id"], "text", bits) == old[("mcph", "text", bits)]
            for mod in ("image", "text"):
                assert _codes(lib, base["id"], mod, bits) == old[("base", mod, bits)]
        assert session.encode_library(base["id"]) == 0
        assert session.encode_library(mcph["id"]) == 4  # exactly the changed cases
        for bits in BITS:
            assert _codes(lib, mcph["id"], "text", bits) == old[("mcph", "text", bits)]
            assert len(_codes(lib, mcph["id"], "image", bits)) == lib.count_cases()
        stored = _codes(lib, mcph["id"], "image", 32)
        model, _, _ = load_checkpoint(mcph["checkpoint_path"], device="cpu")
        model.eval()
        embeddings = lib.get_embeddings(mcph["id"], "image", 32, [c["id"] for c in cases])
        for case, row, stored_emb in zip(cases, rows, embeddings, strict=True):
            with Image.open(lib.path_of(case["input_path"])) as im:
                x = model.backbone.preprocess(im.convert("RGB"))[None]
            with torch.inference_mode():
                captioned, bare = (model.encode_image(x, meta=[m])[32] for m in ({"caption": row["caption"]}, {}))
                emb, bare_emb = (model.embed_image(x, meta=[m])[0].numpy() for m in ({"caption": row["caption"]}, {}))
            assert stored[case["id"]] == pack_signs(captioned.numpy())[0].tobytes()
            assert old[("mcph", "image", 32)][case["id"]] == pack_signs(bare.numpy())[0].tobytes()  # before: none
            # The caption reaches the image side: the continuous code and the stored embedding move with it
            # (a 1-epoch tiny model moves them too little to flip a sign, so compare before binarising).
            assert float((captioned - bare).abs().max()) > 1e-4
            assert np.allclose(stored_emb, emb, atol=2e-4) and not np.allclose(stored_emb, bare_emb, atol=2e-4)
        hits = session.search(_image_query(lib, cases[0]), mcph["id"])  # a rebuilt index serves the new codes
        assert hits.hits and session.searcher.indexes.last_status[f"m{mcph['id']}-image-32"].startswith("built")


def _image_query(lib: Library, case: dict):
    from medhash_app.core.search import SearchQuery

    return SearchQuery(image_path=lib.path_of(case["input_path"]), target="images", k=3)


def test_clearing_a_caption_brings_back_the_uncaptioned_code(lib_dir: Path) -> None:
    with MedHashSession(lib_dir, device="cpu") as session:
        lib = session.library
        mcph = _models(lib)["mcph"]
        case = _case_by_source(lib, "img_010.png")
        original = _codes(lib, mcph["id"], "image", 32)[case["id"]]
        assert set_captions(lib, {case["id"]: "Findings: something else entirely."}).changed == [case["id"]]
        assert session.encode_library(mcph["id"]) == 1
        change = set_captions(lib, {case["id"]: "  "})  # blank text clears the caption
        assert change.changed == [case["id"]] and change.invalidated_codes == len(BITS)
        assert "caption" not in lib.get_case(case["id"])["extra"]
        assert session.encode_library(mcph["id"]) == 1
        assert _codes(lib, mcph["id"], "image", 32)[case["id"]] == original


def test_training_samples_carry_the_imported_caption(lib_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"id": "s011", "caption": "Findings: a green square."}\n', encoding="utf-8")
    with Library.open(lib_dir) as lib:
        assert import_captions(lib, tmp_path / "c.jsonl").changed == 1
        samples = {Path(lib.get_case(s.id)["source_path"]).name: s for s in library_samples(lib)}
    assert image_meta(samples["img_011.png"])["caption"] == "Findings: a green square."
    assert "caption" not in image_meta(samples["img_012.png"])


def test_cli_captions_json_and_errors(lib_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "c.jsonl").write_text('{"id": "s013", "caption": "Findings: a circle."}\n{"id": "zz", "caption": "x"}\n',
                                      encoding="utf-8")
    result = runner.invoke(app, ["captions", "--library", str(lib_dir), str(tmp_path / "c.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"file", "entries", "matched", "changed", "unmatched", "unmatched_count", "ambiguous",
                            "ambiguous_count", "invalidated_codes", "models"}
    assert (payload["matched"], payload["changed"], payload["unmatched"]) == (1, 1, ["zz"])
    assert payload["invalidated_codes"] == len(BITS) and len(payload["models"]) == 1
    for args, item in (([str(lib_dir), str(tmp_path / "none.jsonl")], "none.jsonl"),
                       ([str(tmp_path), str(tmp_path / "c.jsonl")], str(tmp_path))):
        result = runner.invoke(app, ["captions", "--library", args[0], args[1], "--json"])
        assert result.exit_code == 2
        error = json.loads(result.stdout)
        assert error["item"].endswith(item) and error["reason"]
