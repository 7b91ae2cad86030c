"""Captions for MCPH: the captions file, image-side meta, the finding sentences, the CheXagent script."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from trainer.data.captions import (
    NO_FINDINGS_SENTENCE,
    BuiltinCaptioner,
    caption_for,
    captions_from_meta,
    image_meta,
    load_captions,
    render_findings,
    save_captions,
)
from trainer.data.dataset import make_loader
from trainer.data.manifest import Sample
from trainer.data.transforms import eval_transform
from trainer.errors import DataError, MedHashError
from trainer.models.tiny import WordHashTokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "chexagent_captions.py"


def _script():
    spec = importlib.util.spec_from_file_location("chexagent_captions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ---- captions file ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_captions_file_round_trip(tmp_path: Path, suffix: str) -> None:
    rows = [{"id": "a1", "caption": "Findings: cardiomegaly."},
            {"id": "b2", "caption": 'Clear lungs, "normal" heart, no effusion.'}]
    path = save_captions(tmp_path / f"caps{suffix}", rows)
    assert load_captions(path) == {"a1": rows[0]["caption"], "b2": rows[1]["caption"]}


def test_captions_by_image_path_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    path = save_captions(tmp_path / "caps.jsonl", [{"image": "imgs/x.png", "caption": "No acute findings."}])
    caps = load_captions(path)
    sample = Sample(id="other-id", image_path=str(tmp_path / "imgs" / "x.png"), report="r")
    assert caption_for(sample, caps) == "No acute findings."
    assert caption_for(Sample(id="z", image_path=str(tmp_path / "y.png"), report="r"), caps) is None


def test_captions_file_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "caption": "x"}\n{"id": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2.*no caption"):
        load_captions(bad)
    clash = tmp_path / "clash.jsonl"
    clash.write_text('{"id": "a", "caption": "x"}\n{"id": "a", "caption": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="different caption"):
        load_captions(clash)
    nokey = tmp_path / "nokey.csv"
    nokey.write_text("name,caption\na,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="'id' or 'image' column"):
        load_captions(nokey)
    with pytest.raises(DataError, match="not found"):
        load_captions(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=".jsonl or .csv"):
        save_captions(tmp_path / "caps.txt", [])


# ---- image-side meta ------------------------------------------------------------------------------------
def test_image_meta_never_carries_the_report(tmp_path: Path) -> None:
    sample = Sample(id="s1", image_path=str(tmp_path / "x.png"), report="Large right pleural effusion.",
                    metadata={"age": 61, "sex": "F", "view": "PA", "findings": "effusion", "impression": "bad",
                              "report": "Large right pleural effusion."})
    meta = image_meta(sample, {"s1": "Findings: pleural effusion."})
    assert meta == {"age": 61, "sex": "F", "view": "PA", "caption": "Findings: pleural effusion."}
    assert image_meta(sample) == {"age": 61, "sex": "F", "view": "PA"}
    own = Sample(id="s2", image_path="y.png", report="r", metadata={"caption": " From the manifest. "})
    assert image_meta(own)["caption"] == "From the manifest."
    assert captions_from_meta([meta, {}, None], 3) == ["Findings: pleural effusion.", None, None]
    assert captions_from_meta(None, 2) == [None, None]


def test_loader_puts_image_meta_in_batch_extras(tmp_path: Path) -> None:
    from PIL import Image

    samples = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(path)
        samples.append(Sample(id=f"s{i}", image_path=str(path), report=f"report {i}", labels=["a"],
                              metadata={"sex": "M", "impression": f"report {i}"}))
    loader = make_loader(samples, eval_transform(16), WordHashTokenizer(), ["a"], batch_size=3,
                         captions={"s0": "Findings: a.", "s2": "No acute findings."})
    batch = next(iter(loader))
    assert batch.extras["meta"] == [{"sex": "M", "caption": "Findings: a."}, {"sex": "M"},
                                    {"sex": "M", "caption": "No acute findings."}]


# ---- built-in captioner sentences ----------------------------------------------------------------------------
def test_render_findings() -> None:
    assert render_findings(["Cardiomegaly", "Pleural Effusion"]) == "Findings: cardiomegaly, pleural effusion."
    assert render_findings([]) == NO_FINDINGS_SENTENCE
    assert render_findings(["No Finding"]) == NO_FINDINGS_SENTENCE
    assert render_findings(["N", "G"]) == "Findings: glaucoma."  # ODIR codes read as their names


def test_captioner_sentence_follows_its_logits() -> None:
    cap = BuiltinCaptioner(4, ["No Finding", "Cardiomegaly", "Edema"])
    last = cap.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-5.0, 5.0, -5.0]))
        assert cap.sentences(torch.randn(2, 4)) == ["Findings: cardiomegaly."] * 2
        last.bias.copy_(torch.tensor([5.0, -5.0, -5.0]))
        assert cap.sentences(torch.randn(1, 4)) == [NO_FINDINGS_SENTENCE]


# ---- the CheXagent script (cannot run CheXagent here: file handling and errors) ------------------------------
def test_chexagent_script_refuses_a_missing_weights_folder(tmp_path: Path, capsys) -> None:
    script = _script()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "x.png", "report": "r"}) + "\n", encoding="utf-8")
    code = script.main(["--weights", str(tmp_path / "nowhere"), "--manifest", str(manifest),
                        "--out", str(tmp_path / "caps.jsonl")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "weights folder not found" in err
    assert not (tmp_path / "caps.jsonl").exists()


def test_chexagent_script_names_what_is_incomplete(tmp_path: Path) -> None:
    check = _script().check_weights_folder
    folder = tmp_path / "chexagent"
    folder.mkdir()
    with pytest.raises(MedHashError, match="config.json is missing"):
        check(folder)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(MedHashError, match="no weights file"):
        check(folder)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"x")
    with pytest.raises(MedHashError, match="1 shard.*00002"):
        check(folder)
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"x")
    with pytest.raises(MedHashError, match="processor/tokenizer"):
        check(folder)
    (folder / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    assert check(folder) == folder


def test_chexagent_loading_is_local_only(tmp_path: Path) -> None:
    """A complete-looking folder with a bogus config fails with a clear error, without any download."""
    script = _script()
    folder = tmp_path / "bogus"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "not-a-real-model"}), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"x")
    (folder / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    script.check_weights_folder(folder)
    with pytest.raises(MedHashError, match="cannot load CheXagent"):
        script.load_chexagent(folder, "cpu", "float32")
    assert "local_files_only" in SCRIPT.read_text(encoding="utf-8")


def test_chexagent_captions_file_handling(tmp_path: Path) -> None:
    from PIL import Image

    script = _script()
    lines = []
    for i in range(3):
        Image.new("L", (8, 8), 30 * i).save(tmp_path / f"img{i}.png")
        lines.append(json.dumps({"id": f"c{i}", "image": f"img{i}.png", "report": f"secret report {i}"}))
    lines.append(json.dumps({"id": "broken", "image": "missing.png", "report": "r"}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    inputs = script.list_inputs(manifest=manifest)
    seen: list[Path] = []

    def fake_chexagent(path: Path) -> str:  # the 8B model is the system edge; it only ever gets a path
        seen.append(path)
        if not path.is_file():
            raise DataError(path, "image file not found")
        return f"  caption of\n {path.name} "

    out = tmp_path / "out" / "caps.csv"
    assert list(script.caption_all(inputs[:2], out, fake_chexagent)) == ["c0", "c1"]
    assert list(script.caption_all(inputs, out, fake_chexagent)) == ["c2"]  # resumes; the broken one is skipped
    assert [p.name for p in seen] == ["img0.png", "img1.png", "img2.png", "missing.png"]
    assert load_captions(out) == {f"c{i}": f"caption of img{i}.png" for i in range(3)}
    folder_inputs = script.list_inputs(images=tmp_path)
    assert [k for k, _, _ in folder_inputs] == ["image"] * 3
    assert folder_inputs[0][1] == str((tmp_path / "img0.png").resolve())
