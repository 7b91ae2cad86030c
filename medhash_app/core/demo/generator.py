"""Build the demo dataset: synthetic chest DICOMs and fundus PNGs with matching reports.

Nothing comes from third-party data: every pixel and word is made here, reproducibly from a seed
(each item has its own random stream, keyed by seed, domain, index and purpose, so one item does
not shift the others). The manifest is the project's generic JSONL format; a seeded fraction of
pairs get another image's report on purpose (flagged `mismatched`) as ground truth for the
noise audit. See resources/demo/README.md for the recipe.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medhash_app.core.errors import DataError, DatasetLayoutError

from .chest import DRAWN_FINDINGS, NO_FINDING, draw_chest, sample_chest_case
from .dicom_writer import ChestHeader, write_chest_dicom
from .fundus import EYES, ODIR_CODES, draw_fundus, sample_fundus_case, sample_patient_codes
from .reports import chest_report, fundus_report

MANIFEST_NAME = "pairs.jsonl"
INFO_NAME = "demo_info.json"
GENERATOR_VERSION = 1
Progress = Callable[[int, int], None]
Job = Callable[[], dict[str, Any]]
_PARALLEL_MIN = 48  # fewer images than this: worker start-up would cost more than it saves
_CHUNK = 8

# Random-stream keys: (seed, stream, index, purpose). Query images use their own streams, so
# they can never coincide with a manifest item.
_CHEST, _FUNDUS, _MISMATCH, _PATIENT = 1, 2, 3, 4
_QUERY_CHEST, _QUERY_FUNDUS = 101, 102
_SPEC, _PIXELS, _TEXT = 0, 1, 2
_FIRST_DAY = date(2015, 1, 1)

# Example text queries for the demo, with the labels a good hit shares.
DEMO_QUERY_LABELS: dict[str, tuple[str, ...]] = {
    "Enlarged cardiac silhouette with a small left pleural effusion.": ("Cardiomegaly", "Pleural Effusion"),
    "Right apical pneumothorax.": ("Pneumothorax",),
    "Patchy opacity in the right lower lobe.": ("Lung Opacity",),
    "No acute cardiopulmonary abnormality.": (NO_FINDING,),
    "moderate non proliferative retinopathy": ("D",),
    "suspected glaucoma": ("G",),
    "cataract": ("C",),
}
DEMO_QUERIES: tuple[str, ...] = tuple(DEMO_QUERY_LABELS)
# Held-out query images: (domain, labels drawn), generated on the query streams.
_QUERY_CASES: tuple[tuple[str, list[str]], ...] = (
    ("chest", ["Cardiomegaly", "Pleural Effusion"]), ("chest", ["Pneumothorax"]),
    ("fundus", ["D"]), ("fundus", ["G"]),
)


def generate_demo_dataset(folder: Path, *, n_chest: int = 240, n_fundus: int = 240, seed: int = 0,
                          mismatch_rate: float = 0.05, progress: Progress | None = None,
                          workers: int = 1) -> Path:
    """Write the demo images under `folder` and return its manifest `pairs.jsonl`.

    `progress(done, total)` is called after each image. With `workers` > 1 the images are made in
    that many spawned processes (the output is byte-identical either way); like any spawning code
    this needs a caller whose main module is import-safe (`if __name__ == "__main__":`), as the
    `medhash` command and app are. The manifest is written last (atomically), so a folder without
    it is an unfinished run. Raises DataError for bad counts, rates or worker numbers and
    DatasetLayoutError for a folder that holds something other than demo data (never overwritten).
    """
    _check_arguments(n_chest, n_fundus, mismatch_rate, workers)
    folder = Path(folder)
    _prepare_folder(folder, {"generator": "medhash demo", "version": GENERATOR_VERSION, "seed": seed,
                             "n_chest": n_chest, "n_fundus": n_fundus, "mismatch_rate": mismatch_rate})
    jobs = _chest_jobs(folder, n_chest, seed) + _fundus_jobs(folder, n_fundus, seed)
    rows = _run(jobs, workers, progress)
    _apply_mismatches(rows, mismatch_rate, seed)
    manifest = folder / MANIFEST_NAME
    _write_jsonl_atomic(manifest, rows)
    return manifest


def demo_query_images(folder: Path) -> list[Path]:
    """Write (or rewrite) a few held-out query images under `folder`/queries and return their paths.

    They come from their own random streams (the dataset's seed, read from demo_info.json when
    present), so they are never in the manifest, yet show findings the demo library contains.
    """
    folder = Path(folder)
    seed = int(_read_info(folder).get("seed", 0))
    out = folder / "queries"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (domain, labels) in enumerate(_QUERY_CASES):
        if domain == "chest":
            rel = f"query_{i + 1}_chest.dcm"
            who = _Patient(f"DEMOQ{i + 1:04d}", 60 + i, "F" if i % 2 else "M", _FIRST_DAY)
            _make_chest(out, rel, seed, _QUERY_CHEST, i, labels, who, visit=0)
        else:
            rel = f"query_{i + 1}_fundus.png"
            _make_fundus(out, rel, seed, _QUERY_FUNDUS, i, EYES[i % 2], [], labels, {})
        paths.append(out / rel)
    return paths


# --------------------------------------------------------------------------------------------
# Folder and manifest


def _check_arguments(n_chest: int, n_fundus: int, mismatch_rate: float, workers: int) -> None:
    for name, n in (("n_chest", n_chest), ("n_fundus", n_fundus)):
        if not isinstance(n, int) or n < 0:
            raise DataError(name, f"must be a whole number of images, 0 or more (got {n!r})")
    if not 0.0 <= mismatch_rate <= 1.0:
        raise DataError("mismatch_rate", f"must be between 0 and 1 (got {mismatch_rate!r})")
    if not isinstance(workers, int) or workers < 1:
        raise DataError("workers", f"must be a whole number, 1 or more (got {workers!r})")


def _run(jobs: list[Job], workers: int, progress: Progress | None) -> list[dict[str, Any]]:
    """Run the image jobs, in `workers` processes when that pays; rows come back in job order.

    Processes are spawned (not forked: the caller may be a threaded Qt app); a frozen app runs
    everything in-process rather than rely on multiprocessing.freeze_support().
    """
    if workers > 1 and len(jobs) >= _PARALLEL_MIN and not getattr(sys, "frozen", False):
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs) // _CHUNK), mp_context=context) as pool:
            return _collect(pool.map(_call, jobs, chunksize=_CHUNK), len(jobs), progress)
    return _collect(map(_call, jobs), len(jobs), progress)


def _call(job: Job) -> dict[str, Any]:
    return job()


def _collect(rows: Iterable[dict[str, Any]], total: int, progress: Progress | None) -> list[dict[str, Any]]:
    done = []
    for row in rows:
        done.append(row)
        if progress is not None:
            progress(len(done), total)
    return done


def _read_info(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / INFO_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _prepare_folder(folder: Path, info: dict[str, Any]) -> None:
    """Use an empty/new folder, or clear an earlier demo run; refuse anything else."""
    if folder.exists() and not folder.is_dir():
        raise DatasetLayoutError(folder, "is a file; choose a folder for the demo data")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / INFO_NAME).is_file():
            raise DatasetLayoutError(folder, "is not empty and holds no MedHash demo data; choose an empty "
                                             "or new folder")
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        for sub in ("chest", "fundus", "queries"):
            shutil.rmtree(folder / sub, ignore_errors=True)
    for sub in ("chest", "fundus"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _apply_mismatches(rows: list[dict[str, Any]], rate: float, seed: int) -> None:
    """Give round(rate * n) pairs per domain the report of an image with other labels."""
    rng = _rng(seed, _MISMATCH)
    for domain in ("chest", "fundus"):
        idx = [i for i, row in enumerate(rows) if row["domain"] == domain]
        original = {i: rows[i]["report"] for i in idx}
        chosen = sorted(rng.choice(idx, size=round(rate * len(idx)), replace=False)) if idx else []
        for i in chosen:
            donors = [j for j in idx if set(rows[j]["labels"]) != set(rows[i]["labels"])]
            if donors:
                rows[i]["report"] = original[donors[int(rng.integers(len(donors)))]]
                rows[i]["mismatched"] = True


def _coverage(i: int, classes: tuple[str, ...]) -> list[str] | None:
    """The first items show each class once, so every class exists even in a small dataset."""
    return [classes[i]] if i < len(classes) else None


# --------------------------------------------------------------------------------------------
# Chest


def _chest_patients(n: int, seed: int) -> Iterator[tuple[int, int]]:
    """(patient number, visit) per study: about one patient in six comes back for a follow-up."""
    rng, patient, visit = _rng(seed, _CHEST, _PATIENT), 0, 0
    for i in range(n):
        if i > 0 and visit == 0 and rng.random() < 0.17:
            visit = 1
        else:
            patient, visit = patient + (i > 0), 0
        yield patient, visit


@dataclass(frozen=True)
class _Patient:
    """A synthetic patient: what stays the same across their studies."""

    patient_id: str
    age: int  # at the first study
    sex: str
    first_study: date


def _chest_jobs(folder: Path, n: int, seed: int) -> list[Job]:
    jobs: list[Job] = []
    for i, (patient, visit) in enumerate(_chest_patients(n, seed)):
        p_rng = _rng(seed, _CHEST, _PATIENT, patient, 1)
        who = _Patient(f"DEMO{patient + 1:04d}", int(p_rng.integers(19, 90)),
                       "F" if p_rng.random() < 0.48 else "M",
                       _FIRST_DAY + timedelta(days=int(p_rng.integers(0, 3000))))
        forced = _coverage(i, (NO_FINDING, *DRAWN_FINDINGS))
        jobs.append(partial(_make_chest, folder, f"chest/cxr_{i + 1:05d}.dcm", seed, _CHEST, i, forced, who, visit))
    return jobs


def _make_chest(folder: Path, rel: str, seed: int, stream: int, i: int, forced: list[str] | None, who: _Patient,
                visit: int) -> dict[str, Any]:
    """Paint, report and save one chest study as `folder`/`rel`; return its manifest row."""
    case = sample_chest_case(_rng(seed, stream, i, _SPEC), forced)
    when = who.first_study + timedelta(days=visit * int(_rng(seed, stream, i, _PATIENT).integers(30, 400)))
    case.sex, case.age = who.sex, who.age + (when.year - who.first_study.year)
    report = chest_report(case, _rng(seed, stream, i, _TEXT))
    header = ChestHeader(who.patient_id, case.age, case.sex, when.strftime("%Y%m%d"), case.view, case.modality,
                         case.monochrome1, (str(seed), str(stream), str(i)), i + 1)
    write_chest_dicom(folder / rel, draw_chest(case, _rng(seed, stream, i, _PIXELS)), header)
    return {"image": rel, "report": report, "labels": case.labels, "patient_id": who.patient_id,
            "view": case.view, "study_id": f"DEMO-CXR-{i + 1:05d}", "domain": "chest", "mismatched": False,
            "study_date": when.isoformat(), "age": case.age, "sex": case.sex, "modality": case.modality}


# --------------------------------------------------------------------------------------------
# Fundus


def _fundus_jobs(folder: Path, n: int, seed: int) -> list[Job]:
    """Two eyes per patient (right, then left), sharing the patient's diseases most of the time."""
    jobs: list[Job] = []
    for j in range(n):
        patient, eye = divmod(j, 2)
        codes = sample_patient_codes(_rng(seed, _FUNDUS, _PATIENT, patient))
        p_rng = _rng(seed, _FUNDUS, _PATIENT, patient, 1)
        when = _FIRST_DAY + timedelta(days=int(p_rng.integers(0, 3000)))
        about = {"patient_id": f"DEMOF{patient + 1:04d}", "study_id": f"DEMO-FUN-{patient + 1:05d}",
                 "study_date": when.isoformat(), "age": int(p_rng.integers(35, 88)),
                 "sex": "F" if p_rng.random() < 0.5 else "M", "modality": "OP", "eye": EYES[eye]}
        rel = f"fundus/fundus_{patient + 1:05d}_{EYES[eye]}.png"
        jobs.append(partial(_make_fundus, folder, rel, seed, _FUNDUS, j, EYES[eye], codes,
                            _coverage(j, ODIR_CODES), about))
    return jobs


def _make_fundus(folder: Path, rel: str, seed: int, stream: int, j: int, eye: str, codes: list[str],
                 forced: list[str] | None, about: dict[str, Any]) -> dict[str, Any]:
    """Paint, report and save one eye as `folder`/`rel`; return its manifest row (`about` the patient)."""
    case = sample_fundus_case(_rng(seed, stream, j, _SPEC), codes, eye, forced)
    rgb = draw_fundus(case, _rng(seed, stream, j, _PIXELS))
    Image.fromarray(rgb, "RGB").save(folder / rel, format="PNG", compress_level=1)  # noisy: -9 buys little
    row = {"image": rel, "report": fundus_report(case, _rng(seed, stream, j, _TEXT)), "labels": case.labels,
           "patient_id": "", "view": eye, "study_id": "", "domain": "fundus", "mismatched": False}
    return row | about
