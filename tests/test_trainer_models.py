"""Backbone interface, BASE codes (per-sample, per-modality), prompts, registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.config import ModelConfig
from trainer.errors import MedHashError
from trainer.models import available_methods, build_backbone, build_model
from trainer.models.towers import TokenTower

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: no thread hand-offs


def _tiny_model(**kw) -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="tiny", bits=[16, 32], embed_dim=32, label_names=["a", "b"], **kw)
    return build_model(cfg).eval()


def test_tiny_backbone_shapes_and_split() -> None:
    bb = build_backbone("tiny").eval()
    x = torch.randn(3, 3, 64, 64)
    tok = bb.tokenize(["one two", "three", "four five six seven"])
    assert tok["input_ids"].shape == (3, 5) and tok["attention_mask"].sum().item() == 3 + 2 + 5
    assert bb.image_tokens(x).shape == (3, 64, bb.image_token_dim)  # 8x8 feature map as tokens
    assert bb.text_tokens(tok).shape == (3, 5, bb.text_token_dim)
    assert bb.image_global(x).shape == (3, bb.image_global_dim)
    assert torch.allclose(bb.image_top(bb.image_stem(x)), bb.image_tokens(x))


def test_freeze_except_top_trains_only_the_last_blocks() -> None:
    bb = build_backbone("tiny")
    bb.freeze_except_top(1)
    assert all(p.requires_grad for p in bb.convs[-1].parameters())
    assert not any(p.requires_grad for p in bb.convs[0].parameters())
    assert not any(p.requires_grad for p in bb.stem.parameters()) and not bb.tok_emb.weight.requires_grad
    assert all(p.requires_grad for p in bb.layers[-1].parameters()) and bb.img_norm.weight.requires_grad
    with torch.enable_grad():
        assert not bb.image_stem(torch.randn(1, 3, 64, 64)).requires_grad  # frozen stem builds no graph
    bb.freeze_except_top(0)
    assert not any(p.requires_grad for p in bb.parameters())


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_codes_do_not_depend_on_the_rest_of_the_batch(norm: str) -> None:
    model = _tiny_model(options={"feature_norm": norm})
    if norm == "batch":  # running statistics of a few training batches, then eval as always
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model.encode_image(torch.randn(8, 3, 64, 64) * 3 + 1)
        model.eval()
        assert isinstance(model.image_proj.net[0], nn.BatchNorm1d) and model.image_proj.net[0].num_batches_tracked > 0
    torch.manual_seed(1)
    images = torch.randn(6, 3, 64, 64)
    texts = ["a", "b c d e f g h", "effusion", "no acute disease at all", "x y", "cardiomegaly"]
    with torch.no_grad():
        alone_img = model.encode_image(images[2:3])
        alone_txt = model.encode_text(model.backbone.tokenize(texts[2:3]))
        for order in ([2, 0, 1], [5, 4, 3, 2], list(range(6))):
            pos = order.index(2)
            img = model.encode_image(images[order])
            txt = model.encode_text(model.backbone.tokenize([texts[i] for i in order]))  # other padding
            for b in model.bits:
                assert torch.allclose(img[b][pos], alone_img[b][0], atol=1e-5)
                assert torch.allclose(txt[b][pos], alone_txt[b][0], atol=1e-5)
        codes = model.encode_image(images)
    assert set(codes) == {16, 32} and codes[32].shape == (6, 32) and codes[32].abs().max() < 1
    emb = model.embed_text(model.backbone.tokenize(texts))
    assert torch.allclose(emb.norm(dim=-1), torch.ones(6))


def _calls(modules: list[nn.Module]) -> tuple[list[int], list]:
    seen: list[int] = []
    handles = [m.register_forward_pre_hook(lambda *_: seen.append(1)) for m in modules]
    return seen, handles


def test_each_modality_is_encoded_from_its_own_inputs_only() -> None:
    model = _tiny_model()
    bb = model.backbone
    text_side = [bb.tok_emb, *bb.layers, bb.txt_norm, model.text_proj, model.text_hash]
    image_side = [bb.stem, *bb.convs, bb.img_norm, model.image_proj, model.image_hash]
    seen_text, handles = _calls(text_side)
    with torch.no_grad():
        model.encode_image(torch.randn(2, 3, 64, 64))
        model.embed_image(torch.randn(2, 3, 64, 64))
    assert seen_text == []
    seen_image, more = _calls(image_side)
    with torch.no_grad():
        model.encode_text(bb.tokenize(["a b", "c"]))
    assert seen_image == [] and seen_text  # the text path ran, the image path did not
    for h in handles + more:
        h.remove()


def test_batchnorm_stays_in_eval_mode_while_training() -> None:
    model = _tiny_model()
    model.backbone.add_module("bn", nn.BatchNorm2d(3))
    model.train()
    assert model.training and model.backbone.bn.training is False


def test_prompts_enter_the_top_text_layers_and_are_stripped() -> None:
    bb = build_backbone("tiny").eval()
    tok = bb.tokenize(["pleural effusion on the left", "normal"])
    prompts = [torch.randn(4, bb.text_token_dim), torch.randn(2, 3, bb.text_token_dim)]  # shared / per sample
    with torch.no_grad():
        plain, prompted = bb.text_tokens(tok), bb.text_tokens(tok, prompts=prompts)
    assert prompted.shape == plain.shape and not torch.allclose(prompted, plain)
    with pytest.raises(NotImplementedError, match="TokenTower"):
        bb.image_tokens(torch.randn(1, 3, 64, 64), prompts=[torch.randn(2, bb.image_token_dim)])
    tower = TokenTower(bb.image_token_dim, dim=32, depth=2, heads=4).eval()
    feats = bb.image_tokens(torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        out, out_p = tower(feats), tower(feats, prompts=[None, torch.randn(5, 32)])
    assert out.shape == (2, 65, 32) and out_p.shape == out.shape and not torch.allclose(out, out_p)


def test_loss_terms_follow_the_switches() -> None:
    from trainer.config import TrainConfig
    from trainer.data.dataset import Batch

    model = _tiny_model(components={"bit_balance": True, "classifier": True, "quantization": False})
    model.train()
    tok = model.backbone.tokenize(["a", "b", "c"])
    batch = Batch(torch.randn(3, 3, 64, 64), tok, torch.tensor([[1.0, 0], [0, 1], [1, 1]]), torch.arange(3))
    terms = model.loss_terms(batch, TrainConfig(), epoch=1)
    assert set(terms) == {"contrastive", "similarity", "bit_balance", "classifier"}
    sum(terms.values()).backward()
    assert model.image_hash.layers["16"].weight.grad is not None
    assert model.backbone.stem[0].weight.grad is None  # frozen stem


def test_registry_names_unknown_methods() -> None:
    assert "base" in available_methods()
    with pytest.raises(MedHashError, match="unknown method 'no-such-method'"):
        build_model(ModelConfig(method="no-such-method", backbone="tiny"))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet")


def test_feature_norm_option_is_checked() -> None:
    assert isinstance(_tiny_model().text_proj.net[0], nn.LayerNorm)  # the default, as all results were measured
    with pytest.raises(MedHashError, match="feature_norm must be one of"):
        _tiny_model(options={"feature_norm": "group"})
