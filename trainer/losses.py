"""Loss terms, one function each; every docstring gives the formula and where it comes from.

Notation: h are continuous codes in (-1, 1) of shape (B, K); S_ij = 1 when items i and j share at
least one label. Every function returns a scalar mean so that weights in the config are
comparable across batch sizes and code lengths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(a: Tensor, b: Tensor, temperature: float = 0.07) -> Tensor:
    """Symmetric InfoNCE between paired rows of `a` and `b` (row i of each is a positive pair).

    L = 1/2 [ CE(softmax_j(cos(a_i, b_j)/tau), i) + CE(softmax_i(cos(a_i, b_j)/tau), j) ]

    van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018);
    the symmetric image<->text form of CLIP (Radford et al., ICML 2021), used on hash codes by
    MCPH (MICCAI 2024) and PromptHash (CVPR 2025).
    """
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def label_similarity(labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """S_ij = 1 if multi-hot label rows i and j share at least one class, else 0 (float (B, B))."""
    return (labels_a.float() @ labels_b.float().T > 0).float()


def similarity_nll(h_a: Tensor, h_b: Tensor, similarity: Tensor) -> Tensor:
    """Negative log-likelihood of the pairwise label similarities under the codes' inner products.

    theta_ij = 1/2 h_a_i . h_b_j,   L = mean_ij [ log(1 + exp(theta_ij)) - S_ij theta_ij ]

    Computed with softplus, which is stable for large |theta| (theta reaches K/2). From DCMH:
    Jiang & Li, "Deep Cross-Modal Hashing", CVPR 2017 (Eq. 2); also the similarity term of DJSRH
    (Su et al., ICCV 2019) style methods.
    """
    theta = 0.5 * h_a.float() @ h_b.float().T
    return (F.softplus(theta) - similarity * theta).mean()


def quantization_loss(h: Tensor) -> Tensor:
    """Quantization error L = ||h - sign(h)||^2 / (B K): pulls continuous codes towards +-1.

    DCMH (Jiang & Li, CVPR 2017, the ||B - F||^2 term); normalised per element here.
    """
    return (h - torch.sign(h).detach()).pow(2).mean()


def bit_balance_loss(h: Tensor) -> Tensor:
    """Bit balance L = ||mean_i h_i||^2 / K: each bit should be +1 for half of the items.

    DCMH (Jiang & Li, CVPR 2017, the ||F 1||^2 balance term), normalised by batch and code length.
    """
    return h.mean(dim=0).pow(2).mean()


def multilabel_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy over independent labels: L = mean_ic BCE(sigmoid(z_ic), y_ic)."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


# ---- MCPH ("Medical Cross-Modal Prompt Hashing with Robust Noisy Correspondence Learning", MICCAI 2024).
# Our reading of each equation, where the paper leaves room, is written out in docs/methods.md. -------
def binary_sign(x: Tensor) -> Tensor:
    """sign with sign(0) = +1, so that every code bit is defined (the packed-bits rule of evaluate.py)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def jensen_shannon(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """Per-row Jensen-Shannon divergence (nats, in [0, ln 2]) between softmax(p_i) and softmax(q_i).

    JSD(P || Q) = 1/2 KL(P || M) + 1/2 KL(Q || M),  M = (P + Q) / 2.  MCPH Eq. 4 measures with it
    how far a report's embedding g^t_i is from its image caption's g^c_i. Computed in float32.
    """
    log_p = F.log_softmax(p_logits.float(), dim=-1)
    log_q = F.log_softmax(q_logits.float(), dim=-1)
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(dim=-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(dim=-1)
    return (0.5 * (kl_pm + kl_qm)).clamp_min(0.0)


def adaptive_temperature(tau: Tensor, jsd: Tensor, gamma: float = 200.0) -> Tensor:
    """Per-pair temperature tau_i = tau + gamma * JSD(g^t_i || g^c_i)  (MCPH Eq. 4).

    A pair whose report disagrees with what the image's caption says is likely mismatched; its
    larger temperature flattens its contrastive softmax and so shrinks its gradient. The JSD is
    detached: the model must not lower its loss by pushing reports away from captions.
    """
    return tau + gamma * jsd.detach()


def info_nce_per_sample(a: Tensor, b: Tensor, temperature: Tensor) -> Tensor:
    """Symmetric InfoNCE with a temperature per anchor pair (MCPH Eq. 3).

    s_ij = cos(a_i, b_j);  L = 1/(2B) sum_i [ -log softmax_j(s_ij / tau_i)[i] - log softmax_j(s_ji / tau_i)[i] ]

    Row i of both directions (image i -> all texts, text i -> all images) uses the temperature of
    pair i. `temperature` is a scalar (plain learnable tau) or a (B,) tensor. Computed in float32.
    """
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
    tau = temperature.float().reshape(-1, 1) if temperature.dim() else temperature.float()
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(sim / tau, target) + F.cross_entropy(sim.T / tau, target))


def mean_code(h: Tensor, f: Tensor) -> Tensor:
    """A modality's code c = 1/2 (h + f): the equal-weight mean of its global and local codes (MCPH Eq. 6).

    sign(c) is what is stored and queried; c is what the quantization term pulls to the fused code.
    """
    return 0.5 * (h + f)


def fused_code(h_img: Tensor, f_img: Tensor, h_txt: Tensor, f_txt: Tensor, lam: float = 0.99) -> Tensor:
    """The fused training code of each pair, B = sign( lambda (h^v + h^t) + (1 - lambda) (f^v + f^t) )
    (MCPH Eq. 6, as in MITH, ACM MM 2023, on which MCPH builds), detached.

    h are the global codes, f the local (token) codes of the image (v) and the report (t); sign(0) =
    +1. It exists only inside the losses (quantization target, code memory): a stored code never
    sees the other modality.
    """
    x = lam * (h_img.detach() + h_txt.detach()) + (1.0 - lam) * (f_img.detach() + f_txt.detach())
    return binary_sign(x)


def fused_quantization_loss(c_img: Tensor, c_txt: Tensor, target: Tensor) -> Tensor:
    """L_quan = 1/(N K) sum_i ( ||B_i - c^v_i||^2 + ||B_i - c^t_i||^2 )  (MCPH Eq. 6).

    c = 1/2 (h + f) is each modality's code (`mean_code`), B the pair's fused training code
    (`fused_code`, a constant here). Pulling both modalities of a pair to the same binary code
    quantizes them and ties the image to its own report at once (the unified-code term of DCMH, CVPR
    2017; MITH's quantization of 1/2 (H_g + H_l)).
    """
    b = target.detach().to(c_img.dtype)
    return ((b - c_img).pow(2) + (b - c_txt).pow(2)).mean()


def intra_modal_similarity_loss(f_img: Tensor, f_txt: Tensor, similarity: Tensor) -> Tensor:
    """L_intra = 1/2 [ NLL(f^v, f^v; S) + NLL(f^t, f^t; S) ]: label similarity kept inside each modality,
    on the LOCAL codes f (MCPH Eq. 7; MITH's intra-modal term on its token codes).

    NLL is `similarity_nll` (theta_ij = 1/2 f_i . f_j, mean over all pairs, the diagonal included).
    """
    return 0.5 * (similarity_nll(f_img, f_img, similarity) + similarity_nll(f_txt, f_txt, similarity))


def inter_modal_similarity_loss(h_img: Tensor, h_txt: Tensor, similarity: Tensor,
                                memory_codes: Tensor | None = None, memory_similarity: Tensor | None = None) -> Tensor:
    """L_inter = NLL(h^v, h^t; S) + 1/2 [ NLL(h^v, B; S_m) + NLL(h^t, B; S_m) ]  (MCPH Eq. 7, inter-modal),
    on the GLOBAL codes h (MITH's inter-modal term on its [CLS] codes).

    The first term compares image and text codes of the batch; the second compares them with the
    fused codes B of the whole training set (the code memory, as in DCMH), whose bits stand for
    both modalities of each item; S_m is the batch-vs-memory label similarity. Without a memory
    only the first term is used.
    """
    loss = similarity_nll(h_img, h_txt, similarity)
    if memory_codes is not None and memory_codes.shape[0]:
        loss = loss + 0.5 * (similarity_nll(h_img, memory_codes, memory_similarity)
                             + similarity_nll(h_txt, memory_codes, memory_similarity))
    return loss


# ---- TriPAH ("Imbalance-Aware Tri-Prompt Affinity Hashing for Cross-Modal Medical Retrieval", 2026).
# Equation numbers are the paper's; where it leaves room, our reading is in docs/methods.md. --------
def multi_positive_info_nce(a: Tensor, b: Tensor, positives: Tensor, temperature: float = 0.05) -> Tensor:
    """Multi-positive symmetric InfoNCE (TriPAH Eq. 5, global alignment of the image and text codes).

    s_ij = cos(a_i, b_j) / tau;  q_ij = P_ij / sum_j P_ij  (P_ii = 1, P_ij = 1 when i and j share a label)
    L = 1/2 [ mean_i CE(softmax_j s_ij, q_i) + mean_j CE(softmax_i s_ij, q_j) ]

    With P = I it is the plain InfoNCE of CLIP; the extra positives stop pairs of the same disease
    from being pushed apart as negatives (Khosla et al., "Supervised Contrastive Learning", 2020).
    """
    pos = positives.float().clone()
    pos.fill_diagonal_(1.0)
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    q_rows = pos / pos.sum(dim=1, keepdim=True)
    q_cols = pos.T / pos.T.sum(dim=1, keepdim=True)
    loss_ab = -(q_rows * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_ba = -(q_cols * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_ab + loss_ba)


def prompt_adaptive_temperature(view: Tensor, prompt: Tensor, tau: float = 0.05) -> Tensor:
    """Per-sample temperature tau_i = tau / (1 + JSD(h^v_i || h^p_i))   (TriPAH Eq. 6).

    h^v_i is sample i's image view (the pooled fused image tokens) and h^p_i its prompt view; each
    becomes a distribution by a softmax over its D features, and the JSD (`jensen_shannon`, natural
    log, in [0, ln 2]) compares the two, so tau_i lies in [tau / (1 + ln 2), tau]. A sample whose image
    view and prompt view disagree gets a LOWER temperature (a sharper softmax, a larger gradient).
    Detached: a temperature, not a target the model could lower its loss by moving.
    """
    return tau / (1.0 + jensen_shannon(view.detach(), prompt.detach()))


def local_prompt_alignment(view: Tensor, prompt: Tensor, tau: float = 0.05, valid: Tensor | None = None) -> Tensor:
    """Local alignment of image views with prompt views (TriPAH Eq. 7), temperatures of Eq. 6.

    s_ij = cos(h^v_i, h^p_j);  L = 1/(2B) sum_i [ -log softmax_j(s_ij / tau_i)[i] - log softmax_j(s_ji / tau_i)[i] ]
    (`info_nce_per_sample` with tau_i = `prompt_adaptive_temperature(h^v, h^p, tau)`). Only the rows
    with valid_i (delta_i = 1: the sample kept its own prompt; a generic fallback prompt says nothing
    of the sample) take part, as anchors and as negatives; zero when fewer than two are valid.
    """
    if valid is not None:
        view, prompt = view[valid.bool()], prompt[valid.bool()]
    if view.shape[0] < 2:
        return view.new_zeros(()).float()
    return info_nce_per_sample(view, prompt, prompt_adaptive_temperature(view, prompt, tau))


def intra_text_consistency(report: Tensor, prompt: Tensor, valid: Tensor | None = None) -> Tensor:
    """L_intra = mean_i (1 - cos(h^t_i, h^p_i))   (TriPAH Eq. 8).

    A report's embedding h^t_i must agree with the embedding h^p_i of its own context prompt. Over
    the rows whose prompt was kept (valid_i = delta_i = 1; the generic fallback prompt is the same
    for everyone); zero when none is valid. Both sides receive gradients.
    """
    if valid is not None:
        report, prompt = report[valid.bool()], prompt[valid.bool()]
    if report.shape[0] == 0:
        return report.new_zeros(()).float()
    return (1.0 - F.cosine_similarity(report.float(), prompt.float(), dim=-1)).mean()


def progressive_quantization_weight(epoch: float, midpoint: float, steepness: float = 1.0) -> float:
    """lambda(e) = 1 / (1 + exp(-k (e - e0))): the logistic ramp of TriPAH's quantization (Eq. 9)."""
    return 1.0 / (1.0 + math.exp(-steepness * (epoch - midpoint)))


def asymmetric_quantization_loss(h_img: Tensor, h_txt: Tensor, image_weight: float) -> Tensor:
    """L_q = lambda(e) ||h_v - sign(h_v)||^2 + ||h_t - sign(h_t)||^2   (TriPAH Eq. 9, asymmetric).

    Image codes, the harder modality, are left continuous early and pulled to +-1 as lambda(e)
    rises; text codes are quantized from the start.
    """
    return image_weight * quantization_loss(h_img) + quantization_loss(h_txt)


def class_balanced_weights(counts: Tensor, zeta: float = 0.999) -> Tensor:
    """omega_c = (1 - zeta) / (1 - zeta^{N_c}), normalised to sum to C (TriPAH Eq. 10).

    The "effective number of samples" weights of Cui et al., "Class-Balanced Loss Based on
    Effective Number of Samples", CVPR 2019. N_c < 1 is treated as 1.
    """
    n = counts.float().clamp_min(1.0)
    w = (1.0 - zeta) / (1.0 - torch.pow(torch.as_tensor(zeta, dtype=n.dtype, device=n.device), n))
    return w * (w.numel() / w.sum())


def class_balanced_bce(logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """L_cls = mean_ic omega_c BCE(sigmoid(z_ic), y_ic)   (TriPAH Eq. 10, on the hash codes' logits)."""
    per = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return (per * weights.float()[None, :]).mean()


def bayesian_similarity_kl(h_img: Tensor, h_txt: Tensor, similarity: Tensor) -> Tensor:
    """L_bayes = mean_ij KL(S_ij || sigma(b^v_i . b^t_j / K))   (TriPAH Eq. 11).

    S_ij (label similarity, in [0, 1]) and p_ij = sigma(b^v_i . b^t_j / K) are read as Bernoulli
    probabilities: KL = S log(S / p) + (1 - S) log((1 - S) / (1 - p)), with 0 log 0 = 0 (for binary
    S it is the binary cross-entropy). b are the continuous codes h in training (sign has no
    gradient); K is the code length, so b^v . b^t / K lies in [-1, 1]. Computed in float32.
    """
    theta = h_img.float() @ h_txt.float().T / h_img.shape[1]
    s = similarity.float()
    entropy_part = torch.xlogy(s, s) + torch.xlogy(1.0 - s, 1.0 - s)
    return (entropy_part - s * F.logsigmoid(theta) - (1.0 - s) * F.logsigmoid(-theta)).mean()


# ---- PromptHash ("Affinity-Prompted Collaborative Cross-Modal Learning for Adaptive Hashing
# Retrieval", CVPR 2025). Our reading of each term is in docs/methods.md. ----------------------------
def prompt_affinity_loss(features: Tensor, prompts: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    """Intra-/inter-class prompt affinity (PromptHash PACL, global and local prompt alignment).

    a_ic = cos(f_i, p_c) / tau;  L = mean_ic BCE(sigmoid(a_ic), y_ic)
    pulls a sample towards the prompts of its classes (intra-class affinity) and away from the
    prompts of the others (inter-class affinity); multi-label, so a sigmoid per class.
    """
    logits = F.normalize(features.float(), dim=-1) @ F.normalize(prompts.float(), dim=-1).T / temperature
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def code_reconstruction_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """L_rec = mean_i (1 - cos(D(h_i), e_i)): the code must keep what its embedding carries
    (PromptHash's reconstruction term of hash learning; the target is detached)."""
    return (1.0 - F.cosine_similarity(reconstruction.float(), target.detach().float(), dim=-1)).mean()


def code_distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """L_kd = mean_i (1 - cos(h_i, t_i)) towards a detached teacher code: a per-modality code learns from
    the cross-modal fused code of the same pair (training only; see docs/methods.md)."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)).mean()
