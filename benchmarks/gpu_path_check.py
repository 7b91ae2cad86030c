"""Prove the CUDA path end to end and compare it with the CPU path on the same checkpoint.

Builds a demo library (generated data, tiny backbone by default so it runs anywhere), trains on
the best device, then encodes the same cases with the checkpoint on CPU and on CUDA and reports
the share of identical bits, the encode throughput of each, and which FAISS index kind search used.

    python benchmarks/gpu_path_check.py --out benchmarks/results/gpu_path.md
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medhash_app.core.demo.generator import generate_demo_dataset
from medhash_app.core.encoder import EncoderService
from medhash_app.core.index.binary_index import gpu_available
from medhash_app.core.search import SearchQuery
from medhash_app.core.session import MedHashSession
from medhash_app.core.training import TrainRequest, train_on_library


def _timed_encode(encoder: EncoderService, images: list[Image.Image], texts: list[str]) -> tuple[dict, float, float]:
    encoder.encode_pil(images[:8])  # warm-up (CUDA context, kernels)
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    img = encoder.encode_pil(images)
    t1 = time.perf_counter()
    txt = encoder.encode_texts(texts)
    if encoder.device.startswith("cuda"):
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    return {"image": img, "text": txt}, len(images) / (t1 - t0), len(texts) / (t2 - t1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="medhash-gpu-"))
    manifest = generate_demo_dataset(root / "source", workers=4)
    with MedHashSession(root / "library", create=True) as session:
        session.ingest([manifest])
        outcome = train_on_library(session, TrainRequest(method="base", bits=[32, 64], epochs=args.epochs,
                                                         backbone=args.backbone, seed=0))
        cases = list(session.library.iter_cases())
        images = [Image.open(session.library.path_of(c["input_path"])).convert("RGB") for c in cases]
        texts = [c["report"] for c in cases]
        result = session.search(SearchQuery(text="Large right pleural effusion.", k=5))
        train_device = session.device
    rows = {}
    codes = {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        enc = EncoderService(outcome.checkpoint, device=device)
        codes[device], ips, tps = _timed_encode(enc, images, texts)
        rows[device] = (ips, tps)
    lines = [(f"# CUDA path check\n\nCommand: `python benchmarks/gpu_path_check.py --backbone {args.backbone} "
             f"--epochs {args.epochs}`\n"),
             f"Machine: {platform.node()} {platform.machine()}, torch {torch.__version__}, "
             f"CUDA available: {torch.cuda.is_available()}"
             + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
             + f"; FAISS GPU: {gpu_available()}\n",
             (f"Trained on `{train_device}` ({len(cases)} demo cases, backbone {args.backbone}); "
             f"search ran on `{result.device}` in {result.total_ms:.1f} ms "
             f"(encode {result.encode_ms:.1f}, search {result.search_ms:.1f}).\n"),
             "| device | images/s | texts/s |", "|---|---:|---:|"]
    lines += [f"| {d} | {ips:.0f} | {tps:.0f} |" for d, (ips, tps) in rows.items()]
    if "cuda" in codes:
        lines.append("\nSame checkpoint, CPU vs CUDA codes:\n")
        for mod in ("image", "text"):
            for bits in codes["cpu"][mod].codes:
                a = np.unpackbits(codes["cpu"][mod].codes[bits], axis=1)
                b = np.unpackbits(codes["cuda"][mod].codes[bits], axis=1)
                lines.append(f"- {mod} {bits} bits: {100 * (a == b).mean():.3f} % identical bits, "
                             f"{100 * (a == b).all(axis=1).mean():.1f} % identical codes")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps({"nvidia_smi": subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
                      if torch.cuda.is_available() else ""}))
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
