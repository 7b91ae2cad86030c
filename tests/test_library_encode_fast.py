"""Library encoding at the tower's speed (issue 14): codes and embeddings of an item come from ONE
tower pass (`encode_embed_image` / `encode_embed_text`), equal to what the two separate calls
gave; a library encoded by the fast path stores the same codes as encoding its images one by
one, on real ODIR-5K photos; progress moves with every tower batch; the training's encode events
carry the encode's own time left."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medhash_app.core.encoder import library_encoding
from medhash_app.core.encoder.library_encoding import case_image_meta
from medhash_app.core.encoder.stem_features import store_path
from medhash_app.core.ingest import ingest
from medhash_app.core.session import MedHashSession
from medhash_app.core.training import TrainRequest, train_on_library
from tests.trainer_synth import make_samples
from trainer.checkpoint import save_checkpoint
from trainer.config import ModelConfig
from trainer.models import available_methods, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: no thread hand-offs

BITS = [16, 32]
SMALL = {"mcph": {"token_tower_dim": 64, "lta_dim": 64, "captioner_hidden": 32}}


def _model(method: str) -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(method=method, backbone="tiny", bits=BITS, embed_dim=32, label_names=["a", "b"],
                      options=SMALL.get(method, {}))
    return build_model(cfg).eval()


def _tower_runs(module: nn.Module, call) -> tuple[int, object]:
    """How often `module` (the first layer of a tower) ran during `call()`, and what it returned."""
    seen: list[int] = []
    handle = module.register_forward_pre_hook(lambda *_: seen.append(1))
    try:
        out = call()
    finally:
        handle.remove()
    return len(seen), out


@pytest.mark.parametrize("method", available_methods())
def test_codes_and_embedding_come_from_one_tower_pass(method: str) -> None:
    model = _model(method)
    bb = model.backbone
    torch.manual_seed(1)
    images = torch.randn(3, 3, 64, 64)
    tokens = bb.tokenize(["cataract", "normal fundus", "mild nonproliferative retinopathy"])
    meta = [{"age": 60, "caption": "a fundus photograph"}, {}, {"sex": "F"}]
    with torch.inference_mode():
        one_image, codes = _tower_runs(bb.stem, lambda: model.encode_image(images, meta))
        one_text, t_codes = _tower_runs(bb.tok_emb, lambda: model.encode_text(tokens))
        emb, t_emb = model.embed_image(images, meta), model.embed_text(tokens)
        image_runs, (fast, fast_emb) = _tower_runs(bb.stem, lambda: model.encode_embed_image(images, meta))
        text_runs, (t_fast, t_fast_emb) = _tower_runs(bb.tok_emb, lambda: model.encode_embed_text(tokens))
    assert one_image >= 1 and one_text >= 1
    assert (image_runs, text_runs) == (one_image, one_text)  # the old path ran each tower twice
    for got, ref in ((fast, codes), (t_fast, t_codes)):
        assert set(got) == set(BITS) and all(torch.equal(got[b], ref[b]) for b in BITS)
    assert torch.equal(fast_emb, emb) and torch.equal(t_fast_emb, t_emb)


@pytest.fixture(scope="module")
def odir_library(odir_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """70 real ODIR-5K photos with their keyword reports (duplicates among them, as in the full set) and
    a BASE checkpoint on the tiny backbone, registered; nothing encoded yet."""
    root = tmp_path_factory.mktemp("odir-encode")
    src = root / "src"
    src.mkdir()
    rows = [json.loads(line) for line in (odir_dir / "pairs.jsonl").read_text().splitlines()[:70]]
    for row in rows:
        shutil.copy(odir_dir / row["image"], src / Path(row["image"]).name)
        row["image"] = Path(row["image"]).name
    (src / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    save_checkpoint(root / "ckpt", _model("base"))
    with MedHashSession(root / "library", create=True, device="cpu") as session:
        assert ingest([src / "pairs.jsonl"], session.library, workers=1).added >= 50  # byte-identical photos are skipped
        session.register_checkpoint(root / "ckpt")
    return root / "library"


@pytest.mark.shared_data
def test_library_codes_equal_one_by_one_encoding_on_real_photos(odir_library: Path, tmp_path: Path) -> None:
    lib_dir = Path(shutil.copytree(odir_library, tmp_path / "library"))
    with MedHashSession(lib_dir, device="cpu") as session:
        model = session.active_model()
        n_cases = len(session.library.case_ids())
        assert session.encode_library() == n_cases
        encoder = session.encoders.get(model)
        lib = session.library
        for modality in ("image", "text"):
            ids, _ = lib.get_codes(model["id"], modality, max(BITS))
            assert len(ids) == n_cases
        stored = {(m, b): dict(zip(*lib.get_codes(model["id"], m, b), strict=True))
                  for m in ("image", "text") for b in BITS}
        for case in lib.get_cases(lib.case_ids()):
            with Image.open(lib.path_of(case["input_path"])) as im:
                alone = encoder.encode_pil([im.convert("RGB")], meta=[case_image_meta(case)])
            text_alone = encoder.encode_texts([case["report"]])
            for bits in BITS:
                assert np.array_equal(stored["image", bits][case["id"]], alone.codes[bits][0]), case["id"]
                assert np.array_equal(stored["text", bits][case["id"]], text_alone.codes[bits][0]), case["id"]
    assert store_path(lib_dir, model["id"]).is_file()  # the out-of-domain features were kept too


@pytest.mark.shared_data
def test_progress_moves_with_every_tower_batch(odir_library: Path, tmp_path: Path, monkeypatch) -> None:
    """The bar moves after each encoder batch (32 cases; ~9 s on the busy 2-core box), not after a
    library batch of two tower batches plus the reports' second pass."""
    monkeypatch.setattr(library_encoding, "PROGRESS_INTERVAL_S", 0.0, raising=False)  # the throttle: GPUs
    lib_dir = Path(shutil.copytree(odir_library, tmp_path / "library"))
    seen: list[tuple[int, int]] = []
    with MedHashSession(lib_dir, device="cpu") as session:
        n = len(session.library.case_ids())
        batch = session.encoders.get(session.active_model()).batch_size
        session.encode_library(progress=lambda done, total: seen.append((done, total)))
    assert [d for d, _ in seen] == [*range(0, n, batch), n] and {t for _, t in seen} == {n}


def test_training_reports_the_encode_with_its_own_eta(tmp_path: Path) -> None:
    """The window's trainer tab shows `eta_s`: encode events carry the encode's own estimate (they had
    none, so the training's last one, 0 s, stood through the whole encode)."""
    src = tmp_path / "src"
    samples = make_samples(src, n=40, seed=0)
    rows = [{"image": Path(s.image_path).name, "report": s.report, "labels": s.labels, "patient_id": s.patient_id}
            for s in samples]
    (src / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    events: list[dict] = []
    with MedHashSession(tmp_path / "library", create=True, device="cpu") as session:
        ingest([src / "manifest.jsonl"], session.library, workers=1)
        train_on_library(session, TrainRequest(method="base", bits=BITS, epochs=1, backbone="tiny", device="cpu"),
                         progress=events.append)
    encode = [e for e in events if e["event"] == "encode" and e.get("done")]
    assert encode and encode[-1]["done"] == encode[-1]["total"] == 40
    assert all(isinstance(e["eta_s"], float) and e["eta_s"] >= 0 for e in encode) and encode[-1]["eta_s"] == 0
