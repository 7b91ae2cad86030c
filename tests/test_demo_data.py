"""The generated demo dataset: real DICOM/PNG files, reproducible, reports that match the images.

The report checks use a few keywords written here on purpose (not the project's labeler), so a
labeler bug cannot hide a generator bug or the other way round.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medhash_app.core.demo import (
    DEMO_QUERIES,
    DEMO_QUERY_LABELS,
    INFO_NAME,
    demo_query_images,
    generate_demo_dataset,
)
from medhash_app.core.errors import DataError, DatasetLayoutError

CHEXPERT = {
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
}
ODIR = {"N", "D", "G", "C", "A", "H", "M", "O"}

# Test-local keywords: a class is stated when one of its words is in a sentence without negation.
CHEST_WORDS = {
    "Cardiomegaly": ("cardiomegaly", "heart is mildly enlarged", "heart is moderately enlarged",
                     "heart is markedly enlarged", "cardiac silhouette is enlarged"),
    "Pleural Effusion": ("effusion",),
    "Pneumothorax": ("pneumothorax",),
    "Lung Opacity": ("opacity",),
    "Consolidation": ("consolidation",),
    "Lung Lesion": ("nodule",),
    "Atelectasis": ("atelectasis",),
    "Edema": ("edema",),
    "Fracture": ("fracture",),
    "Support Devices": ("pacemaker", "catheter", "tube"),
}
FUNDUS_WORDS = {
    "D": ("nonproliferative retinopathy", "non proliferative retinopathy", "diabetic retinopathy"),
    "G": ("glaucoma",), "C": ("cataract",), "A": ("macular degeneration",), "H": ("hypertensive",),
    "M": ("myopia",), "O": ("laser",), "N": ("normal fundus",),
}
NEGATION = re.compile(r"\b(no|not|without|negative|normal)\b")


def stated_chest_labels(report: str) -> set[str]:
    found = set()
    for sentence in re.split(r"(?<=\.)\s+|\n+", report.lower()):
        if NEGATION.search(sentence):
            continue
        found |= {name for name, words in CHEST_WORDS.items() if any(w in sentence for w in words)}
    return found | ({"No Finding"} if not found - {"Support Devices"} else set())


def stated_fundus_labels(report: str) -> set[str]:
    return {code for code, words in FUNDUS_WORDS.items() if any(w in report for w in words)}


def read_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def display_grey(path: Path) -> np.ndarray:
    """Stored pixels -> float grey with bright = dense (MONOCHROME1 inverted), like a viewer shows."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = (2 ** ds.BitsStored - 1) - pixels
    return pixels


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """The default demo dataset, generated once for the module."""
    manifest = generate_demo_dataset(tmp_path_factory.mktemp("demo") / "data")
    return manifest, read_rows(manifest)


def test_manifest_is_the_generic_format(demo: tuple[Path, list[dict]]) -> None:
    manifest, rows = demo
    assert manifest.name == "pairs.jsonl"
    assert Counter(r["domain"] for r in rows) == {"chest": 240, "fundus": 240}
    for row in rows:
        assert list(row)[:8] == ["image", "report", "labels", "patient_id", "view", "study_id", "domain",
                                 "mismatched"]
        assert "split" not in row
        assert not Path(row["image"]).is_absolute() and (manifest.parent / row["image"]).is_file()
        assert row["report"].strip() and row["labels"]
        assert set(row["labels"]) <= (CHEXPERT if row["domain"] == "chest" else ODIR)
    assert len({r["image"] for r in rows}) == len(rows)


def test_trainer_reads_the_manifest(demo: tuple[Path, list[dict]]) -> None:
    from trainer.data.manifest import load_manifest

    samples = load_manifest(demo[0], check_images=True)
    assert len(samples) == 480
    assert samples[0].labels == demo[1][0]["labels"] and samples[0].patient_id == demo[1][0]["patient_id"]


def test_patients_eyes_and_views(demo: tuple[Path, list[dict]]) -> None:
    rows = demo[1]
    fundus = [r for r in rows if r["domain"] == "fundus"]
    by_patient: dict[str, list[dict]] = {}
    for r in fundus:
        by_patient.setdefault(r["patient_id"], []).append(r)
    assert all(sorted(e["eye"] for e in eyes) == ["left", "right"] for eyes in by_patient.values())
    assert all(len({e["study_id"] for e in eyes}) == 1 for eyes in by_patient.values())
    chest = [r for r in rows if r["domain"] == "chest"]
    assert {r["view"] for r in chest} == {"PA", "AP"}
    repeat = [p for p, n in Counter(r["patient_id"] for r in chest).items() if n > 1]
    assert repeat, "some chest patients should have a follow-up study"
    for pid in repeat:  # a follow-up is later, and the same sex
        studies = [r for r in chest if r["patient_id"] == pid]
        assert studies[0]["study_date"] < studies[1]["study_date"]
        assert studies[0]["sex"] == studies[1]["sex"]


def test_dicom_files_are_real_and_consistent(demo: tuple[Path, list[dict]]) -> None:
    manifest, rows = demo
    chest = [r for r in rows if r["domain"] == "chest"]
    photometric, uids = Counter(), set()
    for row in chest:
        ds = pydicom.dcmread(manifest.parent / row["image"], stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPClassUID.name == {"DX": "Digital X-Ray Image Storage - For Presentation",
                                       "CR": "Computed Radiography Image Storage"}[ds.Modality]
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (512, 512, 16, 12, 11)
        assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition == row["view"]
        assert ds.PatientID == row["patient_id"] and ds.Modality == row["modality"]
        assert ds.PatientSex == row["sex"] and ds.PatientAge == f"{row['age']:03d}Y"
        assert ds.StudyDate == row["study_date"].replace("-", "")
        assert float(ds.WindowWidth) > 0
        photometric[ds.PhotometricInterpretation] += 1
        uids |= {ds.SOPInstanceUID, ds.StudyInstanceUID}
    assert len(uids) == 2 * len(chest)
    assert set(photometric) == {"MONOCHROME1", "MONOCHROME2"}
    assert 0.15 <= photometric["MONOCHROME1"] / len(chest) <= 0.4


def test_lungs_are_dark_after_monochrome1_inversion(demo: tuple[Path, list[dict]]) -> None:
    manifest, rows = demo
    checked = Counter()
    for row in [r for r in rows if r["domain"] == "chest"][:60]:
        path = manifest.parent / row["image"]
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
        assert stored.dtype == np.uint16 and stored.max() <= 4095
        grey = display_grey(path)
        lungs = min(grey[128:205, 100:155].mean(), grey[128:205, 357:412].mean())  # the darker lung
        abdomen, heart = grey[470:500, 230:280].mean(), grey[330:360, 240:290].mean()
        assert lungs < abdomen - 600 and lungs < heart - 300, row["image"]
        if ds.PhotometricInterpretation == "MONOCHROME1":  # stored values are inverted: lungs bright
            assert stored[128:205, 100:155].mean() > stored[470:500, 230:280].mean()
        checked[ds.PhotometricInterpretation] += 1
    assert checked["MONOCHROME1"] >= 5 and checked["MONOCHROME2"] >= 5


def test_fundus_images_are_rgb_discs_on_black(demo: tuple[Path, list[dict]]) -> None:
    manifest, rows = demo
    for row in [r for r in rows if r["domain"] == "fundus"][:20]:
        rgb = np.asarray(Image.open(manifest.parent / row["image"]))
        assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
        assert rgb[:12, :12].max() < 20  # black corners outside the circular field
        centre = rgb[96:160, 96:160].reshape(-1, 3).mean(axis=0)
        assert centre[0] > centre[1] > centre[2]  # orange-red retina


def test_reports_state_exactly_the_labels_unless_mismatched(demo: tuple[Path, list[dict]]) -> None:
    rows = demo[1]
    for row in rows:
        stated = (stated_chest_labels if row["domain"] == "chest" else stated_fundus_labels)(row["report"])
        if row["mismatched"]:
            assert stated != set(row["labels"]), row
        else:
            assert stated == set(row["labels"]), row
    chest = [r["report"] for r in rows if r["domain"] == "chest"]
    assert all(r.startswith("FINDINGS: ") and "\n\nIMPRESSION: " in r for r in chest)
    assert any("No pneumothorax or pleural effusion." in r for r in chest)  # explicit negation
    assert any("may represent" in r for r in chest)  # hedged findings
    assert any(re.search(r"\b(left|right)\b.*(effusion|pneumothorax)", r) for r in chest)  # sides


def test_mismatched_fraction_follows_the_rate(demo: tuple[Path, list[dict]], tmp_path: Path) -> None:
    for domain in ("chest", "fundus"):
        flags = [r["mismatched"] for r in demo[1] if r["domain"] == domain]
        assert sum(flags) == round(0.05 * len(flags))
    rows = read_rows(generate_demo_dataset(tmp_path / "a", n_chest=20, n_fundus=20, mismatch_rate=0.25))
    assert sum(r["mismatched"] for r in rows) == 10
    rows = read_rows(generate_demo_dataset(tmp_path / "b", n_chest=12, n_fundus=12, mismatch_rate=0.0))
    assert not any(r["mismatched"] for r in rows)


def test_class_frequencies_are_skewed_and_complete(demo: tuple[Path, list[dict]]) -> None:
    rows = demo[1]
    chest = Counter(lab for r in rows if r["domain"] == "chest" for lab in r["labels"])
    fundus = Counter(lab for r in rows if r["domain"] == "fundus" for lab in r["labels"])
    assert chest.most_common(1)[0][0] == "No Finding" and fundus.most_common(1)[0][0] == "N"
    assert len(chest) >= 8 and set(fundus) == ODIR
    findings = {k: v for k, v in chest.items() if k != "No Finding"}
    assert max(findings.values()) >= 4 * min(findings.values())
    assert max(fundus.values()) >= 8 * min(fundus.values())
    per_image = Counter(len(set(r["labels"]) - {"No Finding"}) for r in rows if r["domain"] == "chest")
    assert set(per_image) == {0, 1, 2}


def _grey32(path: Path) -> np.ndarray:
    pixels = display_grey(path) if path.suffix == ".dcm" else np.asarray(Image.open(path).convert("F"))
    small = np.asarray(Image.fromarray(pixels, "F").resize((32, 32), Image.Resampling.BOX)).ravel()
    return (small - small.mean()) / (small.std() + 1e-6)


@pytest.mark.parametrize(("domain", "positive", "negative", "floor"), [
    ("chest", "Cardiomegaly", "No Finding", 0.7),
    ("fundus", "C", "N", 0.65),
])
def test_findings_are_learnable_from_pixels(demo: tuple[Path, list[dict]], domain: str, positive: str,
                                            negative: str, floor: float) -> None:
    """Nearest class centroid on 32x32 grey pixels beats chance on held-out images."""
    manifest, rows = demo
    rows = [r for r in rows if r["domain"] == domain and r["labels"] in ([positive], [negative])]
    x = np.stack([_grey32(manifest.parent / r["image"]) for r in rows])
    y = np.array([r["labels"] == [positive] for r in rows])
    train = np.arange(len(rows)) % 2 == 0
    centre_pos, centre_neg = x[train & y].mean(axis=0), x[train & ~y].mean(axis=0)
    says_pos = ((x - centre_pos) ** 2).sum(axis=1) < ((x - centre_neg) ** 2).sum(axis=1)
    test = ~train
    balanced = (says_pos[test & y].mean() + (~says_pos[test & ~y]).mean()) / 2
    assert (test & y).sum() >= 4
    assert balanced >= floor, f"balanced accuracy {balanced:.2f}"


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    sizes = {"n_chest": 8, "n_fundus": 6}
    first = generate_demo_dataset(tmp_path / "one", seed=3, **sizes)
    again = generate_demo_dataset(tmp_path / "two", seed=3, **sizes)
    other = generate_demo_dataset(tmp_path / "three", seed=4, **sizes)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    for row in read_rows(first):
        a, b, c = (m.parent / row["image"] for m in (first, again, other))
        assert a.read_bytes() == b.read_bytes(), row["image"]
        if a.suffix == ".dcm":
            assert np.array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(b).pixel_array)
            assert not np.array_equal(pydicom.dcmread(a).pixel_array, pydicom.dcmread(c).pixel_array)
        else:
            assert not np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(c)))


def test_worker_processes_give_identical_files(tmp_path: Path) -> None:
    """Made in two spawned processes or in one: the same bytes, and progress still counts to the end."""
    calls: list[int] = []
    parallel = generate_demo_dataset(tmp_path / "par", n_chest=28, n_fundus=24, seed=5, workers=2,
                                     progress=lambda i, n: calls.append(i))
    serial = generate_demo_dataset(tmp_path / "ser", n_chest=28, n_fundus=24, seed=5)
    assert calls == list(range(1, 53))
    assert parallel.read_bytes() == serial.read_bytes()
    for row in read_rows(serial):
        assert (parallel.parent / row["image"]).read_bytes() == (serial.parent / row["image"]).read_bytes()


def test_query_images_are_held_out(demo: tuple[Path, list[dict]]) -> None:
    manifest, rows = demo
    paths = demo_query_images(manifest.parent)
    assert {p.suffix for p in paths} == {".dcm", ".png"} and len(paths) >= 2
    before = [p.read_bytes() for p in paths]
    assert [p.read_bytes() for p in demo_query_images(manifest.parent)] == before  # reproducible
    in_manifest = {(manifest.parent / r["image"]).read_bytes() for r in rows}
    assert not in_manifest & set(before)
    for path in paths:
        if path.suffix == ".dcm":
            assert pydicom.dcmread(path).pixel_array.shape == (512, 512)
        else:
            assert Image.open(path).size == (256, 256)


def test_demo_queries_name_classes_in_the_data(demo: tuple[Path, list[dict]]) -> None:
    present = {lab for r in demo[1] for lab in r["labels"]}
    assert len(DEMO_QUERIES) >= 3 and all(q.strip() for q in DEMO_QUERIES)
    assert set(DEMO_QUERIES) == set(DEMO_QUERY_LABELS)
    assert all(set(labels) <= present for labels in DEMO_QUERY_LABELS.values())


def test_progress_reports_every_image(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    generate_demo_dataset(tmp_path / "p", n_chest=3, n_fundus=2, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 5) for i in range(1, 6)]


def test_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetLayoutError) as err:
        generate_demo_dataset(folder, n_chest=2, n_fundus=2)
    assert str(folder) in str(err.value)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_regenerating_replaces_an_earlier_demo_run(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    generate_demo_dataset(folder, n_chest=6, n_fundus=4)
    manifest = generate_demo_dataset(folder, n_chest=2, n_fundus=2, seed=1)
    rows = read_rows(manifest)
    assert len(rows) == 4
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.*") if p.name != INFO_NAME) == \
        sorted(["pairs.jsonl", *(r["image"] for r in rows)])
    assert json.loads((folder / INFO_NAME).read_text())["seed"] == 1


@pytest.mark.parametrize("kwargs", [{"n_chest": -1}, {"n_fundus": 2.5}, {"mismatch_rate": 1.5}, {"workers": 0}])
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(DataError) as err:
        generate_demo_dataset(tmp_path / "x", **kwargs)
    assert next(iter(kwargs)) in str(err.value)
    assert not (tmp_path / "x").exists()
