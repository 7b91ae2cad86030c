"""Ingest pipeline: real DICOM and fundus data, manifests, folders, bad input, idempotence, repair,
cancel, progress, read-only and full libraries."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medhash_app.core.errors import DatasetLayoutError, LibraryError
from medhash_app.core.ingest import IngestProgress, content_id, detect_source, ingest
from medhash_app.core.library import Library

PYDICOM_DICOMDIR = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "DICOMDIR"


def make_png(path: Path, seed: int, size: int = 48, color: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if color else (size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def fundus_png(path: Path, size: int = 128) -> Path:
    """A fundus-like photograph: an orange-red disc (brighter optic disc, dark vessels) on black."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    img = np.zeros((size, size, 3), np.uint8)
    inside = r < 0.92
    img[inside] = (190, 80, 30)
    img[np.hypot(yy - size / 2, xx - size * 0.7) < size * 0.08] = (250, 220, 150)
    img[inside & (np.abs(yy - size / 2 - 10 * np.sin(xx / 9)) < 1.5)] = (110, 30, 15)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def sha_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


@pytest.fixture()
def lib(tmp_path: Path):
    with Library.open(tmp_path / "library", create=True) as library:
        yield library


def files_ok(library: Library) -> bool:
    return all((library.folder / c["input_path"]).stat().st_size > 0 and
               (library.folder / c["thumb_path"]).stat().st_size > 0 for c in library.iter_cases())


# --- real data -----------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_real_chest_dicoms(dicom_dir: Path, lib: Library) -> None:
    folder = dicom_dir / "xray_chest"
    report = ingest([folder], lib, workers=2)
    corrupt = folder / "DX_chest_PA_MONO1_Canon_J2K_lossless_CORRUPT_COM_marker.dcm"
    assert report.added == 9 and report.skipped == 0
    assert [p for p, _ in report.failed] == [str(corrupt)]
    assert "damaged" in report.failed[0][1] or "decod" in report.failed[0][1]
    assert lib.count_cases() == 9 and files_ok(lib)
    rows = {Path(c["source_path"]).name: c for c in lib.iter_cases()}
    explicit = rows["CR_chest_MONO1_Philips_RG1_explicitLE.dcm"]
    assert explicit["id"] == sha_id(folder / "CR_chest_MONO1_Philips_RG1_explicitLE.dcm")
    assert (explicit["source_kind"], explicit["modality"], explicit["view"], explicit["domain"]) == \
        ("dicom", "CR", "PA", "chest")
    assert rows["CR_cspine_MONO1_Agfa_16x16_thumb1.dcm"]["domain"] == "other"  # not a chest image
    assert all(c["label_source"] == "none" and c["labels"] == [] for c in rows.values())  # no reports
    header = pydicom.dcmread(folder / "DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm", stop_before_pixels=True)
    nih = rows["DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm"]
    assert nih["patient_key"] == lib.pseudonyms.patient(header.PatientID)
    assert str(header.PatientID) not in json.dumps(list(lib.iter_cases()))  # never the raw ID
    with Image.open(lib.folder / explicit["input_path"]) as png:
        assert (png.format, png.mode, png.size) == ("PNG", "RGB", (256, 256))
    log = lib.ingest_log(report.batch_id)
    assert sorted(e["status"] for e in log) == ["error"] + ["ok"] * 9
    again = ingest([folder], lib, workers=1)
    assert (again.added, again.skipped, len(again.failed)) == (0, 9, 1)
    assert lib.count_cases() == 9


@pytest.mark.shared_data
def test_odir_manifest_slice(odir_dir: Path, lib: Library, tmp_path: Path) -> None:
    lines = (odir_dir / "pairs.jsonl").read_text().splitlines()[:100]
    records = [json.loads(line) for line in lines]
    manifest = tmp_path / "slice.jsonl"  # shared/ is read-only: absolute image paths instead
    manifest.write_text("".join(json.dumps({**r, "image": str(odir_dir / r["image"])}) + "\n" for r in records))
    report = ingest([manifest], lib, workers=1, allowed_roots=[odir_dir])  # rows name files outside tmp_path
    distinct = {sha_id(odir_dir / r["image"]) for r in records}
    # ODIR ships some photographs twice under two file labels (e.g. ..._H.jpg and ..._DH.jpg).
    assert report.added == len(distinct) and report.added + report.skipped == 100 and not report.failed
    assert detect_source(manifest) == "manifest"
    for record in records[:6]:
        case = lib.get_case(sha_id(odir_dir / record["image"]))
        assert case["domain"] == "fundus" and case["source_kind"] == "jpeg"
        assert case["laterality"] == {"left": "L", "right": "R"}[record["eye"]]
        assert (case["age"], case["sex"]) == (record["age"], record["sex"][0])
        assert case["extra"]["file_label"] == record["file_label"]
        assert case["patient_key"] == lib.pseudonyms.patient(record["patient_id"]) != record["patient_id"]
        assert case["report"] == record["report"] and case["label_source"] == "labeler"
    assert lib.get_case(sha_id(odir_dir / "images/0_left_69_Female_C.jpg"))["labels"] == ["C"]
    assert lib.get_case(sha_id(odir_dir / "images/0_right_69_Female_N.jpg"))["labels"] == ["N"]
    cataract = {sha_id(odir_dir / r["image"]) for r in records if "cataract" in r["report"]}
    assert set(lib.fts_match("cataract")) == cataract


def test_dicomdir_follows_referenced_files(lib: Library) -> None:
    if not PYDICOM_DICOMDIR.is_file():
        pytest.skip("pydicom's DICOMDIR test set is not installed")
    assert detect_source(PYDICOM_DICOMDIR.parent) == "dicomdir"
    report = ingest([PYDICOM_DICOMDIR], lib, workers=1)
    fileset = pydicom.fileset.FileSet(pydicom.dcmread(PYDICOM_DICOMDIR))
    expected = {os.path.abspath(i.path) for i in fileset}
    assert report.added == len(expected) == 31 and not report.failed
    assert {c["source_path"] for c in lib.iter_cases()} == expected  # extensionless files, by reference
    assert {c["modality"] for c in lib.iter_cases()} == {"CR", "CT", "MR"}


# --- manifests and folders -----------------------------------------------------------------------

def test_csv_manifest_rows_labels_extra_and_missing_files(tmp_path: Path, lib: Library) -> None:
    for i in range(3):
        make_png(tmp_path / "img" / f"{i}.png", i)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "image,report,labels,patient_id,study_id,view,split,scanner\n"
        "img/0.png,Large right pleural effusion.,Pleural Effusion;Edema,P1,S1,pa,train,A\n"
        'img/1.png,No acute disease.,"[""No Finding""]",P1,S2,AP,test,B\n'
        "img/2.png,Mild cardiomegaly.,,P2,S3,,,\n"
        "img/missing.png,text,,P3,S4,,,\n"
        ",orphan report,,P4,S5,,,\n")
    report = ingest([manifest], lib, workers=1)
    assert report.added == 3
    reasons = dict(report.failed)
    assert reasons[str(tmp_path / "img/missing.png")] == "the file does not exist"
    assert "row 5 has no image" in reasons[str(manifest)]
    first = lib.get_case(sha_id(tmp_path / "img/0.png"))
    assert first["labels"] == ["Pleural Effusion", "Edema"] and first["label_source"] == "dataset"
    extra = dict(first["extra"])  # a PNG's domain comes from the image check, with its confidence
    assert 0 < extra.pop("domain_confidence") <= 1
    assert (first["view"], first["split"], extra) == ("PA", "train", {"scanner": "A"})
    assert first["study_instance_uid"] == lib.pseudonyms.uid("S1")  # a study id is stored as its pseudonym
    assert lib.get_case(sha_id(tmp_path / "img/1.png"))["labels"] == ["No Finding"]
    third = lib.get_case(sha_id(tmp_path / "img/2.png"))
    assert third["label_source"] == "labeler" and "Cardiomegaly" in third["labels"] and third["domain"] == "chest"
    keys = {c["patient_key"] for c in lib.iter_cases()}
    assert keys == {lib.pseudonyms.patient("P1"), lib.pseudonyms.patient("P2")}


def test_manifest_without_image_column_names_column_and_file(tmp_path: Path, lib: Library) -> None:
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("file,report\na.png,clear\n")
    with pytest.raises(DatasetLayoutError, match="'image' column") as err:
        ingest([manifest], lib)
    assert err.value.item == str(manifest)
    assert lib.count_cases() == 0 and lib.ingest_log() == []


def test_jsonl_manifest_bad_line_is_a_layout_error(tmp_path: Path, lib: Library) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png"}\n{not json}\n')
    with pytest.raises(DatasetLayoutError, match="line 2"):
        ingest([manifest], lib)
    assert lib.count_cases() == 0


def test_folder_without_images_is_a_layout_error(tmp_path: Path, lib: Library) -> None:
    empty = tmp_path / "reports_only"
    empty.mkdir()
    (empty / "a.txt").write_text("no image here")
    with pytest.raises(DatasetLayoutError, match="no images found") as err:
        ingest([empty], lib)
    assert err.value.item == str(empty)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        ingest([tmp_path / "nowhere"], lib)


def test_bad_files_are_listed_and_the_rest_is_ingested(tmp_path: Path, lib: Library) -> None:
    folder = tmp_path / "mixed"
    make_png(folder / "good.png", 1)
    (folder / "good.txt").write_text("Normal chest.")
    make_png(folder / "sub" / "good2.png", 2, color=True)
    (folder / "corrupt.png").write_bytes(make_png(tmp_path / "full.png", 3, size=128).read_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG")
    (folder / "fake.dcm").write_text("not DICOM either")
    (folder / "readme.md").write_text("ignored: not an image type")
    report = ingest([folder], lib, workers=1)
    assert report.added == 2
    reasons = {Path(p).name: r for p, r in report.failed}
    assert set(reasons) == {"corrupt.png", "empty.png", "notes.jpg", "fake.dcm"}
    assert "empty" in reasons["empty.png"]
    assert all(reasons.values())
    assert [(Path(e["path"]).name, e["reason"]) for e in lib.ingest_errors(report.batch_id)] == \
        [(Path(p).name, r) for p, r in report.failed]
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["added"] == 2 and [f["path"] for f in as_json["failed"]] == [p for p, _ in report.failed]


@pytest.mark.shared_data
def test_dicom_without_suffix_is_found_by_content(dicom_dir: Path, tmp_path: Path, lib: Library) -> None:
    source = dicom_dir / "xray_chest" / "CR_cspine_MONO1_Agfa_16x16_thumb1.dcm"
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "IM000001").write_bytes(source.read_bytes())
    (folder / "1.2.840.113619.2.5").write_bytes(source.read_bytes()[:128] + b"garbage")  # not DICOM
    report = ingest([folder], lib, workers=1)
    assert report.added == 1 and lib.get_case(sha_id(source))["source_kind"] == "dicom"


# --- reports and labels --------------------------------------------------------------------------

def test_reports_empty_long_foreign_and_json_sidecars(tmp_path: Path, lib: Library) -> None:
    folder = tmp_path / "reports"
    long_report = " ".join(["word"] * 9_999 + ["pneumothorax"])
    sidecars = {"blank": "   \n\t ", "french": "Épanchement pleural droit abondant.",
                "effusion": "There is a large right pleural effusion."}
    for i, (stem, text) in enumerate(sidecars.items()):
        make_png(folder / f"{stem}.png", i)
        (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
    make_png(folder / "long.png", 9)  # dataset labels: the labeler need not read 10,000 words
    (folder / "long.json").write_text(json.dumps({"report": long_report, "labels": ["Pneumothorax"]}))
    make_png(folder / "silent.png", 10)
    make_png(folder / "labelled.png", 11)
    (folder / "labelled.json").write_text(json.dumps({"findings": "Heart is enlarged.", "labels": ["Cardiomegaly"],
                                                      "view": "ap", "site": "north"}))
    report = ingest([folder], lib, workers=1)
    assert report.added == 6 and not report.failed
    case = {stem: lib.get_case(sha_id(folder / f"{stem}.png")) for stem in [*sidecars, "long", "silent", "labelled"]}
    assert case["blank"]["report"] is None and case["blank"]["label_source"] == "none"
    notes = {Path(e["path"]).stem: e["reason"] for e in lib.ingest_log(report.batch_id)}
    assert "empty" in notes["blank"] and notes["effusion"] is None
    assert case["long"]["report"] == long_report and lib.fts_match("pneumothorax") == [case["long"]["id"]]
    assert case["french"]["report"] == sidecars["french"] and lib.fts_match("épanchement") == [case["french"]["id"]]
    assert case["effusion"]["labels"] == ["Pleural Effusion"] and case["effusion"]["label_source"] == "labeler"
    assert case["silent"]["report"] is None and case["silent"]["labels"] == [] and case["silent"]["label_source"] == "none"
    labelled = case["labelled"]
    assert (labelled["report"], labelled["labels"], labelled["label_source"]) == \
        ("FINDINGS: Heart is enlarged.", ["Cardiomegaly"], "dataset")
    extra = dict(labelled["extra"])
    assert 0 < extra.pop("domain_confidence") <= 1  # the image check's guess, with how sure it is
    assert labelled["view"] == "AP" and extra == {"site": "north"}


def test_domain_override_and_colour_detection(tmp_path: Path, lib: Library) -> None:
    make_png(tmp_path / "a" / "grey.png", 1)
    make_png(tmp_path / "a" / "colour.png", 2, color=True)  # colour noise: no fundus photograph
    fundus_png(tmp_path / "a" / "eye.png")
    ingest([tmp_path / "a"], lib, workers=1)
    assert lib.get_case(sha_id(tmp_path / "a/grey.png"))["domain"] == "chest"
    assert lib.get_case(sha_id(tmp_path / "a/colour.png"))["domain"] == "other"
    eye = lib.get_case(sha_id(tmp_path / "a/eye.png"))
    assert eye["domain"] == "fundus" and eye["extra"]["domain_confidence"] >= 0.8
    make_png(tmp_path / "b" / "x.png", 3)
    (tmp_path / "b" / "x.txt").write_text("Large pleural effusion.")
    ingest([tmp_path / "b"], lib, domain="other", workers=1)
    other = lib.get_case(sha_id(tmp_path / "b/x.png"))
    assert (other["domain"], other["labels"], other["label_source"]) == ("other", [], "none")
    with pytest.raises(ValueError, match="domain"):
        ingest([tmp_path / "b"], lib, domain="knee")


# --- re-runs, duplicates, repair, cancel, progress -----------------------------------------------

def _png_folder(folder: Path, count: int) -> Path:
    for i in range(count):
        make_png(folder / f"{i:03d}.png", i)
        (folder / f"{i:03d}.txt").write_text(f"Report {i}: no acute cardiopulmonary process.")
    return folder


def test_rerun_adds_nothing_and_skips_everything(tmp_path: Path, lib: Library) -> None:
    folder = _png_folder(tmp_path / "pngs", 12)
    first = ingest([folder], lib, batch_size=5, workers=1)
    ids = lib.case_ids()
    second = ingest([folder, folder / "003.png"], lib, batch_size=5, workers=1)
    assert (first.added, first.skipped) == (12, 0)
    assert (second.added, second.skipped, second.failed) == (0, 12, [])
    assert lib.case_ids() == ids
    assert {e["reason"] for e in lib.ingest_log(second.batch_id)} == {"already in the library"}


def test_same_content_twice_is_stored_once(tmp_path: Path, lib: Library) -> None:
    make_png(tmp_path / "d" / "a.png", 1)
    (tmp_path / "d" / "copy.png").write_bytes((tmp_path / "d" / "a.png").read_bytes())
    (tmp_path / "d" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "d" / "bad_copy.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = ingest([tmp_path / "d"], lib, workers=1)
    assert (report.added, report.skipped) == (1, 1)
    assert sorted(Path(p).name for p, _ in report.failed) == ["bad.png", "bad_copy.png"]  # both reported


def test_missing_stored_files_are_repaired(tmp_path: Path, lib: Library) -> None:
    folder = _png_folder(tmp_path / "pngs", 3)
    ingest([folder], lib, workers=1)
    case = lib.get_case(sha_id(folder / "001.png"))
    (lib.folder / case["input_path"]).unlink()
    (lib.folder / case["thumb_path"]).write_bytes(b"")
    assert lib.cases_missing_files() == {case["id"]}
    report = ingest([folder], lib, workers=1)
    assert (report.added, report.repaired, report.skipped) == (0, 1, 2)
    assert lib.cases_missing_files() == set() and files_ok(lib)


def test_cancel_stops_between_batches_and_rerun_completes(tmp_path: Path, lib: Library) -> None:
    folder = _png_folder(tmp_path / "pngs", 20)
    cancel = threading.Event()

    def on_progress(event: IngestProgress) -> None:
        if event.done:  # the opening "0 of 20" event comes before any batch
            cancel.set()  # ask to stop as soon as the first batch is reported

    report = ingest([folder], lib, batch_size=4, workers=1, progress=on_progress, cancel=cancel)
    assert report.cancelled and report.added == 4 and lib.count_cases() == 4 and files_ok(lib)
    rest = ingest([folder], lib, batch_size=4, workers=1)
    assert (rest.added, rest.skipped) == (16, 4) and lib.count_cases() == 20


def test_progress_is_throttled_and_ends_complete(tmp_path: Path, lib: Library) -> None:
    folder = _png_folder(tmp_path / "pngs", 30)
    events: list[tuple[float, IngestProgress]] = []
    started = time.monotonic()
    ingest([folder], lib, batch_size=1, workers=1, progress=lambda e: events.append((time.monotonic(), e)))
    elapsed = time.monotonic() - started
    final = events[-1][1]
    assert (final.done, final.total, final.added, final.skipped, final.failed) == (30, 30, 30, 0, 0)
    assert final.files_per_s > 0
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(events[1:-1])]
    assert all(gap >= 0.099 for gap in gaps)  # <= 10 events per second (the opening and final ones are forced)
    assert len(events) <= elapsed * 10 + 3
    assert [e.done for _, e in events] == sorted(e.done for _, e in events)
    assert (events[0][1].done, events[0][1].total) == (0, 30)  # the total shows before the first batch


def test_content_id_with_frame() -> None:
    path = Path(__file__)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert content_id(path) == digest[:32] and content_id(path, 3) == digest[:32] + ":f3"


# --- library failures ----------------------------------------------------------------------------

def test_read_only_library_refuses_ingest(tmp_path: Path) -> None:
    folder = _png_folder(tmp_path / "pngs", 2)
    with Library.open(tmp_path / "lib", create=True):
        pass
    db_bytes = (tmp_path / "lib" / "library.sqlite").read_bytes()
    with Library.open(tmp_path / "lib", read_only=True) as library:
        with pytest.raises(LibraryError, match="read-only"):
            ingest([folder], library)
        assert library.count_cases() == 0
    assert (tmp_path / "lib" / "library.sqlite").read_bytes() == db_bytes
    assert not [p for p in (tmp_path / "lib").rglob("*") if p.is_file() and p.parent.name != "lib"]


def test_disk_full_rolls_back_the_batch(tmp_path: Path, lib: Library) -> None:
    ingest([_png_folder(tmp_path / "first", 3)], lib, workers=1)
    big = tmp_path / "big"
    for i in range(6):
        make_png(big / f"{i}.png", 100 + i)
        (big / f"{i}.txt").write_text(f"case {i} " + "opacity " * 3000)
    pages = lib.db.execute("PRAGMA page_count").fetchone()[0]
    lib.db.execute(f"PRAGMA max_page_count = {pages + 3}")  # SQLite raises SQLITE_FULL for real
    with pytest.raises(LibraryError, match="disk is full") as err:
        ingest([big], lib, workers=1, batch_size=10, domain="other")  # "other": no labeler, faster
    assert err.value.item == str(lib.folder)
    assert lib.count_cases() == 3
    assert {Path(e["path"]).parent.name for e in lib.ingest_log()} == {"first"}
    assert lib.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
