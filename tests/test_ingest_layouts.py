"""Dataset layouts (IU X-ray in both published forms, MIMIC-CXR-JPG, ODIR-5K) on small synthetic
replicas: generated images, but the real file names, folder structure, XML and CSV headers."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medhash_app.core.errors import DatasetLayoutError
from medhash_app.core.ingest import detect_source, ingest
from medhash_app.core.library import Library


def make_image(path: Path, seed: int, color: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3) if color else (40, 40), dtype=np.uint8)).save(path)
    return path


def sha_id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


def write_csv(path: Path, header: list[str], rows: list[list[object]], gz: bool = False) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path.write_bytes(gzip.compress(buffer.getvalue().encode()))
    else:
        path.write_text(buffer.getvalue())
    return path


@pytest.fixture()
def lib(tmp_path: Path):
    with Library.open(tmp_path / "library", create=True) as library:
        yield library


# --- IU X-ray: NLM's ecgen-radiology XML ---------------------------------------------------------

ECGEN_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="{uid}"/>
   <pmcId id="{n}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{n}"/>
   <licenseType>open-access</licenseType>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
      <Article PubModel="Electronic">
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
         <Abstract>
            <AbstractText Label="COMPARISON">None.</AbstractText>
            <AbstractText Label="INDICATION">{indication}</AbstractText>
            <AbstractText Label="FINDINGS">{findings}</AbstractText>
            <AbstractText Label="IMPRESSION">{impression}</AbstractText>
         </Abstract>
         <Language>eng</Language>
      </Article>
   </MedlineCitation>
   <MeSH>
      {mesh}
   </MeSH>
   {images}
</eCitation>
"""
PARENT_IMAGE = """<parentImage id="{image_id}">
      <figureId>F1</figureId>
      <caption>Xray Chest PA and Lateral</caption>
      <panel type="single">
         <url>/hadoop/storage/radiology/extract/{image_id}.jpg</url>
         <imgModality>7</imgModality>
         <region type="roi"/>
      </panel>
   </parentImage>"""


def iu_xml_layout(root: Path) -> dict[str, Path]:
    studies = [
        ("CXR1", 1, "Positive TB test", ("The cardiac silhouette and mediastinum size are within normal limits. "
                                         "There is no pulmonary edema. There is no focal consolidation. "
                                         "There is no pneumothorax."),
         "Normal chest x-XXXX.", ["normal"], ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
        ("CXR2", 2, "XXXX-year-old male, chest pain.", "Large right pleural effusion. The heart is enlarged.",
         "Cardiomegaly and right effusion.", ["Pleural Effusion/right/large", "Cardiomegaly"],
         ["CXR2_1_IM-0652-1001", "CXR2_1_IM-0652-2001"]),
    ]
    pngs: dict[str, Path] = {}
    for uid, n, indication, findings, impression, mesh, images in studies:
        xml = ECGEN_XML.format(uid=uid, n=n, indication=indication, findings=findings, impression=impression,
                               mesh="\n".join(f"<major>{m}</major>" for m in mesh),
                               images="\n".join(PARENT_IMAGE.format(image_id=i) for i in images))
        (root / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
        (root / "ecgen-radiology" / f"{n}.xml").write_text(xml)
        for k, image_id in enumerate(images):
            if image_id != "CXR2_1_IM-0652-2001":  # listed in the report, missing on disk
                pngs[image_id] = make_image(root / "NLMCXR_png" / f"{image_id}.png", 10 * n + k)
    return pngs


def test_iu_xray_xml_layout(tmp_path: Path, lib: Library) -> None:
    root = tmp_path / "iu"
    pngs = iu_xml_layout(root)
    assert detect_source(root) == "iu_xray"
    report = ingest([root], lib, workers=1)
    assert report.added == 3
    assert [(Path(p).name, "not in the folder" in r) for p, r in report.failed] == [("CXR2_1_IM-0652-2001.png", True)]
    normal = lib.get_case(sha_id(pngs["CXR1_1_IM-0001-3001"]))
    assert normal["report"].startswith("FINDINGS: The cardiac silhouette") and "\nIMPRESSION: Normal chest" in normal["report"]
    assert (normal["domain"], normal["label_source"], normal["labels"]) == ("chest", "labeler", ["No Finding"])
    assert normal["study_instance_uid"] == lib.pseudonyms.uid("CXR1") and normal["extra"]["mesh"] == ["normal"]
    assert normal["extra"]["indication"] == "Positive TB test"
    effusion = lib.get_case(sha_id(pngs["CXR2_1_IM-0652-1001"]))
    assert {"Pleural Effusion", "Cardiomegaly"} <= set(effusion["labels"])
    assert set(lib.fts_match("effusion")) == {effusion["id"]}


# --- IU X-ray: Kaggle's indiana_reports.csv + indiana_projections.csv ----------------------------

def test_iu_xray_kaggle_csv_layout(tmp_path: Path, lib: Library) -> None:
    root = tmp_path / "iu-kaggle"
    write_csv(root / "indiana_reports.csv",
              ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"],
              [[1, "normal", "normal", "Xray Chest PA and Lateral", "Positive TB test", "None.",
                "The cardiac silhouette and mediastinum size are within normal limits. There is no pneumothorax.",
                "Normal chest x-XXXX."],
               [2, "Cardiomegaly/borderline;Pulmonary Artery/enlarged", "Cardiomegaly;Pulmonary Artery",
                "Chest, 2 views, frontal and lateral", "Preop bariatric surgery.", "None.",
                "Borderline cardiomegaly. Midline sternotomy XXXX. Enlarged pulmonary arteries.",
                "Enlarged pulmonary arteries and borderline cardiomegaly."]])
    write_csv(root / "indiana_projections.csv", ["uid", "filename", "projection"],
              [[1, "1_IM-0001-4001.dcm.png", "Frontal"], [1, "1_IM-0001-3001.dcm.png", "Lateral"],
               [2, "2_IM-0652-1001.dcm.png", "Frontal"]])
    images = {name: make_image(root / "images" / "images_normalized" / name, i) for i, name in
              enumerate(["1_IM-0001-4001.dcm.png", "1_IM-0001-3001.dcm.png", "2_IM-0652-1001.dcm.png"])}
    assert detect_source(root) == "iu_xray"
    report = ingest([root], lib, workers=1)
    assert report.added == 3 and not report.failed
    lateral = lib.get_case(sha_id(images["1_IM-0001-3001.dcm.png"]))
    assert (lateral["view"], lateral["study_instance_uid"]) == ("LATERAL", lib.pseudonyms.uid("CXR1"))
    second = lib.get_case(sha_id(images["2_IM-0652-1001.dcm.png"]))
    assert second["view"] == "FRONTAL" and "Cardiomegaly" in second["labels"]
    assert second["extra"]["mesh"] == ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"]
    assert second["extra"]["problems"] == "Cardiomegaly;Pulmonary Artery"


def test_iu_xray_csv_without_projections_is_a_layout_error(tmp_path: Path, lib: Library) -> None:
    write_csv(tmp_path / "indiana_reports.csv", ["uid", "findings"], [[1, "clear"]])
    with pytest.raises(DatasetLayoutError, match="indiana_projections.csv"):
        ingest([tmp_path], lib)


# --- MIMIC-CXR-JPG -------------------------------------------------------------------------------

CHEXPERT_HEADER = ["subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                   "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
                   "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices"]
METADATA_HEADER = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                   "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                   "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
MIMIC_IMAGES = [  # (subject, study, dicom_id, view)
    ("10000032", "50414267", "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA"),
    ("10000032", "50414267", "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL"),
    ("10000032", "53189527", "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "AP"),
    ("11000011", "56699142", "9f5c3b2d-0e4b5a7c-1d2e3f40-5a6b7c8d-9e0f1a2b", "AP"),
]


def mimic_layout(root: Path) -> dict[str, Path]:
    jpgs = {}
    for i, (subject, study, dicom_id, _) in enumerate(MIMIC_IMAGES):
        jpg = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
        jpg.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8)).save(jpg, quality=95)
        jpgs[dicom_id] = jpg
    reports = {"50414267": "FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n FINDINGS: No acute process.",
               "53189527": "FINAL REPORT\n FINDINGS: Mild pulmonary edema. Possible small effusion.",
               "56699142": "FINAL REPORT\n IMPRESSION: Large left pneumothorax."}
    for subject, study in {(s, t) for s, t, _, _ in MIMIC_IMAGES}:
        base = root if study != "56699142" else root / "mimic-cxr-reports"  # the other published place
        path = base / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(reports[study])
    chexpert = [["10000032", "50414267", *[""] * 8, "1.0", *[""] * 5],
                ["10000032", "53189527", "", "", "", "1.0", "", "", "", "", "", "-1.0", "", "", "0.0", ""]]
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", CHEXPERT_HEADER, chexpert, gz=True)
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_HEADER,
              [[d, s, t, "CHEST (PA AND LAT)", v, 3056, 2544, 21800506, "213014.531", "", "", "Erect"]
               for s, t, d, v in MIMIC_IMAGES], gz=True)
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [[d, t, s, "train" if s == "10000032" else "test"] for s, t, d, _ in MIMIC_IMAGES], gz=True)
    return jpgs


def test_mimic_cxr_jpg_layout(tmp_path: Path, lib: Library) -> None:
    root = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    jpgs = mimic_layout(root)
    assert detect_source(root) == "mimic_cxr"
    report = ingest([root], lib, workers=1)
    assert report.added == 4 and not report.failed
    cases = {dicom_id: lib.get_case(sha_id(path)) for dicom_id, path in jpgs.items()}
    first = cases[MIMIC_IMAGES[0][2]]
    assert (first["labels"], first["label_source"], first["view"], first["split"]) == (["No Finding"], "dataset", "PA", "train")
    assert (first["study_date"], first["study_instance_uid"], first["source_kind"]) == ("2180-05-06", lib.pseudonyms.uid("50414267"),
                                                                                     "jpeg")
    assert first["report"].startswith("FINAL REPORT") and first["extra"]["dicom_id"] == MIMIC_IMAGES[0][2]
    edema = cases[MIMIC_IMAGES[2][2]]
    assert edema["labels"] == ["Edema"] and edema["extra"]["uncertain_labels"] == ["Pleural Effusion"]
    unlabelled = cases[MIMIC_IMAGES[3][2]]  # its study is not in chexpert.csv: the labeler reads the report
    assert unlabelled["label_source"] == "labeler" and "Pneumothorax" in unlabelled["labels"]
    assert unlabelled["split"] == "test" and unlabelled["view"] == "AP"
    assert first["patient_key"] == edema["patient_key"] == lib.pseudonyms.patient("10000032")
    assert unlabelled["patient_key"] != first["patient_key"]


def test_mimic_files_without_tables_still_ingest(tmp_path: Path, lib: Library) -> None:
    root = tmp_path / "mimic"
    jpgs = mimic_layout(root)
    for table in root.glob("mimic-cxr-2.0.0-*.csv.gz"):
        table.unlink()
    assert detect_source(root) == "mimic_cxr"
    ingest([root], lib, workers=1)
    case = lib.get_case(sha_id(jpgs[MIMIC_IMAGES[0][2]]))
    assert case["label_source"] == "labeler" and case["view"] is None and case["split"] is None


# --- ODIR-5K -------------------------------------------------------------------------------------

ODIR_HEADER = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
               "Right-Diagnostic Keywords", "N", "D", "G", "C", "A", "H", "M", "O", "filepath", "labels",
               "target", "filename"]
ODIR_ROWS = [
    [0, 69, "Female", "0_left.jpg", "0_right.jpg", "cataract", "normal fundus", 0, 0, 0, 1, 0, 0, 0, 0],
    [1, 57, "Male", "1_left.jpg", "1_right.jpg", "normal fundus", "normal fundus", 1, 0, 0, 0, 0, 0, 0, 0],
    [2, 42, "Male", "2_left.jpg", "2_right.jpg", "laser spot，moderate non proliferative retinopathy",
     "moderate non proliferative retinopathy", 0, 1, 0, 0, 0, 0, 0, 1],
]


def odir_layout(root: Path) -> dict[str, Path]:
    originals = {}
    for i, row in enumerate(ODIR_ROWS):
        for k, name in enumerate(row[3:5]):
            originals[name] = make_image(root / "ODIR-5K" / "Training Images" / name, 100 + 2 * i + k, color=True)
            make_image(root / "preprocessed_images" / name, 500 + 2 * i + k, color=True)  # Kaggle's copies
    rows = [[*r, f"../input/{r[3]}", "['N']", "[1, 0]", name] for r in ODIR_ROWS for name in r[3:5]]
    write_csv(root / "full_df.csv", ODIR_HEADER, rows)  # Kaggle: one row per eye, patient data repeated
    return originals


def test_odir_layout(tmp_path: Path, lib: Library) -> None:
    root = tmp_path / "odir"
    originals = odir_layout(root)
    assert detect_source(root) == "odir" and detect_source(root / "full_df.csv") == "odir"
    report = ingest([root], lib, workers=1)
    assert report.added == 6 and not report.failed  # each eye once, though full_df.csv lists it twice
    assert {c["source_path"] for c in lib.iter_cases()} == {str(p) for p in originals.values()}
    left = lib.get_case(sha_id(originals["0_left.jpg"]))
    assert (left["report"], left["labels"], left["domain"], left["laterality"]) == ("cataract", ["C"], "fundus", "L")
    assert (left["age"], left["sex"], left["extra"]) == (69, "F", {"patient_classes": ["C"]})
    right = lib.get_case(sha_id(originals["0_right.jpg"]))
    assert (right["labels"], right["laterality"], right["patient_key"]) == (["N"], "R", left["patient_key"])
    dr = lib.get_case(sha_id(originals["2_left.jpg"]))
    assert "D" in dr["labels"] and dr["label_source"] == "labeler"


def test_odir_xlsx_needs_openpyxl_or_a_csv(tmp_path: Path, lib: Library) -> None:
    root = tmp_path / "ODIR-5K"
    make_image(root / "Training Images" / "0_left.jpg", 1, color=True)
    sheet = root / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
    if importlib.util.find_spec("openpyxl") is None:
        sheet.write_bytes(b"PK\x03\x04 not read without openpyxl")
        assert detect_source(root) == "odir"
        with pytest.raises(DatasetLayoutError, match="openpyxl.*CSV") as err:
            ingest([root], lib)
        assert err.value.item == str(sheet) and lib.count_cases() == 0
        return
    import openpyxl

    book = openpyxl.Workbook()
    book.active.append(ODIR_HEADER[:15])
    book.active.append([0, 69, "Female", "0_left.jpg", "0_right.jpg", "cataract", "normal fundus"])
    book.save(sheet)
    report = ingest([root], lib, workers=1)
    assert report.added == 1 and [Path(p).name for p, _ in report.failed] == ["0_right.jpg"]
