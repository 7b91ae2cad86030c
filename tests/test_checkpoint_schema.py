"""A checkpoint's config.json is input: each hostile value is refused with one line naming the
field, before any model is built."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import trainer.checkpoint as checkpoint_module
from trainer.checkpoint import load_checkpoint, read_checkpoint_config
from trainer.config import ModelConfig
from trainer.errors import CheckpointError, MedHashError


def valid_config() -> dict[str, Any]:
    model = ModelConfig(backbone="tiny", bits=[16, 32], embed_dim=32, label_names=["a", "b"],
                        options={"long_text": None})
    return {"format": 1, "method": "base", "backbone": "tiny", "bits": [16, 32], "label_names": ["a", "b"],
            "metrics": {"val_map": 0.5}, "model_config": model.to_dict()}


def write(folder: Path, config: dict[str, Any] | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config.json").write_text(text, encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"never read: the config is refused first")
    return folder


def model_field(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        config["model_config"][name] = value
    return change


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = {
    "bits text": (model_field("bits", "abc"), "bits"),
    "bits too long": (model_field("bits", [10_000_000]), "bits"),
    "bits not bytes": (model_field("bits", [12]), "bits"),
    "bits empty": (model_field("bits", []), "bits"),
    "bits as booleans": (model_field("bits", [True]), "bits"),
    "embed_dim 1e9": (model_field("embed_dim", 1e9), "embed_dim"),
    "embed_dim negative": (model_field("embed_dim", -4), "embed_dim"),
    "backbone path": (model_field("backbone", "open_clip:../../etc/passwd"), "backbone"),
    "backbone unknown": (model_field("backbone", "timm:resnet50"), "backbone"),
    "backbone hub": (model_field("backbone", "open_clip:hf-hub:someone/model"), "backbone"),
    "method path": (model_field("method", "../base"), "method"),
    "temperature zero": (model_field("temperature", 0), "temperature"),
    "temperature text": (model_field("temperature", "hot"), "temperature"),
    "loss weight huge": (model_field("loss_weights", {"quantization": 1e300}), "loss_weights"),
    "components not bool": (model_field("components", {"contrastive": "yes"}), "components"),
    "label names not text": (model_field("label_names", [{"a": 1}]), "label_names"),
    "text_window huge": (model_field("text_window", 10**9), "text_window"),
    "trainable blocks huge": (model_field("trainable_top_blocks", 10**6), "trainable_top_blocks"),
    "options deep": (model_field("options", {"x": nested(100)}), "nested"),
    "weights_path not text": (model_field("weights_path", 5), "weights_path"),
    "format 999": (lambda c: c.update(format=999), "format"),
    "format missing": (lambda c: c.pop("format"), "format"),
    "format text": (lambda c: c.update(format="1"), "format"),
    "model_config a list": (lambda c: c.update(model_config=[1]), "model_config"),
    "metrics a list": (lambda c: c.update(metrics=[1, 2]), "metrics"),
}


@pytest.fixture()
def no_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a model was built from a configuration that should have been refused")

    monkeypatch.setattr(checkpoint_module, "build_model", refuse)


def test_a_valid_configuration_reads(tmp_path: Path) -> None:
    config = read_checkpoint_config(write(tmp_path / "ok", valid_config()))
    assert config["model_config"]["bits"] == [16, 32]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_value_is_refused_naming_its_field(case: str, tmp_path: Path, no_build: None) -> None:
    change, field = HOSTILE[case]
    config = valid_config()
    change(config)
    folder = write(tmp_path / "ckpt", config)
    for read in (read_checkpoint_config, load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            read(folder)
        assert err.value.item == str(folder)
        assert field in err.value.reason and "\n" not in err.value.reason, err.value.reason


def test_json_nested_past_the_recursion_limit_is_refused(tmp_path: Path, no_build: None) -> None:
    deep = "[" * 200_000 + "]" * 200_000
    folder = write(tmp_path / "ckpt", '{"format": 1, "model_config": {"options": {"x": ' + deep + "}}}")
    with pytest.raises(CheckpointError, match="nested"):
        load_checkpoint(folder)


def test_a_config_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    folder = write(tmp_path / "ckpt", valid_config())
    (folder / "config.json").write_bytes(b'{"format": 1, "x": "\xff"}')
    with pytest.raises(CheckpointError, match="config.json"):
        read_checkpoint_config(folder)


def test_an_oversize_config_is_refused_unread(tmp_path: Path) -> None:
    from trainer.config_schema import MAX_CONFIG_BYTES

    folder = write(tmp_path / "ckpt", valid_config())
    with open(folder / "config.json", "r+b") as handle:
        handle.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(CheckpointError, match="larger than"):
        read_checkpoint_config(folder)


@pytest.mark.parametrize(("field", "value"), [("bits", "abc"), ("bits", [10_000_000]), ("embed_dim", 1e9),
                                              ("backbone", "open_clip:../../etc/passwd")])
def test_model_config_from_dict_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(MedHashError) as err:
        ModelConfig.from_dict({**ModelConfig(backbone="tiny").to_dict(), field: value})
    assert field in err.value.reason


def test_open_clip_architecture_names_are_accepted() -> None:
    for arch in ("ViT-B-16", "ViT-L-14-336", "ViT-SO400M-14-SigLIP-384", "convnext_base_w", "RN50x4"):
        assert ModelConfig.from_dict({"backbone": f"open_clip:{arch}"}).backbone == f"open_clip:{arch}"


def test_registering_a_hostile_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    from medhash_app.core.errors import ModelError
    from medhash_app.core.session import MedHashSession

    config = valid_config()
    config["model_config"]["embed_dim"] = 1e9
    folder = write(tmp_path / "ckpt", config)
    with MedHashSession(tmp_path / "lib", create=True, device="cpu") as session, \
            pytest.raises(ModelError, match="embed_dim"):
        session.register_checkpoint(folder)
