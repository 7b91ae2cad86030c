"""PromptHash: text affinity prompts, AGSF gating, per-sample / per-modality codes, losses,
ablation switches, and a short end-to-end fit on synthetic pairs (tiny backbone, CPU)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tests.trainer_synth import make_samples, tiny_model
from trainer.config import ModelConfig, TrainConfig
from trainer.data.dataset import Batch
from trainer.data.splits import make_splits
from trainer.engine import fit, mean_average_precision
from trainer.errors import MedHashError
from trainer.models import prompthash
from trainer.models.fusion import AGSF
from trainer.models.prompthash import affinity, class_prompt_names

LABELS = ["circle", "square", "triangle"]
TEXTS = ["there is a circle at the left of the picture", "a square", "triangle at the top, small",
         "circle right", "there is a large green square at the bottom of the picture today", "a triangle"]
SWITCHES = ("taap", "agsf", "pacl")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: no thread hand-offs


def make_model(components=None, options=None, seed=0, bits=(16, 32), labels=LABELS):
    return tiny_model("prompthash", labels, components, options, seed, bits)


def make_batch(model, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.eye(len(LABELS))[[i % len(LABELS) for i in range(n)]]
    return Batch(images=torch.rand(n, 3, 64, 64, generator=g), tokens=model.backbone.tokenizer((TEXTS * 3)[:n]),
                 labels=labels, index=torch.arange(n))


def close(a, b):
    return all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)


def test_class_prompt_names_read_as_words():
    assert class_prompt_names(["Pleural Effusion", "N", "D"])[0] == "pleural effusion"
    assert class_prompt_names(["N"]) == ["normal"]


def test_codes_are_per_sample_and_per_modality():
    model = make_model().eval()
    batch = make_batch(model)
    with torch.no_grad():
        together = model.encode_image(batch.images)
        alone = model.encode_image(batch.images[2:3])
        assert close({b: c[2:3] for b, c in together.items()}, alone)
        others = batch.images.clone()
        others[:2] = torch.rand_like(others[:2])
        assert close({b: c[2:] for b, c in model.encode_image(others).items()}, {b: c[2:] for b, c in together.items()})
        texts = model.encode_text(batch.tokens)
        for i in (1, 4):
            single = model.encode_text(model.backbone.tokenizer([TEXTS[i]]))
            assert close({b: c[i:i + 1] for b, c in texts.items()}, single)


def test_taap_context_tokens_learn_and_steer_both_modalities():
    model = make_model().eval()
    batch = make_batch(model, n=3)
    prompts = model.class_prompts
    assert prompts.ids.requires_grad is False and prompts.ctx.requires_grad
    glob, local = prompts()
    assert glob.shape == local.shape == (3, 16)
    assert torch.cdist(glob, glob).triu(1).sum() > 0  # one distinct prompt per class
    with torch.no_grad():
        before_img, before_txt = model.encode_image(batch.images), model.encode_text(batch.tokens)
        prompts.ctx.add_(torch.randn_like(prompts.ctx))
        assert not close(before_txt, model.encode_text(batch.tokens))
        assert not close(before_img, model.encode_image(batch.images))  # AGSF reads the image's own affinity
    model.train()
    terms = model.loss_terms(make_batch(model), TrainConfig(), epoch=1)
    sum(terms.values()).backward()
    assert prompts.ctx.grad is not None and prompts.ctx.grad.abs().sum() > 0


def test_affinity_is_a_distribution_over_classes():
    torch.manual_seed(0)
    p = torch.randn(3, 8)
    a = affinity(torch.cat([p[1:2], torch.randn(2, 8)]), p, 0.07)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(3))
    assert int(a[0].argmax()) == 1


def test_agsf_gate_selects_between_state_space_and_attention_paths():
    torch.manual_seed(0)
    agsf = AGSF(16, d_state=4, backend="torch").eval()
    g, t, p = torch.randn(2, 16), torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        mixed, _ = agsf(g, t, None, p)
        agsf.gate.bias.fill_(50.0)  # gate open: attention path only
        open_, _ = agsf(g, t, None, p)
        agsf.gate.bias.fill_(-50.0)  # gate shut: the state-space path only, the prompt view ignored
        shut, _ = agsf(g, t, None, p)
        shut_other_prompt, _ = agsf(g, t, None, torch.randn(2, 3, 16))
    assert not torch.allclose(mixed, open_) and not torch.allclose(mixed, shut)
    torch.testing.assert_close(shut, shut_other_prompt)


def test_agsf_is_per_sample_with_padding():
    torch.manual_seed(0)
    agsf = AGSF(16, d_state=4, backend="torch").eval()
    g, t = torch.randn(2, 16), torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6]).bool()
    with torch.no_grad():
        fused, local = agsf(g, t, mask)
        alone, local_alone = agsf(g[:1], t[:1, :3], None)
    torch.testing.assert_close(fused[:1], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(local[:1], local_alone, rtol=1e-4, atol=1e-5)


def test_taap_needs_label_names_unless_switched_off():
    with pytest.raises(MedHashError, match="label names"):
        make_model(labels=[])
    model = make_model({"taap": False}, labels=[])
    assert not hasattr(model, "class_prompts")


def _info_nce(a, b, tau):
    """Symmetric InfoNCE of paired rows, in plain Python."""
    cos = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True)) / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))
    n = len(a)
    ce = lambda logits, i: math.log(sum(math.exp(z) for z in logits)) - logits[i]
    rows = sum(ce([cos(a[i], b[j]) / tau for j in range(n)], i) for i in range(n)) / n
    cols = sum(ce([cos(b[j], a[i]) / tau for i in range(n)], j) for j in range(n)) / n
    return 0.5 * (rows + cols)


def test_code_infonce_uses_its_own_temperature_0_3():
    assert prompthash.OPTIONS["code_tau"] == 0.3 and prompthash.OPTIONS["tau"] == 0.07
    model = make_model().eval()
    batch = make_batch(model, n=4)
    with torch.no_grad():
        terms = model.loss_terms(batch, TrainConfig(), epoch=1)
        h_img, h_txt = model.encode_image(batch.images), model.encode_text(batch.tokens)
    expected = sum(_info_nce(h_img[b].tolist(), h_txt[b].tolist(), 0.3) for b in model.bits) / len(model.bits)
    assert float(terms["contrastive"]) == pytest.approx(prompthash.LOSS_WEIGHTS["contrastive"] * expected, rel=1e-5)
    other = make_model(options={"code_tau": 0.07}).eval()
    with torch.no_grad():
        terms = other.loss_terms(batch, TrainConfig(), epoch=1)
    expected = sum(_info_nce(h_img[b].tolist(), h_txt[b].tolist(), 0.07) for b in model.bits) / len(model.bits)
    assert float(terms["contrastive"]) == pytest.approx(expected, rel=1e-5)


def test_image_global_view_is_the_mean_token_of_the_cnn_token_tower():
    model = make_model().eval()
    views = model.image_views
    with torch.no_grad():
        stem = model.backbone.image_stem(torch.rand(2, 3, 64, 64))
        out = views.tower(model.backbone.image_top(stem))
        glob, _ = views(stem)
    torch.testing.assert_close(glob, out.mean(dim=1))


def test_losses_are_finite_and_decrease():
    model = make_model()
    batch = make_batch(model, n=6)
    opt = torch.optim.AdamW([p for g in model.param_groups(TrainConfig(lr=3e-3)) for p in g["params"]], lr=3e-3)
    totals = []
    model.train()
    for _ in range(12):
        terms = model.loss_terms(batch, TrainConfig(), epoch=1)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert np.mean(totals[-3:]) < 0.8 * np.mean(totals[:3])


@pytest.mark.parametrize("combo", list(itertools.product([True, False], repeat=len(SWITCHES))))
def test_every_ablation_builds_and_takes_a_step(combo):
    switches = dict(zip(SWITCHES, combo, strict=True))
    model = make_model(switches, bits=(16,))
    batch = make_batch(model, n=4)
    model.train()
    terms = model.loss_terms(batch, TrainConfig(), epoch=1)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert ("pacl_global" in terms) == ("pacl_local" in terms) == switches["pacl"]
    assert ("distill" in terms) == switches["agsf"]
    assert hasattr(model, "class_prompts") == switches["taap"]
    model.eval()
    with torch.no_grad():
        codes = model.encode_text(batch.tokens)
    assert codes[16].shape == (4, 16) and codes[16].abs().max() <= 1


def test_fit_two_epochs_beats_random_codes(tmp_path):
    samples = make_samples(tmp_path / "images", n=96, seed=1)
    splits = make_splits(samples, sizes={"query": 12, "retrieval": 84, "train": 60, "val": 24}, seed=0)
    # Softer temperatures than the paper's: the tiny random image tower starts nearly collapsed.
    cfg = ModelConfig(method="prompthash", backbone="tiny", bits=[16, 32], embed_dim=16,
                      options={"tau": 0.2, "affinity_tau": 0.2})
    train = TrainConfig(epochs=2, batch_size=4, lr=3e-3, num_workers=0, device="cpu", warmup_steps=2)
    result = fit(cfg, train, splits, tmp_path / "run")
    lab = np.array([[n in s.labels for n in LABELS] for s in splits.val])
    rng = np.random.default_rng(0)
    chance = np.mean([mean_average_precision(rng.standard_normal((24, 32)), rng.standard_normal((24, 32)), lab, lab)
                      for _ in range(5)])
    assert result.best_val_map > chance + 0.12, (result.best_val_map, chance)
    assert math.isfinite(result.history[-1]["losses"]["total"])
