"""Write a painted chest image as a real DICOM file (pydicom 3, Explicit VR Little Endian).

12-bit data in 16-bit words, a default window, DX or CR SOP class; a quarter of the files are
MONOCHROME1 (stored values inverted, window moved with them) so the app's decode path meets both
photometric interpretations. UIDs are derived from fixed entropy so the files are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MAX_STORED = 4095  # 12 bits stored
SOP_CLASS = {
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
}


@dataclass(frozen=True)
class ChestHeader:
    """The synthetic header facts of one chest study (no real person behind any of them)."""

    patient_id: str
    age: int
    sex: str
    study_date: str  # YYYYMMDD
    view: str  # PA or AP
    modality: str  # DX or CR
    monochrome1: bool
    uid_entropy: tuple[str, ...]  # what makes this file's UIDs unique and reproducible
    instance: int


def to_stored_values(image: np.ndarray) -> np.ndarray:
    """Map the painted density (~0..1.2) to 12-bit stored values, MONOCHROME2 sense."""
    values = image * np.float32(3300.0)
    values += np.float32(150.5)  # offset, and +0.5 so that truncation rounds
    return np.clip(values, 0, MAX_STORED, out=values).astype(np.uint16)


def write_chest_dicom(path: Path, image: np.ndarray, header: ChestHeader) -> None:
    """Save `image` (float, bright = dense) with `header` as a DICOM Part 10 file at `path`."""
    stored = to_stored_values(image)
    lo, hi = np.percentile(stored[::4, ::4], [1.0, 99.0])  # a subsample is plenty
    center, width = (lo + hi) / 2.0, max(hi - lo, 64.0)
    photometric = "MONOCHROME2"
    if header.monochrome1:
        stored, center, photometric = MAX_STORED - stored, MAX_STORED - center, "MONOCHROME1"
    ds = _dataset(header)
    ds.set_pixel_data(stored, photometric, 12, generate_instance_uid=False)
    ds.WindowCenter, ds.WindowWidth = str(round(center)), str(round(width))
    ds.save_as(path, enforce_file_format=True)


def _uid(header: ChestHeader, what: str) -> str:
    return generate_uid(entropy_srcs=["medhash-demo", *header.uid_entropy, what])


def _dataset(h: ChestHeader) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[h.modality]
    meta.MediaStorageSOPInstanceUID = _uid(h, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(h, "study"), _uid(h, "series")
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = h.modality, "CHEST", h.view
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientName, ds.PatientID = f"DEMO^PATIENT {h.patient_id[4:]}", h.patient_id
    ds.PatientAge, ds.PatientSex = f"{h.age:03d}Y", h.sex
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = h.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "093000"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = str(h.instance), 1, 1
    ds.AccessionNumber = f"DEMOACC{h.instance:06d}"
    ds.Manufacturer = "MedHash demo generator"
    ds.StudyDescription = f"XR CHEST {h.view}"
    ds.PatientOrientation = ["L", "F"]  # painted with the patient's left on the image's right
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.7, 0.7]
    if h.modality == "DX":  # DX For Presentation requires it, and it must agree with the photometric
        ds.PresentationLUTShape = "INVERSE" if h.monochrome1 else "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    return ds
