"""The embedded backbone's plain-PyTorch form (trainer/models/embedded_lite.py) that queries are encoded
with: the same codes and embeddings as the open_clip/timm/transformers build of the same checkpoint,
weights loaded without random initialisation, and a `medhash search` that never imports torchvision,
open_clip, timm, transformers or torch._dynamo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.init
from PIL import Image

from trainer.checkpoint import load_checkpoint, save_checkpoint, skip_init
from trainer.config import ModelConfig
from trainer.data.transforms import eval_transform
from trainer.models import build_model

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["Large left pleural effusion. Heart size is enlarged.", "No acute cardiopulmonary disease. " * 60,
         "Œdème pulmonaire bilatéral, cardiomégalie.", "moderate non proliferative retinopathy", "x"]
HEAVY = ("torchvision", "open_clip", "timm", "transformers", "torch._dynamo", "sympy")


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    grey = Image.fromarray((np.linspace(0, 255, 300 * 220).reshape(220, 300)).astype(np.uint8)).convert("RGB")
    noise = Image.fromarray(rng.integers(0, 256, (180, 180, 3), dtype=np.uint8))
    return [grey, noise, grey.rotate(20), Image.new("RGB", (224, 224), (30, 60, 90))]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded BASE checkpoint with the real pretrained towers and trained-looking (random) heads."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(method="base", backbone="embedded", bits=[16, 64]))
    return save_checkpoint(tmp_path_factory.mktemp("lite") / "ck", model, meta={})


def test_lite_model_encodes_exactly_as_the_full_one(checkpoint: Path) -> None:
    full, _, _ = load_checkpoint(checkpoint)
    lite, _, _ = load_checkpoint(checkpoint, lite=True)
    assert type(lite.backbone.clip).__name__ == "LiteClip" and type(full.backbone.clip).__name__ != "LiteClip"
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), lite.state_dict().values()))
    x_full = torch.stack([full.backbone.preprocess(im) for im in _images()])
    x_lite = torch.stack([lite.backbone.preprocess(im) for im in _images()])
    assert torch.equal(x_full, x_lite)
    tok_full, tok_lite = full.backbone.tokenize(TEXTS), lite.backbone.tokenize(TEXTS)
    assert all(torch.equal(tok_full[k], tok_lite[k]) for k in ("input_ids", "attention_mask"))
    assert tok_full["input_ids"].shape[1] == 256  # the long report is cut at the tower's window
    with torch.inference_mode():
        assert torch.equal(full.embed_image(x_full), lite.embed_image(x_lite))
        assert torch.equal(full.embed_text(tok_full), lite.embed_text(tok_lite))
        for got, want in ((lite.encode_image(x_lite), full.encode_image(x_full)),
                          (lite.encode_text(tok_lite), full.encode_text(tok_full))):
            assert all(torch.equal(got[b], want[b]) for b in want)


def test_eval_transform_is_torchvisions() -> None:
    from torchvision.transforms import v2

    from trainer.data.transforms import Letterbox

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = v2.Compose([Letterbox(224), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(list(mean), list(std))])
    ours = eval_transform(224, mean, std)
    assert repr(ours) == repr(reference)  # feature caches are keyed by it
    for image in _images():
        assert torch.equal(ours(image), reference(image))


def test_skip_init_only_in_its_thread_and_only_inside() -> None:
    import threading

    original = torch.nn.init.normal_
    seen: dict[str, bool] = {}

    def other_thread() -> None:
        seen["other"] = bool(torch.nn.init.normal_(torch.zeros(1000)).abs().sum() > 0)

    with skip_init():
        seen["inside"] = bool(torch.nn.init.normal_(torch.zeros(1000)).abs().sum() > 0)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert seen == {"inside": False, "other": True}
    assert torch.nn.init.normal_ is original


def test_lite_load_skips_random_init(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No init function runs while the lite model is built (they would be overwritten at once)."""
    calls: list[str] = []
    real = torch.nn.init.kaiming_uniform_

    def counting(tensor, *args, **kwargs):
        calls.append("kaiming")
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", counting)
    load_checkpoint(checkpoint, lite=True)
    assert calls == []
    load_checkpoint(checkpoint)
    assert calls  # the full build initialises its Linear/Conv layers


def _library_with_embedded_model(folder: Path, checkpoint: Path) -> Path:
    from medhash_app.core.demo.generator import generate_demo_dataset
    from medhash_app.core.session import MedHashSession

    manifest = generate_demo_dataset(folder / "source", n_chest=6, n_fundus=6, seed=3)
    library = folder / "library"
    with MedHashSession(library, create=True, device="cpu") as session:
        session.ingest([manifest])
        session.register_checkpoint(checkpoint, activate=True, name="embedded")
        session.encode_library()
    return library


def test_cli_search_imports_no_heavy_module_and_ranks_as_the_full_model(checkpoint: Path, tmp_path: Path) -> None:
    from medhash_app.core.encoder.service import EncoderService
    from medhash_app.core.library import Library
    from medhash_app.core.session import MedHashSession
    from trainer.evaluate import hamming_distances

    library = _library_with_embedded_model(tmp_path, checkpoint)
    with Library.open(library) as lib:
        query = Path(next(c for c in lib.iter_cases() if c["domain"] == "chest")["source_path"])
    probe = ("import json, runpy, sys\n"
             "sys.argv = ['medhash', 'search', '--library', sys.argv[1], '--image', sys.argv[2], '--json', '-k', '8']\n"
             "try:\n    runpy.run_module('medhash_app.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe, str(library), str(query)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
    hits = [(h["distance"], h["case_id"]) for h in json.loads(done.stdout)["hits"]]
    with MedHashSession(library, device="cpu") as session:  # the full (open_clip) build of the same checkpoint
        model = session.active_model()
        code = EncoderService(checkpoint, "cpu", lite=False).encode_files([query]).codes[64][0]
        ids, codes = session.library.get_codes(model["id"], "text", 64)
    dist = hamming_distances(code[None, :], codes)[0]
    order = np.argsort(dist, kind="stable")[:8]
    assert hits == [(int(dist[i]), str(ids[i])) for i in order]
