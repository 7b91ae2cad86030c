"""`medhash info`: what a file or a library holds, without PHI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medhash_app.core.imaging import load_image
from medhash_app.core.library import Library


def describe_file(path: Path) -> dict[str, Any]:
    """Header facts and decoded geometry of one image file (the patient key is a salted hash)."""
    img = load_image(Path(path))
    facts = img.facts.to_dict()
    facts.pop("patient_key", None)  # unsalted here: meaningless outside a library, so not shown
    return {"file": str(path), "frames": img.frame_count, "color": img.is_color,
            "shape": list(img.pixels.shape), "default_window": img.default_window, **facts}


def describe_library(folder: Path) -> dict[str, Any]:
    """Case counts by domain and label source, models and their code counts."""
    with Library.open(Path(folder), read_only=True) as lib:
        by_domain: dict[str, int] = {}
        labels: dict[str, int] = {}
        for case in lib.iter_cases():
            by_domain[case.get("domain") or "other"] = by_domain.get(case.get("domain") or "other", 0) + 1
            for label in case.get("labels") or []:
                labels[label] = labels.get(label, 0) + 1
        models = [{"id": m["id"], "name": m["name"], "method": m["method"], "bits": m["bits"],
                   "active": bool(m["active"]),
                   "codes": {f"{mod}-{b}": lib.count_codes(m["id"], mod, b)
                             for mod in ("image", "text") for b in m["bits"]}}
                  for m in lib.list_models()]
        return {"library": str(Path(folder).resolve()), "schema_version": lib.schema_version,
                "cases": sum(by_domain.values()), "by_domain": by_domain,
                "labels": dict(sorted(labels.items(), key=lambda kv: -kv[1])), "models": models,
                "ingest_errors": len(lib.ingest_errors())}
