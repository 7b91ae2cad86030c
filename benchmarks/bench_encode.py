"""Encode throughput on CPU: the `embedded` backbone next to open_clip ViT-B-16 (random weights).

Both run as BASE hashing models with 64-bit codes (`trainer.models.build_model`), in eval mode
under `torch.inference_mode`. Inputs are real: ODIR-5K fundus photographs made into model inputs
the way ingest and search do it (`imaging.load_image` -> `imaging.model_image` ->
`backbone.preprocess`, 224 px), and IU X-ray reports (findings + impression) tokenised by each
backbone's tokenizer. Inputs are prepared before the clock starts; preprocessing and tokenisation
are timed separately. Measured per backbone and modality:
- batch of B (default 32): items/s from the median batch time (p90 too), several repeats;
- batch of 1: ms per item (the interactive query), for `encode_*` alone and for `encode_*` +
  `embed_*` (codes + the re-ranking embedding, what `EncoderService` runs per query);
- batch-1 image encode of the embedded backbone in child processes with OMP_WAIT_POLICY=PASSIVE
  (what `medhash` sets) and ACTIVE (OpenMP's default: idle threads spin), since on a shared,
  busy machine spinning threads make every parallel region wait for a descheduled thread.

This script sets OMP_WAIT_POLICY=PASSIVE before torch loads, as the `medhash` command does
(override by setting it in the environment).

    python benchmarks/bench_encode.py                  # full run (~5 min on 2 busy cores)
    python benchmarks/bench_encode.py --quick          # smoke run, < 1 min, writes to /tmp

Needs ../shared/data (or MEDHASH_SHARED_DATA); exits 0 with a message when it is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as medhash_app/cli.py, before torch loads OpenMP

import torch
from benchkit import RESULTS, LoadMonitor, MarkdownReport, Stats, command_line, require_shared
from PIL import Image

from medhash_app.core.imaging import load_image, model_image
from trainer.config import ModelConfig
from trainer.models import build_model

BACKBONES = {"embedded": "embedded (EfficientNet-Lite0 + MiniLM-L6)",
             "open_clip:ViT-B-16": "open_clip ViT-B-16 (random weights)"}


@dataclass
class Inputs:
    images: list[Image.Image]  # model images (256 px letterboxed RGB), before backbone preprocessing
    texts: list[str]


@dataclass
class Row:
    backbone: str
    modality: str
    what: str
    batch: int
    seconds: Stats  # per call

    @property
    def items_per_s(self) -> float:
        return self.batch / self.seconds.median

    @property
    def ms_per_item(self) -> tuple[float, float]:
        return self.seconds.median * 1e3 / self.batch, self.seconds.p90 * 1e3 / self.batch


# ------------------------------------------------------------------------------------ inputs
def real_inputs(count: int) -> Inputs:
    """`count` ODIR-5K photos through the product's image path, and `count` IU X-ray reports."""
    manifest = require_shared("odir5k-256", "pairs.jsonl")
    reports = require_shared("iu-reports.jsonl")
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()[:count]]
    images = [model_image(load_image(manifest.parent / r["image"])) for r in rows]
    texts = []
    for line in reports.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        text = " ".join(t for t in (r.get("findings"), r.get("impression")) if t)
        if text.strip():
            texts.append(text)
        if len(texts) == count:
            break
    return Inputs(images, texts)


def build(spec: str) -> torch.nn.Module:
    """A BASE model with 64-bit codes; random weights for open_clip (timing does not need weights)."""
    cfg = ModelConfig(method="base", backbone=spec, bits=[64])
    return build_model(cfg, pretrained=spec == "embedded").eval()


# ------------------------------------------------------------------------------------ timing
def repeat(fn: Callable[[int], object], repeats: int) -> Stats:
    """Seconds per call of fn(i) for i in range(repeats), after one untimed warm-up call."""
    fn(0)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return Stats.of(times)


def measure_backbone(spec: str, inputs: Inputs, batch: int, repeats: int, singles: int) -> tuple[list[Row], dict]:
    """Batch-B and batch-1 timings of both towers, plus preprocessing/tokenising cost per item."""
    model = build(spec)
    backbone = model.backbone
    prep = repeat(lambda i: backbone.preprocess(inputs.images[i % len(inputs.images)]), singles)
    x = torch.stack([backbone.preprocess(im) for im in inputs.images])
    tok = repeat(lambda i: backbone.tokenize(inputs.texts[i % len(inputs.texts)]), singles)
    n_batches = max(1, len(inputs.texts) // batch)
    tokens = [backbone.tokenize(inputs.texts[j * batch:(j + 1) * batch]) for j in range(n_batches)]
    singles_tok = [backbone.tokenize([t]) for t in inputs.texts[:singles + 1]]

    def img(b: int, embed: bool = False) -> Callable[[int], object]:
        def run(i: int) -> None:
            start = (i * b) % (len(x) - b + 1)
            chunk = x[start:start + b]
            model.encode_image(chunk)
            if embed:
                model.embed_image(chunk)
        return run

    def txt(pool: list[dict], embed: bool = False) -> Callable[[int], object]:
        def run(i: int) -> None:
            t = pool[i % len(pool)]
            model.encode_text(t)
            if embed:
                model.embed_text(t)
        return run

    name = BACKBONES[spec]
    rows = []
    with torch.inference_mode():
        for modality, batched, single in (("image", img(batch), img(1)), ("text", txt(tokens), txt(singles_tok))):
            rows.append(Row(name, modality, "encode", batch, repeat(batched, repeats)))
            rows.append(Row(name, modality, "encode", 1, repeat(single, singles)))
            both = img(1, embed=True) if modality == "image" else txt(singles_tok, embed=True)
            rows.append(Row(name, modality, "encode + embed", 1, repeat(both, singles)))
            print(f"{name} {modality}: {rows[-3].items_per_s:.1f}/s at batch {batch}, "
                  f"{rows[-2].ms_per_item[0]:.0f} ms at batch 1", flush=True)
    lengths = [int(t["attention_mask"].sum(dim=1).float().mean()) for t in tokens]
    extra = {"preprocess_ms": prep.median * 1e3, "tokenize_ms": tok.median * 1e3,
             "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
             "tokens": f"mean {_span(lengths)} real tokens per text (per batch), first batch "
                       f"padded to {tokens[0]['input_ids'].shape[1]}"}
    return rows, extra


def policy_probe(singles: int) -> None:
    """Child-process mode: time batch-1 embedded image encodes and print the seconds as JSON."""
    model = build("embedded")
    x = model.backbone.preprocess(real_inputs(1).images[0])[None]
    with torch.inference_mode():
        stats = repeat(lambda i: model.encode_image(x), singles)
    print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"), "median": stats.median, "p90": stats.p90,
                      "n": stats.n, "threads": torch.get_num_threads()}))


def compare_wait_policies(singles: int) -> list[dict]:
    """Batch-1 embedded image encode in fresh processes under each OpenMP wait policy."""
    results = []
    for policy in ("PASSIVE", "ACTIVE"):
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        proc = subprocess.run([sys.executable, __file__, "--policy-probe", "--singles", str(singles)],
                              env=env, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"OMP_WAIT_POLICY={policy}: {results[-1]['median'] * 1e3:.0f} ms per image", flush=True)
    return results


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


# ------------------------------------------------------------------------------------ report
def write_report(out: Path, rows: list[Row], extras: dict[str, dict], policies: list[dict],
                 load: LoadMonitor) -> None:
    report = MarkdownReport("Encode throughput on CPU: embedded backbone vs open_clip ViT-B-16", command_line())
    report.paragraph(
        f"BASE model, 64-bit codes, eval mode, `torch.inference_mode`, {torch.get_num_threads()} torch "
        f"threads (torch's default here is one per core), OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}. Images: real ODIR-5K photos through "
        "`imaging.load_image` -> `model_image` -> `backbone.preprocess` (224 px), prepared before timing. "
        "Texts: real IU X-ray reports (findings + impression), tokenised before timing. `encode` = "
        "`encode_image` / `encode_text` (the hash codes); `encode + embed` adds `embed_image` / "
        "`embed_text`, which `EncoderService` also calls for every query and stored case (a second "
        "forward pass through the tower). Each timing: one untimed warm-up call, then the repeats; "
        "items/s from the median.")
    report.table(
        ["backbone", "modality", "what", "batch", "runs", "items/s (median)", "ms/item median", "ms/item p90"],
        [[r.backbone, r.modality, r.what, r.batch, r.seconds.n, r.items_per_s, *r.ms_per_item] for r in rows])
    report.heading("Inputs and models")
    report.table(["backbone", "parameters (M)", "preprocess ms/image", "tokenize ms/text", "text lengths"],
                 [[BACKBONES[s], e["params_m"], e["preprocess_ms"], e["tokenize_ms"], e["tokens"]]
                  for s, e in extras.items()])
    if policies:
        report.heading("OpenMP wait policy on a busy machine")
        report.paragraph(
            "Batch-1 image encode (embedded backbone, same input each time) in a fresh process per policy. "
            "ACTIVE (OpenMP's default when nothing sets it) keeps idle worker threads spinning; when "
            "other processes hold the cores, each parallel region then waits for a descheduled thread. "
            "`medhash` sets PASSIVE before torch loads; a process that imports torch first does not.")
        report.table(["OMP_WAIT_POLICY", "torch threads", "runs", "ms/image median", "ms/image p90"],
                     [[p["policy"], p["threads"], p["n"], p["median"] * 1e3, p["p90"] * 1e3] for p in policies])
    report.write(out, load)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per measurement")
    parser.add_argument("--singles", type=int, default=20, help="timed batch-1 calls per measurement")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated specs")
    parser.add_argument("--quick", action="store_true",
                        help="embedded only, batch 4, 2 repeats, 3 singles; result to /tmp")
    parser.add_argument("--no-policy-check", action="store_true", help="skip the OMP_WAIT_POLICY comparison")
    parser.add_argument("--policy-probe", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--out", type=Path, help="results file (default benchmarks/results/encode.md)")
    args = parser.parse_args()
    if args.policy_probe:
        policy_probe(args.singles)
        return 0
    if args.quick:
        args.batch, args.repeats, args.singles, args.backbones = 4, 2, 3, "embedded"
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or (Path("/tmp/medhash-bench-encode-quick.md") if args.quick else RESULTS / "encode.md")
    inputs = real_inputs(max(2 * args.batch, args.singles + 1))
    rows: list[Row] = []
    extras: dict[str, dict] = {}
    with LoadMonitor() as load:
        for spec in args.backbones.split(","):
            spec_rows, extras[spec] = measure_backbone(spec, inputs, args.batch, args.repeats, args.singles)
            rows += spec_rows
        policies = [] if args.no_policy_check else compare_wait_policies(args.singles)
    write_report(out, rows, extras, policies, load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
