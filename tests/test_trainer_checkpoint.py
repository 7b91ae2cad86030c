"""Checkpoint folders: exact round trip, atomic replacement, and a clear CheckpointError per failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from trainer.config import ModelConfig
from trainer.errors import CheckpointError
from trainer.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: no thread hand-offs


@pytest.fixture()
def saved(tmp_path: Path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny", bits=[16, 64], embed_dim=32, label_names=["a", "b"])).eval()
    folder = save_checkpoint(tmp_path / "ckpt", model, meta={"metrics": {"val_map": 0.5}, "training_data_hash": "abc"})
    return model, folder


def test_round_trip_gives_identical_codes(saved) -> None:
    model, folder = saved
    loaded, cfg, meta = load_checkpoint(folder, require_bits=64)
    assert cfg == model.cfg and not loaded.training
    assert meta["method"] == "base" and meta["bits"] == [16, 64] and meta["label_names"] == ["a", "b"]
    assert meta["metrics"] == {"val_map": 0.5} and meta["training_data_hash"] == "abc"
    assert meta["preprocessing"]["image_size"] == 64 and "torch" in meta["versions"] and meta["created"]
    images = torch.randn(3, 3, 64, 64)
    tok = model.backbone.tokenize(["pleural effusion", "no acute disease", "a"])
    with torch.no_grad():
        for a, b in ((model.encode_image(images), loaded.encode_image(images)),
                     (model.encode_text(tok), loaded.encode_text(tok))):
            assert all(torch.equal(a[k], b[k]) for k in (16, 64))


def test_save_replaces_atomically_and_leaves_no_temp_folders(saved, tmp_path: Path) -> None:
    model, folder = saved
    with torch.no_grad():
        model.image_hash.layers["16"].bias.add_(1.0)
    save_checkpoint(folder, model, meta={"metrics": {"val_map": 0.7}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    loaded, _, meta = load_checkpoint(folder)
    assert meta["metrics"]["val_map"] == 0.7
    assert torch.equal(loaded.image_hash.layers["16"].bias, model.image_hash.layers["16"].bias)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="folder not found") as info:
        load_checkpoint(tmp_path / "nope")
    assert info.value.item == str(tmp_path / "nope")


def test_missing_and_truncated_weights(saved) -> None:
    _, folder = saved
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(folder)
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(folder)
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(folder)


def test_other_bits_than_requested(saved) -> None:
    _, folder = saved
    with pytest.raises(CheckpointError, match=r"not \[32\]"):
        load_checkpoint(folder, require_bits=[16, 32])


def test_unknown_method_and_bad_config(saved) -> None:
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config["model_config"]["method"] = "no-such-method"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown method 'no-such-method'"):
        load_checkpoint(folder)
    (folder / "config.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match="config.json is unreadable"):
        read_checkpoint_config(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(folder)


def test_weights_that_do_not_match_the_config(saved) -> None:
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config["model_config"]["embed_dim"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match its configuration"):
        load_checkpoint(folder)
