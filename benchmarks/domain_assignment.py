"""Domain assignment on import: the image check (core/image_stats.py guess_domain) vs the old
grey/colour rule, on every real image in ../shared/data.

Each file is decoded as ingest decodes it (load_image -> model_image, the stored model input) and
classified; the expected domain per source: ODIR-5K = fundus, MedPix CT/MR = other (not chest,
not fundus), chest X-ray DICOMs = chest, hip / misc DICOMs = other. (On import a DICOM's domain
comes from its header first; here the pixels alone are judged, to see what the check says.)

    python benchmarks/domain_assignment.py --out benchmarks/results/domain_assignment.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchkit import LoadMonitor, MarkdownReport, command_line, require_shared

GREY_TOLERANCE = 8  # the old rule (core/ingest/decode.py): max channel difference of a grey image


def sources(limit: int | None) -> dict[str, tuple[str, list[Path]]]:
    odir = require_shared("odir5k-256", "pairs.jsonl")
    medpix = require_shared("medpix2", "pairs.jsonl")
    dicom = require_shared("dicom")

    def rows(path: Path) -> list[Path]:
        out = [path.parent / json.loads(line)["image"] for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip()]
        return out[:limit] if limit else out

    chest = [p for p in sorted((dicom / "xray_chest").glob("*.dcm")) if "chest" in p.name]
    tinted = tinted_chest_jpegs(chest, Path(tempfile.mkdtemp(prefix="medhash-tinted-")))
    return {
        "ODIR-5K fundus JPEGs": ("fundus", rows(odir)),
        "MedPix CT/MR JPEGs": ("other", rows(medpix)),
        "chest X-ray DICOMs": ("chest", chest),
        "the same chests as colour JPEGs: 3 colour casts, with and without red arrows (derived)": ("chest", tinted),
        "c-spine X-ray DICOMs (16x16 thumbnails)": ("other", sorted((dicom / "xray_chest").glob("*cspine*.dcm"))),
        "hip X-ray DICOMs": ("other", sorted((dicom / "xray_other").glob("*.dcm"))),
        "misc DICOMs (CT, MR, US, RGB SC...)": ("other", sorted((dicom / "transfer_syntax_misc").glob("*.dcm"))),
    }


CASTS = ((1.08, 1.0, 0.85), (1.15, 1.05, 0.8), (0.9, 1.0, 1.1))  # warm, sepia, cold


def tinted_chest_jpegs(chest: list[Path], folder: Path) -> list[Path]:
    """The reported failure, rebuilt from the real chest DICOMs: radiographs kept as colour JPEGs with
    a colour cast (scanned film, a warm export) and coloured arrows were filed as fundus photographs."""
    from PIL import Image, ImageDraw

    from medhash_app.core.imaging import load_image, model_image

    out = []
    for path in chest:
        try:
            grey = np.asarray(model_image(load_image(path), 512), dtype=np.float32)
        except Exception:  # noqa: BLE001, S112 - the corrupt test file is counted in its own row
            continue
        for i, cast in enumerate(CASTS):
            for arrows in (False, True):
                img = Image.fromarray(np.clip(grey * np.array(cast), 0, 255).astype(np.uint8))
                if arrows:
                    draw, (w, h) = ImageDraw.Draw(img), img.size
                    for k in range(3):
                        x, y = w * (0.3 + 0.15 * k), h * (0.4 + 0.08 * k)
                        draw.line([(x, y), (x + w * 0.1, y + h * 0.1)], fill=(255, 0, 0), width=max(4, w // 60))
                out.append(folder / f"{path.stem}_cast{i}{'_arrows' if arrows else ''}.jpg")
                img.save(out[-1], quality=90)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, help="at most this many images per manifest")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from medhash_app.core.image_stats import guess_domain
    from medhash_app.core.imaging import load_image, model_image
    from medhash_app.core.ingest.decode import MODEL_SIZE

    md = MarkdownReport("Domain assignment on import", command_line())
    rows = []
    with LoadMonitor() as load:
        for name, (expected, paths) in sources(args.limit).items():
            new, old, conf, failed = Counter(), Counter(), [], 0
            for path in paths:
                try:
                    model = model_image(load_image(path), MODEL_SIZE)
                except Exception:  # noqa: BLE001 - the corrupt test files
                    failed += 1
                    continue
                guess = guess_domain(model)
                new[guess.domain] += 1
                conf.append(guess.confidence if guess.domain == expected else 0.0)
                pixels = np.asarray(model, dtype=np.int16)
                old["chest" if int(np.abs(pixels - pixels[..., :1]).max()) <= GREY_TOLERANCE else "fundus"] += 1
            n = sum(new.values())
            dist = lambda c: ", ".join(f"{d} {c[d]}" for d in ("chest", "fundus", "other") if c[d])
            rows.append([name, expected, n, failed, dist(old), f"{100 * old[expected] / max(1, n):.1f} %", dist(new),
                         f"{100 * new[expected] / max(1, n):.1f} %",
                         f"{np.median([c for c in conf if c > 0]) if any(conf) else 0:.2f}"])
        md.paragraph("Every image decoded as ingest decodes it; 'old' = the grey/colour rule (grey = chest, colour = "
                     "fundus), 'new' = guess_domain. The user's --domain and a dataset's own domain still come "
                     "first, then a DICOM header (CR/DX chest, OP fundus, else other); the image check decides "
                     "for PNG/JPEG only, and its confidence is stored in the case's extra.domain_confidence.")
        md.table(["source", "expected", "n", "failed to decode", "old rule", "old correct", "image check",
                  "new correct", "median confidence (correct)"], rows)
        md.emit(args.out, load)


if __name__ == "__main__":
    main()
