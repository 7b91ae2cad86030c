"""Manifest reading, splits, noise injection and the image dataset."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.data.dataset import make_loader, read_rgb
from trainer.data.manifest import Sample, load_manifest
from trainer.data.noise import NoiseRecord, apply_noise, inject_noise
from trainer.data.splits import load_splits, make_splits, save_splits
from trainer.data.transforms import Letterbox, eval_transform
from trainer.errors import DataError
from trainer.models.tiny import WordHashTokenizer


def _samples(n: int, per_patient: int | None = 2) -> list[Sample]:
    return [
        Sample(id=f"s{i}", image_path=f"/nowhere/{i}.png", report=f"report {i}", labels=[f"c{i % 3}"],
               patient_id=None if per_patient is None else f"p{i // per_patient}")
        for i in range(n)
    ]


# ---- manifest ------------------------------------------------------------------------------------
def test_jsonl_and_csv_manifests(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        '{"image": "img/1.png", "report": "clear lungs", "labels": ["No Finding"], "patient_id": 7, "split": "x"}\n'
        "\n"
        '{"id": "two", "image": "/abs/2.png", "report": "effusion", "labels": "Effusion|Edema"}\n'
    )
    a = load_manifest(tmp_path / "a.jsonl")
    assert [s.id for s in a] == ["img/1.png", "two"]
    assert a[0].image_path == str(tmp_path / "img/1.png") and a[1].image_path == "/abs/2.png"
    assert a[0].patient_id == "7" and a[1].patient_id is None
    assert a[0].metadata == {"split": "x"} and a[1].labels == ["Effusion", "Edema"]
    (tmp_path / "b.csv").write_text("image,report,labels\nx.png,\"cataract, left\",C;N\ny.png,normal,\n")
    b = load_manifest(tmp_path / "b.csv", label_fn=lambda s: ["derived:" + s.report])
    assert b[0].report == "cataract, left" and b[0].labels == ["C", "N"]
    assert b[1].labels == ["derived:normal"]  # label_fn only where labels are missing


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"report": "x"}\n', "missing 'image'"),
        ('{"image": "a.png"}\n', "missing 'report'"),
        ('{"image": "a.png", "report": "x"}\n{"image": "a.png", "report": "y"}\n', "duplicate id"),
        ("{not json\n", "not valid JSON"),
    ],
)
def test_bad_manifest_lines_are_named(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=needle) as info:
        load_manifest(path)
    assert str(path) in str(info.value)


def test_odir_manifest_with_label_callback(odir_dir: Path) -> None:
    samples = load_manifest(odir_dir / "pairs.jsonl", label_fn=lambda s: [s.metadata["file_label"]], check_images=True)
    assert len(samples) == 3199 and all(len(s.labels) == 1 for s in samples)
    assert len({s.patient_id for s in samples}) == 1627
    assert read_rgb(samples[0].image_path).size == (256, 256)


# ---- splits --------------------------------------------------------------------------------------
def _check_protocol(splits) -> None:
    ids = splits.ids()
    q, r, t, v = (set(ids[p]) for p in ("query", "retrieval", "train", "val"))
    assert not q & r and t <= r and v <= r and not t & v and not v & q


def test_splits_are_disjoint_patient_disjoint_and_seeded() -> None:
    samples = _samples(201, per_patient=3)  # 67 patients of 3: the sizes are reachable exactly
    sizes = {"query": 30, "retrieval": 150, "train": 90, "val": 30}
    a = make_splits(samples, sizes=sizes, seed=5)
    _check_protocol(a)
    assert a.counts() == sizes
    patients = {part: {s.patient_id for s in getattr(a, part)} for part in ("query", "retrieval", "train", "val")}
    assert not patients["query"] & patients["retrieval"] and not patients["train"] & patients["val"]
    assert make_splits(samples, sizes=sizes, seed=5).ids() == a.ids()
    assert make_splits(samples, sizes=sizes, seed=6).ids() != a.ids()


def test_fraction_splits_without_patients(tmp_path: Path) -> None:
    samples = _samples(100, per_patient=None)
    s = make_splits(samples, fractions={"query": 0.2, "val": 0.1, "train": 0.7}, seed=0)
    _check_protocol(s)
    assert s.counts() == {"query": 20, "retrieval": 80, "train": 70, "val": 10}
    save_splits(s, tmp_path / "splits.json")
    assert load_splits(tmp_path / "splits.json", samples).ids() == s.ids()
    with pytest.raises(DataError, match="not in the samples"):
        load_splits(tmp_path / "splits.json", samples[:50])
    with pytest.raises(DataError, match="exceed retrieval"):
        make_splits(samples, sizes={"query": 50, "train": 40, "val": 20})


# ---- noise ---------------------------------------------------------------------------------------
def test_noise_is_exact_deranged_and_repeatable(tmp_path: Path) -> None:
    samples = _samples(50)
    noisy, record = inject_noise(samples, 0.2, seed=3)
    changed = [i for i, (a, b) in enumerate(zip(samples, noisy, strict=True)) if a.report != b.report]
    assert len(changed) == 10 and sorted(changed) == sorted(record.indices)  # every chosen pair changed
    assert Counter(s.report for s in noisy) == Counter(s.report for s in samples)  # reports only moved
    assert all(noisy[i].labels == samples[i].labels and noisy[i].image_path == samples[i].image_path for i in changed)
    assert all(noisy[i].metadata["report_from"] != samples[i].id for i in changed)
    assert samples[changed[0]].report == f"report {changed[0]}"  # originals untouched
    record.save(tmp_path / "noise.json")
    again = apply_noise(samples, NoiseRecord.load(tmp_path / "noise.json"))
    assert [s.report for s in again] == [s.report for s in noisy]
    assert inject_noise(samples, 0.2, seed=3)[1] == record and inject_noise(samples, 0.2, seed=4)[1] != record
    assert inject_noise(samples, 0.0, seed=3)[1].indices == []
    with pytest.raises(DataError, match="different sample list"):
        apply_noise(samples[1:], record)


# ---- dataset / transforms ------------------------------------------------------------------------
def test_letterbox_keeps_aspect_and_pads() -> None:
    img = Image.new("RGB", (200, 100), (255, 255, 255))
    out = Letterbox(64)(img)
    assert out.size == (64, 64)
    assert out.getpixel((32, 2)) == (0, 0, 0) and out.getpixel((32, 32)) == (255, 255, 255)
    t = eval_transform(64)(img)
    assert t.shape == (3, 64, 64) and float(t.max()) == 1.0 and float(t.min()) == -1.0


def test_loader_reads_images_and_names_missing_files(tmp_path: Path) -> None:
    Image.new("RGB", (32, 48), (10, 200, 30)).save(tmp_path / "a.png")
    good = Sample("a", str(tmp_path / "a.png"), "small green dot", ["x"])
    loader = make_loader([good, good], eval_transform(64), WordHashTokenizer(), ["x", "y"], batch_size=2)
    batch = next(iter(loader))
    assert batch.images.shape == (2, 3, 64, 64) and batch.labels.tolist() == [[1.0, 0.0]] * 2
    assert batch.tokens["input_ids"].shape == (2, 4) and torch.equal(batch.index, torch.tensor([0, 1]))
    bad = Sample("b", str(tmp_path / "gone.png"), "r", [])
    with pytest.raises(DataError, match="gone.png"):
        next(iter(make_loader([bad], eval_transform(64), WordHashTokenizer(), [], batch_size=1)))
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        read_rgb(str(tmp_path / "junk.png"))


def test_splits_json_is_ids_only(tmp_path: Path) -> None:
    s = make_splits(_samples(20), fractions={"query": 0.2, "val": 0.2, "train": 0.6})
    save_splits(s, tmp_path / "s.json")
    data = json.loads((tmp_path / "s.json").read_text())
    assert set(data) == {"seed", "counts", "query", "retrieval", "train", "val"}
    assert all(isinstance(i, str) for i in data["query"])
