"""IU X-ray / Open-i chest radiographs, in either published layout:

* NLM's: `ecgen-radiology/*.xml` reports (`<AbstractText Label="FINDINGS">`, `<parentImage id=...>`)
  beside the PNG folder (`NLMCXR_png/CXR1_1_IM-0001-3001.png`);
* Kaggle's: `indiana_reports.csv` (uid, MeSH, Problems, image, indication, comparison, findings,
  impression) + `indiana_projections.csv` (uid, filename, projection) + `images/images_normalized/`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medhash_app.core.errors import DatasetLayoutError
from medhash_app.core.ingest.items import IngestItem
from medhash_app.core.ingest.sources.common import index_images, read_table, text_or_none

REPORTS_CSV, PROJECTIONS_CSV, XML_DIR = "indiana_reports.csv", "indiana_projections.csv", "ecgen-radiology"


def detect(path: Path) -> bool:
    return path.is_dir() and ((path / XML_DIR).is_dir() or (path / REPORTS_CSV).is_file())


def items(path: Path) -> Iterator[IngestItem]:
    images = index_images(path, skip=path / XML_DIR)
    if (path / REPORTS_CSV).is_file():
        yield from _csv_items(path, images)
    else:
        yield from _xml_items(path, images)


def compose_report(sections: dict[str, str | None]) -> str | None:
    """"FINDINGS: ...\nIMPRESSION: ..." from the sections that have text."""
    parts = [f"{name.upper()}: {text}" for name in ("findings", "impression")
             if (text := text_or_none(sections.get(name)))]
    return "\n".join(parts) or None


def _extra(sections: dict[str, Any], mesh: list[str]) -> dict[str, Any]:
    extra = {k: v for k in ("indication", "comparison", "problems") if (v := text_or_none(sections.get(k)))}
    return extra | ({"mesh": mesh} if mesh else {})


def _image_item(images: dict[str, Path], root: Path, names: list[str], report: str | None,
                meta: dict[str, Any]) -> IngestItem:
    path = next((images[n] for n in names if n in images), None)
    if path is None:
        return IngestItem(root / names[0], problem="the report lists this image but the file is not in the folder")
    return IngestItem(path, report=report, metadata=meta)


def _csv_items(root: Path, images: dict[str, Path]) -> Iterator[IngestItem]:
    if not (root / PROJECTIONS_CSV).is_file():
        raise DatasetLayoutError(root, f"{REPORTS_CSV} is there but {PROJECTIONS_CSV} (image list) is missing")
    reports = {str(r.get("uid")): {k.lower(): v for k, v in r.items()} for r in read_table(root / REPORTS_CSV)}
    for row in read_table(root / PROJECTIONS_CSV):
        uid, filename = str(row.get("uid")), text_or_none(row.get("filename"))
        if filename is None:
            continue
        report = reports.get(uid, {})
        mesh = [m.strip() for m in str(report.get("mesh") or "").split(";") if m.strip()]
        view = (text_or_none(row.get("projection")) or "").upper() or None
        meta = {"domain": "chest", "study_id": f"CXR{uid}", "view": view, "extra": _extra(report, mesh)}
        yield _image_item(images, root, [filename], compose_report(report), meta)


def _xml_items(root: Path, images: dict[str, Path]) -> Iterator[IngestItem]:
    for xml_file in sorted((root / XML_DIR).glob("*.xml")):
        try:
            tree = ET.parse(xml_file)
        except ET.ParseError as exc:
            yield IngestItem(xml_file, problem=f"the report XML cannot be parsed ({exc})")
            continue
        sections = {(node.get("Label") or "").lower(): "".join(node.itertext())
                    for node in tree.iter("AbstractText")}
        mesh = [text for node in tree.iter("major") if (text := text_or_none(node.text))]
        uid = tree.find(".//uId")
        meta = {"domain": "chest", "study_id": uid.get("id") if uid is not None else xml_file.stem,
                "extra": _extra(sections, mesh)}
        for parent in tree.iter("parentImage"):
            image_id = parent.get("id") or ""
            names = [f"{image_id}{s}" for s in (".png", ".jpg", ".jpeg", ".dcm")]
            yield _image_item(images, root, names, compose_report(sections), meta)
