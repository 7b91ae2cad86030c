"""Out-of-domain detection (core/search/ood.py) measured on real inputs.

A fundus library (ODIR-5K subset, ingested with the real pipeline) gets a small trained model
(`medhash train` equivalent: BASE, 64 bits, 2 epochs). The detector the search service uses
(k-NN Hamming score against the library's own codes, threshold = 99th percentile of held-out
library items + 1 bit) is then applied to:

  in domain   ODIR images and their reports that are NOT in the library (should not be flagged)
  out         chest / c-spine / hip X-ray DICOMs, the misc DICOMs (CT, MR, US, ...), MedPix CT/MR
              JPEGs, screenshots of the app's own window rendered offscreen, generated UI-like
              images, synthesized natural-looking photos; IU chest report texts and MedPix
              captions as report queries
  other way   a chest library (generated demo chest radiographs, model trained the same way)
              queried with ODIR fundus photographs, vs held-out demo chest radiographs

    python benchmarks/ood_detection.py --out benchmarks/results/ood_detection.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchkit import (
    SHARED,
    LoadMonitor,
    MarkdownReport,
    command_line,
    odir_manifest,
    require_shared,
    tmp_dir,
)


def synth_ui(rng: np.random.Generator, n: int, folder: Path) -> list[Path]:
    """UI-like images: window chrome, buttons, text lines, tables, in light or dark themes."""
    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        dark = i % 2 == 1
        bg = (37, 37, 38) if dark else (240, 240, 240)
        fg = (220, 220, 220) if dark else (20, 20, 20)
        w, h = int(rng.integers(500, 1400)), int(rng.integers(350, 900))
        img = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(img)
        accent = tuple(int(v) for v in rng.integers(30, 200, 3))
        d.rectangle((0, 0, w, 28), fill=accent)
        x = 10
        while x < w - 100:
            bw = int(rng.integers(60, 140))
            d.rectangle((x, 36, x + bw, 60), outline=fg)
            d.text((x + 6, 42), "Search", fill=fg)
            x += bw + 10
        for y in range(72, h - 10, int(rng.integers(18, 30))):
            d.text((int(rng.integers(8, 40)), y), " ".join(["case", str(int(rng.integers(1000, 9999))), "cataract",
                                                            f"{rng.random():.2f}"]), fill=fg)
            if rng.random() < 0.5:
                d.line((0, y - 3, w, y - 3), fill=(128, 128, 128))
        if rng.random() < 0.5:  # a thumbnail-ish picture inside the window
            cx, cy, r = int(w * 0.7), int(h * 0.5), int(min(w, h) * 0.15)
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(150, 60, 30))
        path = folder / f"ui_{i:03d}.png"
        img.save(path)
        out.append(path)
    return out


def synth_photos(rng: np.random.Generator, n: int, folder: Path) -> list[Path]:
    """Natural-looking photos: sky gradient, horizon, ground texture, blurred blobs (trees, sun), noise."""
    from PIL import Image, ImageFilter

    out = []
    for i in range(n):
        h, w = 384, 512
        y = np.linspace(0, 1, h)[:, None, None]
        sky = np.array(rng.uniform([80, 120, 180], [150, 190, 255]))
        ground = np.array(rng.uniform([40, 70, 20], [140, 140, 90]))
        horizon = rng.uniform(0.35, 0.7)
        img = np.where(y < horizon, sky * (0.7 + 0.3 * (1 - y)), ground * (0.6 + 0.6 * y))
        img = np.broadcast_to(img, (h, w, 3)).copy()
        for _ in range(int(rng.integers(3, 12))):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 80)
            yy, xx = np.ogrid[:h, :w]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
            img[mask] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 12, img.shape)
        pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.5))
        path = folder / f"photo_{i:03d}.jpg"
        pic.save(path, quality=90)
        out.append(path)
    return out


def app_screenshots(folder: Path) -> list[Path]:
    """The app's main window (each tab, three sizes, both themes) grabbed offscreen to PNG."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from medhash_app.ui.main_window import MainWindow
    from medhash_app.ui.settings import AppSettings
    from medhash_app.ui.themes import apply_theme

    app = QApplication.instance() or QApplication([])
    out = []
    for theme in ("light", "dark"):
        settings = AppSettings(QSettings(str(folder / f"{theme}.ini"), QSettings.Format.IniFormat))
        apply_theme(app, theme)
        win = MainWindow(settings)
        win.show()
        tabs = getattr(win, "tabs", None)
        count = tabs.count() if tabs is not None else 1
        for size in ((1280, 800), (1000, 700), (1600, 1000)):
            win.resize(*size)
            for t in range(count):
                if tabs is not None:
                    tabs.setCurrentIndex(t)
                app.processEvents()
                path = folder / f"screen_{theme}_{size[0]}_{t}.png"
                win.grab().save(str(path))
                out.append(path)
        win.shutdown()
        win.deleteLater()
        app.processEvents()
    return out


def encode_paths(encoder, paths: list[Path], bits: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Packed codes, image statistics and stem features of the files that decode (one at a time, so a bad file
    costs only itself), decoded as a query is (core/search/service.py)."""
    from medhash_app.core.image_stats import features
    from medhash_app.core.imaging import load_image, model_image
    from medhash_app.core.ingest.decode import MODEL_SIZE

    codes, feats, stems, failed = [], [], [], 0
    for path in paths:
        try:
            img = load_image(path)
            enc = encoder.encode_loaded([img], embeddings=False)
            codes.append(enc.codes[bits][0])
            stems.append(enc.features[0] if enc.features is not None else None)
            feats.append(features(model_image(img, MODEL_SIZE)))
        except Exception:  # noqa: BLE001 - corrupt test files are expected in the DICOM set
            failed += 1
    if not codes:
        return np.zeros((0, bits // 8), np.uint8), np.zeros((0, 30), np.float32), [], failed
    return np.stack(codes), np.stack(feats), stems, failed


def build_library(folder: Path, manifest: Path, backbone: str, epochs: int, bits: int):
    from medhash_app.core.session import MedHashSession
    from medhash_app.core.training import TrainRequest, train_on_library

    session = MedHashSession(folder, create=True, device="cpu")
    report = session.ingest([manifest], allowed_roots=[SHARED, manifest.parent.parent])  # demo images lie beside
    train_on_library(session, TrainRequest(method="base", bits=[bits], epochs=epochs, backbone=backbone,
                                           device="cpu", seed=0))
    return session, report


def evaluate(session, bits: int, groups: dict[str, tuple[str, list]], rows: list) -> None:
    """Apply the service's checks (codes; image statistics and image features for images; words for
    reports) to each group; one table row each."""
    from medhash_app.core.search.domain_checks import library_feature_reference
    from medhash_app.core.search.lexical import build_lexical_reference
    from medhash_app.core.search.ood import build_reference, knn_scores

    model = session.active_model()
    encoder = session.encoders.get(model)
    refs = {}
    for kind in ("image", "text"):
        _, lib_codes = session.library.get_codes(model["id"], kind, bits)
        refs[kind] = (build_reference(lib_codes), lib_codes)
    stats = session.searcher._stats_reference()  # what the service calibrates on
    t0 = time.perf_counter()
    stems = library_feature_reference(session.library, model["id"], encoder)
    lexical = build_lexical_reference([c.get("report") or "" for c in session.library.iter_cases()])
    print(f"feature + word references: {time.perf_counter() - t0:.1f} s", flush=True)
    for name, (kind, items) in groups.items():
        no = np.zeros(0, bool)
        if kind == "image":
            q, feats, stem, failed = encode_paths(encoder, items, bits)
            by_stats = np.array([stats.score(f) > stats.threshold for f in feats], bool)
            by_feat = (np.array([stems.score(f) > stems.threshold for f in stem], bool) if stems is not None
                       else np.zeros(len(q), bool))
            by_words = no
        else:
            q, failed = encoder.encode_texts(items, embeddings=False).codes[bits], 0
            words = np.array([lexical.score(t) for t in items]) if lexical is not None else np.ones(len(q))
            by_words = np.array([lexical.is_out(w) for w in words], bool) if lexical is not None else words < 0
            typical = np.array([lexical.is_typical(w) for w in words], bool) if lexical is not None else words < 0
            by_stats = by_feat = np.zeros(len(q), bool)
        ref, lib_codes = refs[kind]
        scores = knn_scores(q, lib_codes, ref.k) if len(q) else np.zeros(0)
        by_code = scores > ref.threshold
        # what search reports (core/search/service.py): any check for images; for reports foreign wording
        # is out, wording as typical as the library's is in, in between (or without a word check) codes decide
        either = by_code | by_stats | by_feat if kind == "image" else by_words | (by_code & ~typical)
        n = max(1, len(q))
        rows.append([name, kind, len(q), failed, _pct(by_code, n), _pct(by_stats, n, kind == "image"),
                     _pct(by_feat, n, kind == "image"), _pct(by_words, n, kind == "text"), int(either.sum()),
                     _pct(either, n)])


def _pct(flags: np.ndarray, n: int, applies: bool = True) -> str:
    return f"{100 * flags.sum() / n:.1f} %" if applies else "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--library-size", type=int, default=600)
    ap.add_argument("--in-domain", type=int, default=300)
    ap.add_argument("--medpix", type=int, default=200)
    ap.add_argument("--synthetic", type=int, default=40)
    ap.add_argument("--backbone", default="embedded")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-chest-library", action="store_true")
    ap.add_argument("--reuse-library", type=Path, help="evaluate on this fundus library (built by an earlier run "
                                                        "of this script with the same rows) instead of building one")
    ap.add_argument("--stats-margin", type=float, help="override core/image_stats.py MARGIN (threshold study)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.stats_margin is not None:
        from medhash_app.core import image_stats

        image_stats.MARGIN = args.stats_margin
    require_shared("odir5k-256", "pairs.jsonl")
    dicom = require_shared("dicom")
    medpix = require_shared("medpix2", "pairs.jsonl")
    iu = require_shared("iu-reports.jsonl")
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    md = MarkdownReport("Out-of-domain query detection", command_line())
    with LoadMonitor() as load, tmp_dir("medhash-ood-") as tmp:
        lib_manifest, _ = odir_manifest(tmp / "m", args.library_size, start=0)
        held_manifest, held = odir_manifest(tmp / "m", args.in_domain, start=args.library_size)
        held_reports = [json.loads(line)["report"] for line in held_manifest.read_text().splitlines()]
        medpix_rows = [json.loads(line) for line in medpix.read_text(encoding="utf-8").splitlines() if line.strip()]
        pick = rng.choice(len(medpix_rows), size=min(args.medpix, len(medpix_rows)), replace=False)
        medpix_imgs = [medpix.parent / medpix_rows[i]["image"] for i in pick]
        medpix_caps = [medpix_rows[i]["report"] for i in pick if (medpix_rows[i].get("report") or "").strip()]
        iu_rows = [json.loads(line) for line in iu.read_text(encoding="utf-8").splitlines() if line.strip()]
        iu_texts = [" ".join(filter(None, (r.get("findings"), r.get("impression")))) for r in iu_rows[:200]]
        iu_texts = [t for t in iu_texts if t.strip()]
        (tmp / "ui").mkdir()
        (tmp / "photo").mkdir()
        (tmp / "screen").mkdir()
        shots = app_screenshots(tmp / "screen")
        ui = synth_ui(rng, args.synthetic, tmp / "ui")
        photos = synth_photos(rng, args.synthetic, tmp / "photo")
        dicoms = {sub: sorted((dicom / sub).glob("*.dcm")) for sub in ("xray_chest", "xray_other",
                                                                      "transfer_syntax_misc")}

        t0 = time.perf_counter()
        if args.reuse_library:  # a fundus library this script built before (same rows, model trained)
            from medhash_app.core.session import MedHashSession

            session = MedHashSession(args.reuse_library, device="cpu")
            ingest_report = argparse.Namespace(added=session.library.count_cases())
        else:
            session, ingest_report = build_library(tmp / "fundus-lib", lib_manifest, args.backbone, args.epochs,
                                                   args.bits)
        build_s = time.perf_counter() - t0
        rows: list = []
        groups = {
            "in domain: held-out ODIR fundus images": ("image", held),
            "in domain: held-out ODIR reports": ("text", held_reports),
            "OOD: chest / c-spine X-ray DICOMs": ("image", dicoms["xray_chest"]),
            "OOD: hip X-ray DICOMs": ("image", dicoms["xray_other"]),
            "OOD: misc DICOMs (CT, MR, US, RGB SC...)": ("image", dicoms["transfer_syntax_misc"]),
            "OOD: MedPix CT/MR JPEGs": ("image", medpix_imgs),
            "OOD: app window screenshots (offscreen)": ("image", shots),
            "OOD: generated UI-like images": ("image", ui),
            "OOD: synthesized natural-looking photos": ("image", photos),
            "OOD: IU chest X-ray report texts": ("text", iu_texts),
            "OOD: MedPix CT/MR captions": ("text", medpix_caps[:100]),
        }
        evaluate(session, args.bits, groups, rows)
        session.close()
        headers = ["queries", "kind", "n", "failed to decode", "flagged by codes", "by image statistics",
                   "by image features", "by words", "flagged (what search reports)", "flagged rate"]
        md.paragraph(f"Fundus library: {ingest_report.added} ODIR-5K images (rows 0-{args.library_size - 1} of "
                     f"pairs.jsonl), BASE, {args.backbone} backbone, {args.epochs} epochs, {args.bits} bits; "
                     f"library + training took {build_s:.0f} s. Score = mean Hamming distance to the 5 nearest "
                     f"library codes of the query's kind; threshold = 99th percentile of held-out library "
                     f"items' leave-one-out scores + 1 bit. Image queries are also checked by image statistics "
                     f"(core/image_stats.py: 30 model-free numbers; k-NN distance to the library's images, "
                     f"threshold the 99th percentile of held-out library images) and by image features "
                     f"(core/search/feature_ood.py: mean cosine distance of the backbone's pooled frozen-stem "
                     f"features to the 5 nearest of up to 1,000 library images, threshold 1.25 x the 99th "
                     f"percentile of held-out library images); report queries also by words "
                     f"(core/search/lexical.py: TF-IDF over the library's reports and their sentences, word 1-2 "
                     f"grams + char 3-5 grams; score = mean over the query's sentences of 1 - cosine similarity "
                     f"to the most similar unit; out above 1.5 x the 99th percentile of held-out units scored "
                     f"against the other reports, typical at or below the percentile itself and 0.5). Search reports an "
                     f"image query out of domain when any image check says so; a report query when its wording "
                     f"is foreign, or when the codes say so and its wording is not typical.")
        md.heading("Fundus library")
        md.table(headers, rows)

        if not args.skip_chest_library:
            from medhash_app.core.demo.generator import generate_demo_dataset

            demo = generate_demo_dataset(tmp / "demo", n_chest=360, n_fundus=0, seed=3)
            demo_rows = [json.loads(line) for line in demo.read_text().splitlines() if line.strip()]
            lib_rows, held_rows = demo_rows[:300], demo_rows[300:]
            for r in demo_rows:
                r["image"] = str((demo.parent / r["image"]).resolve())
            chest_manifest = tmp / "m" / "chest-lib.jsonl"
            chest_manifest.write_text("".join(json.dumps(r) + "\n" for r in lib_rows), encoding="utf-8")
            t0 = time.perf_counter()
            chest, chest_report = build_library(tmp / "chest-lib", chest_manifest, args.backbone, args.epochs,
                                                args.bits)
            chest_s = time.perf_counter() - t0
            chest_rows: list = []
            evaluate(chest, args.bits, {
                "in domain: held-out demo chest radiographs": ("image", [Path(r["image"]) for r in held_rows]),
                "in domain: held-out demo chest reports": ("text", [r["report"] for r in held_rows]),
                "OOD: ODIR fundus photographs": ("image", held[:100]),
                "OOD: real chest X-ray DICOMs (other source)": ("image", dicoms["xray_chest"]),
                "OOD: ODIR fundus reports": ("text", held_reports[:100]),
            }, chest_rows)
            chest.close()
            md.heading("Chest library, the other way")
            md.paragraph(f"{chest_report.added} generated demo chest radiographs (medhash_app/core/demo), same "
                         f"training; {chest_s:.0f} s. The real chest DICOMs are a different source (real vs "
                         f"generated), listed for what they show, not as a target.")
            md.table(headers, chest_rows)
        md.paragraph(f"Whole run: {time.perf_counter() - started:.0f} s.")
        md.emit(args.out, load)


if __name__ == "__main__":
    main()
