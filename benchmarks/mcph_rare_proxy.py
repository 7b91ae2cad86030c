"""Why MCPH's rare classes collapse: a head-only proxy of BASE's and MCPH's losses on frozen ODIR-5K features.

A diagnosis tool, not a reproduction of the methods: the embedded backbone is frozen entirely,
each image and report is reduced to its global feature once (cached in `--features`), and only
small heads are trained (Projection per modality; MCPH: ResMLPs, hash layers, and in the "faithful"
variants a second per-modality head standing in for the LTA's local codes f), 3 epochs, batch 32,
AdamW lr 3e-4, 64 bits, seed 0, on the patient-disjoint ODIR-5K splits of seed 0. Each variant
changes one thing in the loss or the gradient path (see VARIANTS); the table gives mAP@all,
mean AP of the 5 rarest classes both ways, and the hubness of rare-class query images (mean
Hamming distance to their own report's code and to the "normal fundus"-only reports' codes; random
codes: 32), plus the gradient norm each term sends to the image hash layer at the first step.

"mcph*" variants use the loss as implemented before 2026-12 (codes u ~ h, quantization to
sign(u^v + u^t), inter and intra on u); "faithful*" the Eqs. 6-7 reading of docs/methods.md
(inter on h, intra on f, quantization of 1/2 (h + f) to B, hash heads on the aligned z).

    python benchmarks/mcph_rare_proxy.py --features /tmp/mcph-proxy/feats.npz base mcph faithful faithful_codecon
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from benchkit import require_shared
from PIL import Image
from torch import nn

from trainer import losses
from trainer.data.labels import labels_from_report
from trainer.data.manifest import load_manifest
from trainer.data.splits import make_splits
from trainer.evaluate import distance_histograms, hamming_distances, metrics_from_histograms, pack_signs
from trainer.models.backbones import build_backbone
from trainer.models.heads import Projection
from trainer.models.mcph_parts import ResMLP

RARE = ["H", "M", "G", "A", "C"]  # the five classes with the fewest training positives (seed-0 splits)
K = 64


def extract(samples, path: Path) -> None:
    """Global image and report features of the frozen embedded backbone, once."""
    bb = build_backbone("embedded")
    bb.eval()
    names = sorted({label for s in samples for label in s.labels})
    img, txt = [], []
    with torch.inference_mode():
        for i in range(0, len(samples), 64):
            chunk = samples[i:i + 64]
            x = torch.stack([bb.eval_transform(Image.open(c.image_path).convert("RGB")) for c in chunk])
            img.append(bb.image_global(x).float().numpy())
            txt.append(bb.text_global(bb.tokenize([c.report for c in chunk])).float().numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, img=np.concatenate(img), txt=np.concatenate(txt),
             Y=np.array([[n in s.labels for n in names] for s in samples], np.uint8), names=np.array(names),
             ids=np.array([s.id for s in samples]))


ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("variants", nargs="+")
ap.add_argument("--features", type=Path, required=True, help="feature cache (.npz), made on first use")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)
s = load_manifest(require_shared("odir5k-256", "pairs.jsonl"), label_fn=lambda s: labels_from_report(s.report, "fundus"))
if not args.features.is_file():
    extract(s, args.features)
d = np.load(args.features)
IMG, TXT, Y = torch.tensor(d["img"]), torch.tensor(d["txt"]), torch.tensor(d["Y"]).float()
names = list(d["names"])
ids = list(d["ids"])
sp = make_splits(s, seed=0)
pos = {x: i for i, x in enumerate(ids)}
tr = np.array([pos[x.id] for x in sp.train])
q = np.array([pos[x.id] for x in sp.query])
db = np.array([pos[x.id] for x in sp.retrieval])


class M(nn.Module):
    def __init__(s, v):
        super().__init__()
        s.v = v
        s.pv, s.pt = Projection(IMG.shape[1], 256), Projection(TXT.shape[1], 256)
        s.hv = nn.Linear(256, K); s.ht = s.hv if v.get('share_hash') else nn.Linear(256, K)
        if v['method'] == 'mcph':
            s.rv = ResMLP(256); s.rt = s.rv if v.get('share_res') else ResMLP(256)
            s.log_tau = nn.Parameter(torch.tensor(math.log(0.07)))
        if v.get('local'):
            s.fv = nn.Sequential(Projection(IMG.shape[1], 256), nn.Linear(256, K)); s.ft = nn.Sequential(Projection(TXT.shape[1], 256), nn.Linear(256, K))
    def codes(s, xi, xt):
        ev, et = s.pv(xi), s.pt(xt)
        if s.v['method'] == 'mcph':
            zv, zt = s.rv(ev), s.rt(et)
            hin_v, hin_t = (zv, zt) if s.v.get('hash_on_z') else (ev, et)
        else:
            zv = zt = None; hin_v, hin_t = ev, et
        hv, ht = torch.tanh(s.hv(hin_v)), torch.tanh(s.ht(hin_t))
        if s.v.get('local'):
            s._f = (torch.tanh(s.fv(xi)), torch.tanh(s.ft(xt)))
            if not s.training:  # evaluation: c = 1/2 (h + f)
                return 0.5 * (hv + s._f[0]), 0.5 * (ht + s._f[1]), zv, zt
        return hv, ht, zv, zt

def balanced_nll(a, b, S):
    theta = 0.5 * a.float() @ b.float().T
    per = F.softplus(theta) - S * theta
    def w(S, dim):
        P = S.sum(dim, keepdim=True).clamp_min(1); N = (1 - S).sum(dim, keepdim=True).clamp_min(1)
        return 0.5 * (S / P + (1 - S) / N)
    W = 0.5 * (w(S, 1) + w(S, 0))  # each row and each column: positives and negatives half each
    return (W * per).sum() / S.shape[0]

FREQ = Y[tr].mean(0)
def classbal_nll(a, b, S, y):
    wc = 1.0 / FREQ.clamp_min(1e-3); wc = wc / (Y[tr] @ wc / Y[tr].sum(1).clamp_min(1)).mean()
    wi = (y * wc).max(1).values
    W = wi[:, None] * wi[None, :]; W = W / W.mean()
    theta = 0.5 * a.float() @ b.float().T
    return (W * (F.softplus(theta) - S * theta)).mean()

def loss(m, xi, xt, y, ep, mem):
    v = m.v
    hv, ht, zv, zt = m.codes(xi, xt)
    S = losses.label_similarity(y, y)
    t = {}
    if v['method'] == 'base':
        t['con'] = losses.info_nce(hv, ht, 0.3)
        t['sim'] = losses.similarity_nll(hv, ht, S)
        t['q'] = 0.1 * (losses.quantization_loss(hv) + losses.quantization_loss(ht))
    else:
        tau = m.log_tau.exp().clamp(0.01, 1)
        if v.get('nrcl_on_codes'):
            if v.get('local'):
                fv, ft = m._f
                t['nrcl'] = losses.info_nce_per_sample(0.5 * (hv + fv), 0.5 * (ht + ft), tau)
            else:
                t['nrcl'] = losses.info_nce_per_sample(hv, ht, tau)
        else:
            t['nrcl'] = v.get('w_nrcl', 1.0) * losses.info_nce_per_sample(zv, zt, tau)
        beta = v.get('beta', 10.0)
        if v.get('local'):
            fv, ft = m._f
            lam = 0.99
            B = losses.binary_sign(lam * (hv + ht) + (1 - lam) * (fv + ft)).detach()
            cv, ct = 0.5 * (hv + fv), 0.5 * (ht + ft)
            nll = balanced_nll if v.get('balanced') else losses.similarity_nll
            if v.get('classbal'):
                nll = lambda a, b, S: classbal_nll(a, b, S, y)
            t['inter'] = beta * nll(hv, ht, S)
            t['intra'] = v.get('w_intra', 1.0) * 0.5 * (nll(fv, fv, S) + nll(ft, ft, S))
            if v.get('code_con'):
                t['ccon'] = v['code_con'] * losses.info_nce(0.5 * (hv + fv), 0.5 * (ht + ft), 0.3)
            t['q'] = v.get('w_q', 0.1) * (((B - cv) ** 2) + ((B - ct) ** 2)).mean()
            return t
        if beta:
            t['inter'] = beta * losses.similarity_nll(hv, ht, S)
            t['intra'] = v.get('w_intra', 1.0) * losses.intra_modal_similarity_loss(hv, ht, S)
        b_old = losses.binary_sign(hv.detach() + ht.detach())  # the pre-2026-12 MCPH quantization
        t['q'] = v.get('w_q', 0.1) * ((b_old - hv).pow(2) + (b_old - ht).pow(2)).mean()
        if v.get('code_con'):
            t['ccon'] = v['code_con'] * losses.info_nce(hv, ht, 0.3)
    return t

def run(v, epochs=3, seed=0, bs=32, lr=3e-4):
    torch.manual_seed(seed)
    m = M(v)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    gradlog = None
    for ep in range(1, epochs + 1):
        perm = tr[torch.randperm(len(tr), generator=g).numpy()]
        for i in range(0, len(perm) - bs + 1, bs):
            b = perm[i:i+bs]
            t = loss(m, IMG[b], TXT[b], Y[b], ep, None)
            if gradlog is None:  # gradient norm reaching the image hash layer from each term, at the start
                gradlog = {}
                for k, val in t.items():
                    gr = torch.autograd.grad(val, m.hv.weight, retain_graph=True, allow_unused=True)[0]
                    gradlog[k] = 0.0 if gr is None else round(float(gr.norm()), 3)
            opt.zero_grad(); sum(t.values()).backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0); opt.step()
    m.eval()
    with torch.no_grad():
        hv, ht, *_ = m.codes(IMG, TXT)
    return evaluate(hv.numpy(), ht.numpy()), gradlog

def evaluate(hv, ht):
    pv, pt = pack_signs(hv), pack_signs(ht)
    yq = Y.numpy().astype(np.uint8)
    out = {}
    for dname, src, dst in (('i2t', pv, pt), ('t2i', pt, pv)):
        n, r = distance_histograms(src[q], dst[db], yq[q], yq[db])
        out[dname] = round(metrics_from_histograms(n, r)['map'], 3)
        aps = []
        for c in RARE:
            ci = names.index(c)
            rows = q[yq[q, ci] > 0]
            n, r = distance_histograms(src[rows], dst[db], np.ones((len(rows), 1)), yq[db, ci:ci+1])
            aps.append(metrics_from_histograms(n, r)['map'])
        out[dname + '_rare'] = round(float(np.mean(aps)), 3)
    rare_rows = q[(yq[q][:, [names.index(c) for c in RARE]].sum(1) > 0)]
    normal_db = db[(yq[db, names.index('N')] > 0) & (yq[db].sum(1) == 1)]
    dist_own = np.array([hamming_distances(pv[[i]], pt[[i]])[0, 0] for i in rare_rows])
    dist_norm = hamming_distances(pv[rare_rows], pt[normal_db]).mean(1)
    out['hub_own'] = round(float(dist_own.mean()), 1); out['hub_normal'] = round(float(dist_norm.mean()), 1)
    return out

VARIANTS = {
 'base': {'method': 'base'},
 'mcph': {'method': 'mcph'},
 'mcph_beta1': {'method': 'mcph', 'beta': 1.0},
 'mcph_nolabel': {'method': 'mcph', 'beta': 0.0},
 'mcph_share_hash': {'method': 'mcph', 'share_hash': True},
 'mcph_hash_on_z': {'method': 'mcph', 'hash_on_z': True},
 'mcph_hash_on_z_shared': {'method': 'mcph', 'hash_on_z': True, 'share_hash': True},
 'mcph_hash_on_z_shared_res': {'method': 'mcph', 'hash_on_z': True, 'share_hash': True, 'share_res': True},
 'z_shared_nrcl10': {'method': 'mcph', 'hash_on_z': True, 'share_hash': True, 'w_nrcl': 10.0},
 'z_shared_beta1': {'method': 'mcph', 'hash_on_z': True, 'share_hash': True, 'beta': 1.0},
 'mcph_codecon': {'method': 'mcph', 'code_con': 1.0},
 'mcph_intra0': {'method': 'mcph', 'w_intra': 0.0},
 'z_shared_intra10': {'method': 'mcph', 'hash_on_z': True, 'share_hash': True, 'w_intra': 10.0},
 'z_shared_q10': {'method': 'mcph', 'hash_on_z': True, 'share_hash': True, 'w_q': 10.0},
 'mcph_q10': {'method': 'mcph', 'w_q': 10.0},
 'faithful': {'method': 'mcph', 'hash_on_z': True, 'local': True},
 'faithful_e': {'method': 'mcph', 'local': True},
 'faithful_beta1': {'method': 'mcph', 'hash_on_z': True, 'local': True, 'beta': 1.0},
 'faithful_balanced': {'method': 'mcph', 'hash_on_z': True, 'local': True, 'balanced': True},
 'faithful_codecon': {'method': 'mcph', 'hash_on_z': True, 'local': True, 'code_con': 1.0},
 'faithful_classbal': {'method': 'mcph', 'hash_on_z': True, 'local': True, 'classbal': True},
 'faithful_nrcl_codes': {'method': 'mcph', 'hash_on_z': True, 'local': True, 'nrcl_on_codes': True},
}
for name in args.variants:
    started = time.perf_counter()
    res, gl = run(VARIANTS[name])
    print(f"| {name} | {res['i2t']:.3f} | {res['t2i']:.3f} | {res['i2t_rare']:.3f} | {res['t2i_rare']:.3f} | "
          f"{res['hub_own']:.1f} | {res['hub_normal']:.1f} | {json.dumps(gl)} | {time.perf_counter() - started:.0f} s |",
          flush=True)
