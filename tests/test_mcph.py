"""MCPH on the tiny backbone: structure, prompts, honesty of the codes, NRCL temperature, losses."""

from __future__ import annotations

import math

import pytest
import torch

from tests.trainer_synth import SHAPES, make_samples
from trainer import losses
from trainer.config import ModelConfig, TrainConfig
from trainer.data.dataset import make_loader
from trainer.errors import MedHashError, TrainingError
from trainer.models import build_model, get_method
from trainer.models.mcph import MCPH, relative_match_scores
from trainer.models.mcph_parts import CodeMemory, LocalTokenAggregation, pool_slots, prompt_start

SMALL = {"token_tower_dim": 64, "lta_dim": 64, "captioner_hidden": 32}  # fast on 2 CPU cores
OFF = {"vpl": False, "tpl": False, "nrcl": False, "lta": False}


def _cfg(method: str = "mcph", components: dict | None = None, **options) -> ModelConfig:
    opts = {**SMALL, **options} if method == "mcph" else {}
    return ModelConfig(method=method, backbone="tiny", bits=[16, 32], label_names=list(SHAPES),
                       components=components or {}, options=opts)


def _model(components: dict | None = None, seed: int = 0, **options) -> MCPH:
    torch.manual_seed(seed)
    return build_model(_cfg("mcph", components, **options)).eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: no thread hand-offs


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory):
    return make_samples(tmp_path_factory.mktemp("synth"), n=12)


@pytest.fixture(scope="module")
def batch(samples):
    model = _model()
    loader = make_loader(samples, model.backbone.eval_transform, model.backbone.tokenizer, list(SHAPES),
                         batch_size=12)
    return next(iter(loader))


# ---- configuration ---------------------------------------------------------------------------------
def test_registered_with_paper_defaults() -> None:
    assert get_method("mcph") is MCPH
    assert MCPH.noise_handlings == ("none", "adaptive_temperature")
    assert MCPH.default_train_overrides == {"lr": 5e-5, "weight_decay": 0.01, "batch_size": 32}
    model = _model()
    assert model.use == {"vpl": True, "tpl": True, "nrcl": True, "lta": True}  # full MCPH unless switched off
    assert float(model.temperature().detach()) == pytest.approx(0.07)
    assert model.fusion_weight() == pytest.approx(0.99)  # fixed (B is detached: nothing would learn it)
    with pytest.raises(MedHashError, match="unknown MCPH option"):
        build_model(_cfg(typo_option=1))
    with pytest.raises(MedHashError, match="fusion_lambda"):
        build_model(_cfg(lambda_init=0.9))  # the old name of the option says where it went


def test_prompt_layers_follow_k_of_n() -> None:
    assert [prompt_start(n) for n in (12, 6, 2, 1)] == [9, 4, 1, 0]  # k = 10 of 12 -> layers 10..12
    model = _model()
    assert model.t_start == 1 and model.v_start == 1  # tiny text tower and token tower: 2 layers each


def test_all_components_off_is_base(batch) -> None:
    torch.manual_seed(0)
    base = build_model(_cfg("base"))
    mcph = _model(OFF)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
    trainable = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}
    assert shapes(mcph) == shapes(base)
    assert trainable(mcph) == trainable(base)
    mcph.load_state_dict(base.state_dict())
    base.train()
    mcph.train()
    train_cfg = TrainConfig()
    t_base = base.loss_terms(batch, train_cfg, epoch=1)
    t_mcph = mcph.loss_terms(batch, train_cfg, epoch=1)
    assert set(t_mcph) == set(t_base) == {"contrastive", "similarity", "quantization"}
    for k in t_base:
        torch.testing.assert_close(t_mcph[k], t_base[k])
    with torch.no_grad():
        for a, b in ((mcph.encode_image(batch.images), base.encode_image(batch.images)),
                     (mcph.encode_text(batch.tokens), base.encode_text(batch.tokens))):
            for bits in (16, 32):
                torch.testing.assert_close(a[bits], b[bits])


# ---- prompts ---------------------------------------------------------------------------------------------
@torch.no_grad()
def test_visual_prompts_change_the_image_code_only_when_on(batch) -> None:
    images = batch.images[:4]
    circle = [{"caption": "Findings: circle."}] * 4
    square = [{"caption": "Findings: square at the left, large."}] * 4
    on = _model()
    diff = (on.encode_image(images, meta=circle)[32] - on.encode_image(images, meta=square)[32]).abs().max()
    assert diff > 1e-3
    off = _model({"vpl": False})
    assert torch.equal(off.encode_image(images, meta=circle)[32], off.encode_image(images, meta=square)[32])
    assert torch.equal(off.encode_image(images, meta=circle)[32], off.encode_image(images)[32])


@torch.no_grad()
def test_without_a_caption_the_builtin_captioner_speaks_for_the_image(batch) -> None:
    model = _model()
    pre = model._image_pre(batch.images[:3])
    sentences = model.captioner.sentences(pre.mean(dim=1))
    as_meta = [{"caption": s} for s in sentences]
    torch.testing.assert_close(model.encode_image(batch.images[:3])[32],
                               model.encode_image(batch.images[:3], meta=as_meta)[32])
    torch.testing.assert_close(model.encode_image(batch.images[:3], meta=[{}, {"age": 3}, None])[32],
                               model.encode_image(batch.images[:3], meta=as_meta)[32])
    alone = [model.captioner.sentences(model._image_pre(batch.images[i : i + 1]).mean(dim=1))[0] for i in range(3)]
    assert alone == sentences  # one image's sentence does not depend on the others in its batch


# ---- honest codes ----------------------------------------------------------------------------------------
@torch.no_grad()
def test_codes_are_per_sample_and_images_never_see_reports(samples, batch) -> None:
    model = _model()
    meta = [{"caption": "Findings: circle."} if i % 2 else {} for i in range(len(batch))]
    together = model.encode_image(batch.images, meta=meta)[32]
    for i in range(len(batch)):
        alone = model.encode_image(batch.images[i : i + 1], meta=[meta[i]])[32]
        torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=1e-5)
    texts = model.encode_text(batch.tokens)[32]
    for i in (0, 5):
        single = model.backbone.tokenize([samples[i].report])
        torch.testing.assert_close(model.encode_text(single)[32][0], texts[i], atol=1e-5, rtol=1e-5)

    swapped = [s.__class__(**{**s.__dict__, "report": f"a {SHAPES[(k + 1) % 3]} everywhere"})
               for k, s in enumerate(samples)]
    loader = make_loader(swapped, model.backbone.eval_transform, model.backbone.tokenizer, list(SHAPES),
                         batch_size=12)
    other = next(iter(loader))
    assert not torch.equal(other.tokens["input_ids"], batch.tokens["input_ids"])
    assert other.extras["meta"] == batch.extras["meta"]
    assert torch.equal(torch.sign(model.encode_image(other.images, meta=other.extras["meta"])[32]),
                       torch.sign(model.encode_image(batch.images, meta=batch.extras["meta"])[32]))


# ---- noise-robust contrastive learning ---------------------------------------------------------------------
def test_jsd_and_adaptive_temperature() -> None:
    torch.manual_seed(0)
    p = torch.randn(1, 64)
    direction = torch.randn(1, 64)
    jsd = torch.cat([losses.jensen_shannon(p, p + s * direction) for s in (0.0, 0.5, 1.0, 2.0, 4.0)])
    assert jsd[0].abs() < 1e-6
    assert torch.all(jsd[1:] > jsd[:-1]) and float(jsd.max()) <= math.log(2)
    tau = torch.tensor(0.07)
    temps = losses.adaptive_temperature(tau, jsd, gamma=200.0)
    torch.testing.assert_close(temps, 0.07 + 200.0 * jsd)
    assert torch.all(temps[1:] > temps[:-1])


def test_per_sample_temperature_info_nce() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(6, 16), torch.randn(6, 16)
    torch.testing.assert_close(losses.info_nce_per_sample(a, b, torch.full((6,), 0.07)), losses.info_nce(a, b, 0.07))
    grads = []
    for tau0 in (0.07, 5.0):  # a hot (likely noisy) pair moves its embedding less (it is still a negative)
        x = a.clone().requires_grad_(True)
        tau = torch.full((6,), 0.07)
        tau[0] = tau0
        losses.info_nce_per_sample(x, b, tau).backward()
        grads.append(float(x.grad[0].norm()))
    assert grads[1] < 0.5 * grads[0]


@torch.no_grad()
def test_model_temperature_grows_when_the_report_disagrees_with_the_caption() -> None:
    model = _model({"tpl": False})
    caption = "Findings: circle."
    reports = [caption, "there is a circle at the left", "a triangle and a square, large, bottom right corner"]
    z_txt = model.text_align(model.text_features(model.backbone.tokenize(reports)))
    z_cap = model.text_align(model.text_features(model.backbone.tokenize([caption] * 3)))
    temps = model.pair_temperatures(z_txt, z_cap, torch.ones(3, dtype=torch.bool))
    assert float(temps[0]) == pytest.approx(0.07, abs=1e-6)  # identical texts: JSD = 0
    assert float(temps[2]) > float(temps[0])
    no_caption = model.pair_temperatures(z_txt, z_cap, torch.zeros(3, dtype=torch.bool))
    torch.testing.assert_close(no_caption, torch.full((3,), 0.07))


def test_adaptive_temperature_needs_nrcl(batch) -> None:
    model = _model({"nrcl": False}).train()
    with pytest.raises(TrainingError, match="nrcl"):
        model.loss_terms(batch, TrainConfig(noise_handling="adaptive_temperature"), epoch=1)


# ---- parts -------------------------------------------------------------------------------------------------
def test_pool_slots_and_lta_ignore_padding() -> None:
    torch.manual_seed(2)
    tokens = torch.randn(1, 5, 8)
    padded = torch.cat([tokens, 100 * torch.randn(1, 4, 8)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 4])
    torch.testing.assert_close(pool_slots(padded, mask, 3), pool_slots(tokens, torch.ones(1, 5, dtype=torch.bool), 3))
    torch.testing.assert_close(pool_slots(tokens, torch.ones(1, 5, dtype=torch.bool), 1), tokens.mean(1, keepdim=True))
    lta = LocalTokenAggregation(8, 16, [16], top_m=8).eval()
    torch.testing.assert_close(lta(padded, mask)[16], lta(tokens, torch.ones(1, 5, dtype=torch.bool))[16])


def test_code_memory_keeps_written_rows_only() -> None:
    memory = CodeMemory()
    memory.update(torch.tensor([3, 0]), {16: torch.ones(2, 16)}, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    codes, labels = memory.view(16)
    assert codes.shape == (2, 16) and len(memory) == 2
    memory.update(torch.tensor([9]), {16: -torch.ones(1, 16)}, torch.tensor([[1.0, 1.0]]))
    codes, labels = memory.view(16)
    assert len(memory) == 3 and torch.equal(codes[:, 0], torch.tensor([1.0, 1.0, -1.0]))
    assert torch.equal(labels[-1], torch.tensor([1.0, 1.0]))


def test_relative_match_scores_flag_swapped_pairs() -> None:
    torch.manual_seed(3)
    img = torch.randn(6, 32)
    txt = img + 0.1 * torch.randn(6, 32)
    txt[[0, 1]] = txt[[1, 0]]  # pairs 0 and 1 got each other's report
    scores = relative_match_scores(img, txt, block=4)
    assert scores.shape == (6,)
    assert scores[:2].max() < 0 < scores[2:].min()


# ---- codes and hashing losses (Eqs. 6-7), against values worked out by hand ------------------------------
def _softplus(x: float) -> float:
    return math.log(1.0 + math.exp(x))


def test_mean_code_and_fused_code_by_hand() -> None:
    h, f = torch.tensor([[1.0, -0.5]]), torch.tensor([[0.5, 0.5]])
    torch.testing.assert_close(losses.mean_code(h, f), torch.tensor([[0.75, 0.0]]))
    h_img, f_img = torch.tensor([[0.2, -0.4, 0.0]]), torch.tensor([[-1.0, 1.0, 0.0]])
    h_txt, f_txt = torch.tensor([[0.1, 0.2, 0.0]]), torch.tensor([[-1.0, 1.0, 0.0]])
    # lambda = 0.99: 0.99 * (0.3, -0.2, 0) + 0.01 * (-2, 2, 0) = (0.277, -0.178, 0) -> (+1, -1, +1 for 0)
    torch.testing.assert_close(losses.fused_code(h_img, f_img, h_txt, f_txt, 0.99), torch.tensor([[1.0, -1.0, 1.0]]))
    # lambda = 0.5: 0.5 * (0.3, -0.2, 0) + 0.5 * (-2, 2, 0) = (-0.85, 0.9, 0) -> (-1, +1, +1)
    torch.testing.assert_close(losses.fused_code(h_img, f_img, h_txt, f_txt, 0.5), torch.tensor([[-1.0, 1.0, 1.0]]))


def test_fused_quantization_by_hand() -> None:
    c_img, c_txt = torch.tensor([[0.5, -0.5]], requires_grad=True), torch.tensor([[1.0, 0.0]])
    target = torch.tensor([[1.0, -1.0]])
    loss = losses.fused_quantization_loss(c_img, c_txt, target)
    # image: (1 - 0.5)^2 + (-1 + 0.5)^2 = 0.5; report: 0 + 1 = 1; over N K = 2 elements: 1.5 / 2
    assert float(loss.detach()) == pytest.approx(0.75)
    loss.backward()  # d/dc = 2 (c - B) / (N K): (2 * -0.5 / 2, 2 * 0.5 / 2); the target gets none
    torch.testing.assert_close(c_img.grad, torch.tensor([[-0.5, 0.5]]))


def test_intra_modal_similarity_by_hand() -> None:
    f_img = torch.tensor([[1.0, 1.0], [1.0, -1.0]])  # theta = 1/2 f f^T = [[1, 0], [0, 1]]
    f_txt = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # theta = [[2, 0], [0, 0]]
    s = torch.eye(2)
    img = (2 * (_softplus(1.0) - 1.0) + 2 * math.log(2.0)) / 4
    txt = ((_softplus(2.0) - 2.0) + 3 * math.log(2.0)) / 4
    assert float(losses.intra_modal_similarity_loss(f_img, f_txt, s)) == pytest.approx(0.5 * (img + txt))
    assert 0.5 * (img + txt) == pytest.approx(0.527398, abs=1e-6)


def test_inter_modal_similarity_with_memory_by_hand() -> None:
    h_img, h_txt = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, -1.0]])
    memory, s_mem = torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), torch.tensor([[1.0, 0.0]])
    batch = math.log(2.0)  # theta = 1/2 (1 - 1) = 0, S = 1: log(1 + 1) - 0
    img_mem = ((_softplus(1.0) - 1.0) + _softplus(-1.0)) / 2  # theta = (1, -1), S_m = (1, 0)
    txt_mem = (math.log(2.0) + math.log(2.0)) / 2  # theta = (0, 0)
    expected = batch + 0.5 * (img_mem + txt_mem)
    assert expected == pytest.approx(1.196351, abs=1e-6)
    got = losses.inter_modal_similarity_loss(h_img, h_txt, torch.ones(1, 1), memory, s_mem)
    assert float(got) == pytest.approx(expected)
    assert float(losses.inter_modal_similarity_loss(h_img, h_txt, torch.ones(1, 1))) == pytest.approx(batch)


def test_codes_are_the_mean_of_global_and_local_and_heads_read_the_aligned_embedding(batch) -> None:
    model = _model()
    with torch.no_grad():
        side = model._image_forward(batch.images, batch.extras["meta"])
        torch.testing.assert_close(side.aligned, model.image_align(side.embedding))
        for b in (16, 32):
            torch.testing.assert_close(side.global_codes[b], model.image_hash(side.aligned)[b])
            torch.testing.assert_close(side.codes[b], 0.5 * (side.global_codes[b] + side.local_codes[b]))
            torch.testing.assert_close(model.encode_image(batch.images, meta=batch.extras["meta"])[b], side.codes[b])


def test_each_hashing_term_reaches_its_branch(batch) -> None:
    """inter acts on the global codes h, intra on the local codes f (the LTA gets the full intra
    gradient, not (1 - lambda) of it), quantization on c = 1/2 (h + f), NRCL on the aligned embedding."""
    model = _model().train()
    torch.manual_seed(0)
    terms = model.loss_terms(batch, TrainConfig(), epoch=1)
    hash_w = model.image_hash.layers["32"].weight
    lta_w = model.image_lta.hash.layers["32"].weight
    align_w = model.image_align.net[-1].weight  # zero-initialised: the layer that gets a gradient first

    def grad(name: str, p: torch.Tensor) -> float:
        g = torch.autograd.grad(terms[name], p, retain_graph=True, allow_unused=True)[0]
        return 0.0 if g is None else float(g.abs().sum())

    assert grad("inter", hash_w) > 0 and grad("inter", lta_w) == 0
    assert grad("intra", lta_w) > 0 and grad("intra", hash_w) == 0
    assert grad("quantization", hash_w) > 0 and grad("quantization", lta_w) > 0
    assert grad("nrcl", align_w) > 0 and grad("nrcl", hash_w) == 0
    assert grad("inter", align_w) > 0  # the codes are computed from the aligned embedding
    # NRCL on the codes: the only term that ties a code to its own pair's code reaches both branches
    assert grad("contrastive", hash_w) > 0 and grad("contrastive", lta_w) > 0


def test_code_contrastive_with_per_pair_temperatures_by_hand() -> None:
    a = b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cosine matrix = identity
    tau = torch.tensor([0.5, 1.0])
    # row 0: logits (2, 0) -> -log(e^2 / (e^2 + 1)); row 1: logits (0, 1) -> -log(e / (1 + e)); the
    # transposed direction has the same logits, so the symmetric mean is the mean of the two rows
    expected = 0.5 * (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0)))
    assert expected == pytest.approx(0.220095, abs=1e-6)
    assert float(losses.info_nce_per_sample(a, b, tau)) == pytest.approx(expected)


@pytest.mark.parametrize("adaptive", [False, True])
def test_code_contrastive_term_is_nrcl_on_the_codes(batch, adaptive: bool) -> None:
    """The "contrastive" term is the symmetric InfoNCE of the modality codes c^v, c^t at
    ModelConfig.temperature, shifted per pair by NRCL's gamma * JSD when the noise handling is adaptive."""
    model = _model().train()
    train_cfg = TrainConfig(noise_handling="adaptive_temperature" if adaptive else "none")
    torch.manual_seed(7)
    terms = model.loss_terms(batch, train_cfg, epoch=1)
    torch.manual_seed(7)  # the same caption-dropout draws
    with torch.no_grad():
        pre = model._image_pre(batch.images)
        captions = model._image_captions(pre.mean(dim=1), [m.get("caption") for m in batch.extras["meta"]])
        caption = model._encode_captions(captions, pre.device)
        present = torch.tensor([c is not None for c in captions])
        img = model._image_side(pre, caption, model._keep(present, model.opts["caption_dropout"]))
        txt = model._text_side(batch.tokens, caption, model._keep(present, model.opts["text_caption_dropout"]))
        tau = torch.full((len(batch),), model.cfg.temperature)
        if adaptive:
            z_cap = model.text_align(model.text_proj(caption.global_feature))
            tau = tau + (model.pair_temperatures(txt.aligned, z_cap, present) - model.temperature())
            assert float((tau - model.cfg.temperature).max()) > 0  # some pair disagrees with its caption
        expected = sum(losses.info_nce_per_sample(img.codes[b], txt.codes[b], tau) for b in (16, 32)) / 2
    assert float(terms["contrastive"].detach()) == pytest.approx(float(expected), rel=1e-5)
    off = _model().train()
    off.cfg.components["contrastive"] = False
    assert "contrastive" not in off.loss_terms(batch, train_cfg, epoch=1)


# ---- training ----------------------------------------------------------------------------------------------
def test_training_loss_decreases(batch) -> None:
    model = _model(seed=4).train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    train_cfg = TrainConfig(noise_handling="adaptive_temperature")
    totals = []
    for _ in range(10):
        terms = model.loss_terms(batch, train_cfg, epoch=2)  # epoch 2: the code memory is in L_inter
        assert {"nrcl", "contrastive", "quantization", "inter", "intra", "captioner"} == set(terms)
        loss = sum(terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(float(loss.detach()))
    assert sum(totals[-3:]) < 0.93 * sum(totals[:3])  # 0.73-0.89 over seeds 0-5
    assert len(model.memory) == len(batch)


@torch.no_grad()
def test_long_reports_in_chunks() -> None:
    plain = _model()
    chunked = _model(long_text="chunks")
    chunked.load_state_dict(plain.state_dict())
    short = ["there is a circle at the left of the picture"]
    torch.testing.assert_close(chunked.encode_text(chunked.backbone.tokenize(short))[32],
                               plain.encode_text(plain.backbone.tokenize(short))[32])
    long = [" ".join(["small"] * 100 + ["square"] * 60), short[0]]
    tok = chunked.backbone.tokenize(long)
    assert tok["chunk_owner"].tolist() == [0, 0, 0, 1]  # 64-word windows of the tiny tower
    codes = chunked.encode_text(tok)[32]
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes[1], plain.encode_text(plain.backbone.tokenize(short))[32][0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(codes[0], plain.encode_text(plain.backbone.tokenize(long[:1]))[32][0], atol=1e-3)


def test_captioner_gets_its_own_learning_rate(batch) -> None:
    from trainer.engine import optimizer_groups

    model = _model()
    groups = optimizer_groups(model, TrainConfig(lr=5e-5))
    captioner = {id(p) for p in model.captioner.parameters()}
    for g in groups:
        inside = {id(p) in captioner for p in g["params"]}
        assert len(inside) == 1
        assert g["lr"] == pytest.approx(5e-4 if inside.pop() else 5e-5)
    no_captioner = _model(OFF)
    assert [len(g["params"]) for g in optimizer_groups(no_captioner, TrainConfig())] == [
        sum(p.ndim >= 2 for p in no_captioner.trainable_parameters()),
        sum(p.ndim < 2 for p in no_captioner.trainable_parameters())]


# ---- frozen-stem cache -------------------------------------------------------------------------------
@pytest.mark.parametrize("top_blocks", [1, 2])
def test_cached_stems_give_the_same_codes_and_losses(samples, tmp_path, top_blocks: int) -> None:
    """MCPH starts from cached stems (tiny CNN: prompts in the TokenTower; text prompts at or above
    the split) and gets the codes and loss terms of the full forward."""
    from trainer.engine import encode_dataset
    from trainer.feature_cache import IMAGE, TEXT, FeatureCache

    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**_cfg().to_dict(), "trainable_top_blocks": top_blocks})).eval()
    assert model.cached_stem_modalities() == {IMAGE, TEXT}
    cache = FeatureCache.for_model(model, tmp_path / "cache")
    cache.prepare(samples, device=torch.device("cpu"), batch_size=5)
    cached_img, cached_txt = encode_dataset(model, samples, batch_size=5, cache=cache)
    plain_img, plain_txt = encode_dataset(model, samples, batch_size=5)
    for b in (16, 32):
        assert (cached_img[b] - plain_img[b]).__abs__().max() < 2e-3
        assert (cached_txt[b] - plain_txt[b]).__abs__().max() < 2e-3
    assert abs(plain_img[32]).mean() > 2e-2  # codes are not ~0, so the comparison means something

    tok = model.backbone.tokenizer
    cached = next(iter(cache.loader(samples, tok, list(SHAPES), batch_size=12)))
    plain = next(iter(make_loader(samples, model.backbone.eval_transform, tok, list(SHAPES), batch_size=12)))
    terms = {}
    for name, b in (("cached", cached), ("plain", plain)):
        torch.manual_seed(5)  # the same caption-dropout draws
        with torch.no_grad():
            terms[name] = {k: float(v) for k, v in model.loss_terms(b, TrainConfig(), epoch=1).items()}
    assert terms["cached"].keys() == terms["plain"].keys() and "nrcl" in terms["plain"]
    for k, v in terms["plain"].items():
        assert terms["cached"][k] == pytest.approx(v, rel=1e-2, abs=1e-3), k


def test_no_text_cache_when_prompts_enter_inside_the_frozen_stem() -> None:
    torch.manual_seed(0)
    frozen = build_model(ModelConfig(**{**_cfg().to_dict(), "trainable_top_blocks": 0}))
    assert frozen.t_start < frozen.backbone._text_split  # TPL prompts layer 2 of 2, both frozen
    assert frozen.cached_stem_modalities() == {"image"}
    no_tpl = build_model(ModelConfig(**{**_cfg(components={"tpl": False}).to_dict(), "trainable_top_blocks": 0}))
    assert no_tpl.cached_stem_modalities() == {"image", "text"}
