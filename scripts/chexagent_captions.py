"""Caption chest radiographs offline with CheXagent, for MCPH's visual/textual prompts.

MCPH (MICCAI 2024) prompts its towers with a caption of each image written by a medical
vision-language model (CheXagent). This script runs CheXagent through `transformers` from a LOCAL
weights folder (nothing is downloaded: local_files_only=True, HF offline mode) and writes a
captions file that `trainer.data.captions.load_captions` reads (JSONL or CSV by suffix):

    python scripts/chexagent_captions.py --weights /models/CheXagent-8b \
        --manifest pairs.jsonl --out captions.jsonl            # keys: the manifest ids
    python scripts/chexagent_captions.py --weights /models/CheXagent-8b \
        --images /data/cxr --out captions.csv                  # keys: the image paths

Only the image is shown to CheXagent, never the report. Rows are appended as they are made, so an
interrupted run resumes where it stopped (keys already in --out are skipped). The folder must hold
a CheXagent-8b style checkpoint (config.json, its remote code, weights, processor/tokenizer
files); `trust_remote_code=True` runs the Python files in that folder, so use a folder you trust.
It needs a GPU (use --device cpu only to test a small setup).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from trainer.data.captions import load_captions
from trainer.data.manifest import load_manifest
from trainer.errors import DataError, MedHashError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom")
DEFAULT_PROMPT = "Describe the findings in this chest X-ray in one or two sentences."
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json",
                    "tokenizer.json", "tokenizer.model")

CaptionFn = Callable[[Path], str]


# ---- the weights folder ------------------------------------------------------------------------------
def check_weights_folder(folder: str | Path) -> Path:
    """Raise MedHashError naming what is missing unless `folder` holds a complete local checkpoint."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedHashError(folder, "CheXagent weights folder not found (download it yourself; this script never does)")
    if not (folder / "config.json").is_file():
        raise MedHashError(folder, "config.json is missing: not a transformers checkpoint folder")
    for name in _INDEX_FILES:
        index = folder / name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise MedHashError(index, "weights index is unreadable") from exc
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                raise MedHashError(folder, f"incomplete weights: {len(missing)} shard(s) missing, e.g. {missing[0]}")
            break
    else:
        if not any(any(folder.glob(p)) for p in _WEIGHT_PATTERNS):
            raise MedHashError(folder, "no weights file (*.safetensors or pytorch_model*.bin) in the folder")
    if not any((folder / name).is_file() for name in _PROCESSOR_FILES):
        raise MedHashError(folder, "no processor/tokenizer files (preprocessor_config.json, tokenizer_config.json)")
    return folder


def load_chexagent(folder: Path, device: str, dtype_name: str) -> CaptionFn:
    """Load CheXagent from `folder` only and return image path -> caption."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor, GenerationConfig

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MedHashError(device, "no CUDA GPU is available; CheXagent needs one (or pass --device cpu)")
    dtype = getattr(torch, dtype_name)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": True}
    try:
        processor = AutoProcessor.from_pretrained(str(folder), **common)
        generation = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=dtype, **common).to(device).eval()
    except (OSError, ValueError, ImportError, KeyError) as exc:
        raise MedHashError(folder, f"cannot load CheXagent from this folder ({exc.__class__.__name__}: "
                                   f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc

    def caption(path: Path, prompt: str = DEFAULT_PROMPT) -> str:
        image = read_image(path)
        inputs = processor(images=[image], text=f" USER: <s>{prompt} ASSISTANT: <s>", return_tensors="pt")
        inputs = inputs.to(device=device, dtype=dtype)
        with torch.inference_mode():
            output = model.generate(**inputs, generation_config=generation)[0]
        return processor.tokenizer.decode(output, skip_special_tokens=True).strip()

    return caption


def read_image(path: Path):
    """The image as 8-bit RGB through the app's one decode path (DICOM windowing, MONOCHROME1, ...)."""
    from PIL import Image

    from medhash_app.core.imaging import load_image

    display = load_image(path).display
    return Image.fromarray(display).convert("RGB")


# ---- inputs and the captions file ----------------------------------------------------------------------
def list_inputs(manifest: Path | None = None, images: Path | None = None) -> list[tuple[str, str, Path]]:
    """(key column, key, image path) to caption: manifest ids, or every image file under a folder."""
    if (manifest is None) == (images is None):
        raise MedHashError(None, "give exactly one of --manifest or --images")
    if manifest is not None:
        return [("id", s.id, Path(s.image_path)) for s in load_manifest(manifest)]
    if not images.is_dir():
        raise DataError(images, "images folder not found")
    files = sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(images, f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    return [("image", str(p.resolve()), p) for p in files]


def done_keys(out: Path) -> set[str]:
    """Keys already captioned in `out` (resume); empty when the file does not exist yet."""
    return set(load_captions(out)) if out.is_file() and out.stat().st_size > 0 else set()


def _append(out: Path, row: dict[str, str]) -> None:
    new = not out.is_file() or out.stat().st_size == 0
    with out.open("a", encoding="utf-8", newline="") as fh:
        if out.suffix.lower() == ".jsonl":
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        fh.flush()


def caption_all(inputs: Iterable[tuple[str, str, Path]], out: Path, caption_fn: CaptionFn) -> Iterator[str]:
    """Caption every input not yet in `out`, appending one row each; yields the keys written.

    An unreadable image is reported on stderr and skipped; the rest goes on.
    """
    if out.suffix.lower() not in (".jsonl", ".csv"):
        raise DataError(out, "output must be a .jsonl or .csv file")
    out.parent.mkdir(parents=True, exist_ok=True)
    skip = done_keys(out)
    for column, key, path in inputs:
        if key in skip:
            continue
        try:
            text = " ".join(caption_fn(path).split())
        except MedHashError as exc:
            print(f"skipped {exc}", file=sys.stderr)
            continue
        if not text:
            print(f"skipped {path}: CheXagent returned an empty caption", file=sys.stderr)
            continue
        _append(out, {column: key, "caption": text})
        yield key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="local CheXagent folder (never downloaded)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="JSONL/CSV manifest: captions keyed by its ids")
    source.add_argument("--images", type=Path, help="folder of images: captions keyed by absolute path")
    parser.add_argument("--out", type=Path, required=True, help="captions file to write (.jsonl or .csv)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    args = parser.parse_args(argv)
    try:
        folder = check_weights_folder(args.weights)
        inputs = list_inputs(args.manifest, args.images)
        model = load_chexagent(folder, args.device, args.dtype)
        written = 0
        for _ in caption_all(inputs, args.out, lambda p: model(p, args.prompt)):
            written += 1
            print(f"\r{written} captioned", end="", file=sys.stderr)
        print(f"\n{written} new captions in {args.out}", file=sys.stderr)
    except MedHashError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
