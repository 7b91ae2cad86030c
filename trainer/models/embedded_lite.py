"""The embedded backbone's two towers in plain PyTorch, for loading a checkpoint to encode queries.

`medhash search` in a fresh process spent ~2-5 s importing open_clip, timm, transformers and (through
them) torchvision, torch._dynamo and sympy, only to build modules whose weights the checkpoint then
replaces. These modules have the same names, shapes and arithmetic as open_clip's CustomTextCLIP
around timm `efficientnet_lite0` and HF `BertModel` (MiniLM-L6, SDPA attention), so a checkpoint
saved from the full backbone loads into them strictly and encodes to the same codes
(tests/test_embedded_lite.py compares both on real inputs). Inference only: the dropout layers are
kept for parity, but training, and anything that needs the pretrained weights, uses the full
backbone (trainer/models/embedded.py). The tokenizer is the MiniLM folder's `tokenizer.json` through
the `tokenizers` library, set up as transformers' fast tokenizer is called there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# timm efficientnet_lite0: (block kind, repeats, kernel, first stride, expansion, out channels)
LITE0_STAGES = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
                ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
BERT = {"vocab": 30522, "hidden": 384, "layers": 6, "heads": 12, "intermediate": 1536, "positions": 512,
        "types": 2, "eps": 1e-12, "dropout": 0.1}


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: batch norm, then ReLU6 when `act` (same parameter names)."""

    def __init__(self, channels: int, act: bool) -> None:
        super().__init__(channels)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=((stride - 1) + (k - 1)) // 2, groups=groups, bias=False)


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv_dw, self.bn1 = _conv(cin, cin, k, stride, cin), BatchNormAct2d(cin, True)
        self.conv_pw, self.bn2 = _conv(cin, cout, 1), BatchNormAct2d(cout, False)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.conv_pw, self.bn1 = _conv(cin, mid, 1), BatchNormAct2d(mid, True)
        self.conv_dw, self.bn2 = _conv(mid, mid, k, stride, mid), BatchNormAct2d(mid, True)
        self.conv_pwl, self.bn3 = _conv(mid, cout, 1), BatchNormAct2d(cout, False)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return y + x if self.has_skip else y


class EfficientNetLite0(nn.Module):
    """The trunk: conv_stem/bn1, blocks[stage][i], conv_head/bn2 (the backbone runs them itself)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem, self.bn1 = _conv(3, STEM, 3, 2), BatchNormAct2d(STEM, True)
        stages, cin = [], STEM
        for kind, repeats, k, stride, expand, cout in LITE0_STAGES:
            blocks = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(DepthwiseSeparable(cin, cout, k, s) if kind == "ds"
                              else InvertedResidual(cin, cout, k, s, expand))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head, self.bn2 = _conv(cin, HEAD, 1), BatchNormAct2d(HEAD, True)


class BertEmbeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(BERT["vocab"], BERT["hidden"], padding_idx=0)
        self.position_embeddings = nn.Embedding(BERT["positions"], BERT["hidden"])
        self.token_type_embeddings = nn.Embedding(BERT["types"], BERT["hidden"])
        self.LayerNorm = nn.LayerNorm(BERT["hidden"], eps=BERT["eps"])
        self.dropout = nn.Dropout(BERT["dropout"])

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        h = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        h = h + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(h))


class _Linear(nn.Module):
    """`dense` + (LayerNorm of it + the residual), as HF's BertSelfOutput / BertOutput."""

    def __init__(self, cin: int, cout: int, norm: bool) -> None:
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        if norm:
            self.LayerNorm = nn.LayerNorm(cout, eps=BERT["eps"])
            self.dropout = nn.Dropout(BERT["dropout"])


class BertSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(BERT["hidden"], BERT["hidden"])
        self.key = nn.Linear(BERT["hidden"], BERT["hidden"])
        self.value = nn.Linear(BERT["hidden"], BERT["hidden"])
        self.dropout = nn.Dropout(BERT["dropout"])


class BertAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self = BertSelfAttention()
        self.output = _Linear(BERT["hidden"], BERT["hidden"], True)


class BertLayer(nn.Module):
    """One encoder layer; `forward(x, attention_mask=additive (B, 1, 1, L))` like HF's."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = BertAttention()
        self.intermediate = _Linear(BERT["hidden"], BERT["intermediate"], False)
        self.output = _Linear(BERT["intermediate"], BERT["hidden"], True)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        att = self.attention.self
        shape = (*x.shape[:-1], -1, BERT["hidden"] // BERT["heads"])
        q, k, v = (lin(x).view(*shape).transpose(1, 2) for lin in (att.query, att.key, att.value))
        dropout = att.dropout.p if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout,
                                           scale=(BERT["hidden"] // BERT["heads"]) ** -0.5)
        a = a.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1).contiguous()
        out = self.attention.output
        h = out.LayerNorm(out.dropout(out.dense(a)) + x)
        mid = F.gelu(self.intermediate.dense(h))
        return self.output.LayerNorm(self.output.dropout(self.output.dense(mid)) + h)


class BertEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer() for _ in range(BERT["layers"]))


class BertModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings()
        self.encoder = BertEncoder()


class LiteClip(nn.Module):
    """Module tree of open_clip's CustomTextCLIP as the embedded backbone uses it."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.trunk = EfficientNetLite0()
        self.visual.head = nn.Sequential()
        self.text = nn.Module()
        self.text.transformer = BertModel()
        self.logit_scale = nn.Parameter(torch.ones([]))


class Tokenizer:
    """MiniLM's WordPiece from its tokenizer.json: right-padded to the batch's longest, truncated to
    `max_length` (longest-first), [CLS] ... [SEP]; what HF's BertTokenizerFast returns when called
    with padding=True, truncation=True, max_length."""

    def __init__(self, folder: str | Path, max_length: int) -> None:
        from tokenizers import Tokenizer as Wordpiece

        self.max_length = max_length
        self._tok = Wordpiece.from_file(str(Path(folder) / "tokenizer.json"))
        self._tok.enable_truncation(max_length=max_length, strategy="longest_first", stride=0)
        self._tok.enable_padding(direction="right", pad_id=0, pad_type_id=0, pad_token="[PAD]")

    def __call__(self, texts: Sequence[str]) -> dict[str, Tensor]:
        encoded = self._tok.encode_batch(list(texts))
        return {"input_ids": torch.tensor([e.ids for e in encoded], dtype=torch.long),
                "attention_mask": torch.tensor([e.attention_mask for e in encoded], dtype=torch.long)}
