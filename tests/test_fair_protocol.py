"""The fair protocol: mirrored validation, backbone-lr scale, step budget, paired bootstrap,
instance recall, the linear probe, and a resumable end-to-end grid on the tiny backbone."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.trainer_synth import make_samples, tiny_model
from trainer.config import TrainConfig
from trainer.data.splits import make_splits
from trainer.engine import map_without_self, optimizer_groups
from trainer.evaluate import map_at_all, pack_signs
from trainer.experiment import parse_methods
from trainer.fair_protocol import (
    FairSpec,
    chosen_settings,
    epochs_for,
    expected_recall_group,
    expected_recall_own,
    load_results,
    run_fair,
    train_seconds,
)
from trainer.fair_report import noise_change, noise_change_lines, rare_paired
from trainer.linear_probe import average_precision, macro_auc, share_probability
from trainer.paired_bootstrap import paired_class_interval, paired_interval

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- mirrored validation --------------------------------------------------------------------------
def test_map_without_self_equals_leaving_each_own_item_out():
    rng = np.random.default_rng(0)
    q, db = rng.standard_normal((7, 16)), rng.standard_normal((20, 16))
    db[:7] = q + 0.3 * rng.standard_normal((7, 16))  # the queries' own items sit near them
    labels = rng.random((20, 3)) < 0.4
    labels[3] = False  # a query without labels: its own item is not relevant
    got = map_without_self(q, db, labels, 7)
    for i in range(7):
        keep = np.array([j for j in range(20) if j != i])
        want = map_at_all(pack_signs(q[i:i + 1]), pack_signs(db[keep]), labels[i:i + 1], labels[keep])
        assert got[i] == pytest.approx(want, abs=1e-12)


# ---- optimizer -------------------------------------------------------------------------------------
def test_backbone_lr_scale_reaches_the_backbone_and_only_it():
    model = tiny_model("tripah", ["a", "b"])  # TriPAH scales its backbone by 0.1 itself
    backbone = {id(p) for p in model.backbone.parameters()}
    own = optimizer_groups(model, TrainConfig(lr=1e-3))
    assert [g["lr"] for g in own if any(id(p) in backbone for p in g["params"])] == pytest.approx([1e-4, 1e-4])
    groups = optimizer_groups(model, TrainConfig(lr=1e-3, backbone_lr_scale=0.5))
    for g in groups:
        inside = {id(p) in backbone for p in g["params"]}
        assert len(inside) == 1  # a group is all backbone or none of it
        assert g["lr"] == pytest.approx(5e-4 if inside == {True} else 1e-3)
    assert sum(len(g["params"]) for g in groups) == len(model.trainable_parameters())


def test_frozen_towers_reach_the_model_config_and_the_report(tmp_path: Path):
    from trainer.fair_protocol import FairRun, run_configs
    from trainer.fair_report import protocol_lines

    samples = make_samples(tmp_path / "img", n=40)
    splits = make_splits(samples, sizes={"query": 8, "val": 8}, seed=0)
    variant = parse_methods("base")[0]
    run = FairRun("select", variant, 3e-4, 1.0, 0.0, 0, (16,), 10)
    spec = FairSpec([variant], backbone="tiny")
    own, _ = run_configs(spec, run, splits, ["a", "b"], tmp_path)
    frozen, _ = run_configs(FairSpec([variant], backbone="tiny", trainable_top_blocks=0), run, splits, ["a", "b"],
                            tmp_path)
    assert own.trainable_top_blocks == 2 and frozen.trainable_top_blocks == 0
    from trainer.models import build_model

    model = build_model(frozen)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert any(p.requires_grad for p in model.parameters())  # the method's own layers still train
    assert "both towers frozen" in " ".join(protocol_lines(FairSpec([variant], trainable_top_blocks=0), "", "", {}, {}))
    assert "both towers frozen" not in " ".join(protocol_lines(spec, "", "", {}, {}))


def test_step_budget_rounds_up_to_whole_epochs():
    assert epochs_for(1500, 2275, 32) == (22, 71)  # 22 x 71 = 1,562 steps >= 1,500
    assert epochs_for(10, 5, 32) == (10, 1)


# ---- statistics ------------------------------------------------------------------------------------
def test_paired_interval_by_hand():
    base = [[0.5, 0.5, 0.5, 0.5]]
    iv = paired_interval([[0.6, 0.6, 0.6, 0.6]], base)  # every query +0.1: no spread at all
    assert (iv.mean, iv.low, iv.high, iv.verdict) == (pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1), "beats")
    iv = paired_interval([[0.9, 0.1, 0.9, 0.1]], base)  # +0.4 / -0.4 in equal shares: mean 0
    assert iv.mean == pytest.approx(0.0) and iv.low < 0 < iv.high and iv.verdict == "ties"
    # seeds are averaged per query before resampling: -0.2 and 0.0 -> -0.1 everywhere
    iv = paired_interval([[0.3, 0.3], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]])
    assert (iv.high, iv.verdict, iv.seeds) == (pytest.approx(-0.1), "loses", 2)
    with pytest.raises(ValueError):
        paired_interval([[0.1, 0.2]], [[0.1]])


def test_paired_class_interval_by_hand():
    # class A: queries 0, 1 at +0.2; class B: query 2 at -0.1 -> mean of the class means 0.05
    iv = paired_class_interval([([0, 1], [[0.7, 0.7]], [[0.5, 0.5]]), ([2], [[0.4]], [[0.5]])], queries=4)
    assert iv.mean == pytest.approx(0.05) and iv.low <= 0.05 <= iv.high
    # every resample that keeps both classes gives 0.05; one that loses class B gives 0.2, A: -0.1
    assert iv.low >= -0.1 - 1e-12 and iv.high <= 0.2 + 1e-12
    # a query in two classes and two seeds averaged per query: -0.2 and 0.0 -> -0.1 in both classes
    iv = paired_class_interval([([0], [[0.3], [0.5]], [[0.5], [0.5]]), ([0, 1], [[0.3, 0.3], [0.5, 0.5]],
                                                                          [[0.5, 0.5], [0.5, 0.5]])], queries=2)
    assert (iv.mean, iv.high, iv.verdict, iv.seeds) == (pytest.approx(-0.1), pytest.approx(-0.1), "loses", 2)
    with pytest.raises(ValueError):
        paired_class_interval([([0, 1], [[0.1]], [[0.1]])], queries=2)


def test_rare_class_interval_skips_classes_without_queries():
    def run(variant: str, ap: list[float]) -> dict:
        classes = {"A": {"train_positives": 1, "query_positives": 0, "query_index": [], "i2t_ap": None},
                   "B": {"train_positives": 5, "query_positives": 2, "query_index": [0, 2], "i2t_ap": float(np.mean(ap)),
                         "i2t_query_ap": ap}}
        return {"phase": "final", "variant": variant, "noise_rate": 0.0, "seed": 0, "query_ids": ["q0", "q1", "q2"],
                "per_class": {"classes": classes}}

    results = {"b": run("base", [0.5, 0.5]), "m": run("m", [0.7, 0.7])}
    iv = rare_paired(results, "m", "base", 0.0, "i2t", 200)
    assert (iv.mean, iv.low, iv.verdict) == (pytest.approx(0.2), pytest.approx(0.2), "beats")
    del results["b"]["per_class"]["classes"]["B"]["query_index"]  # evaluated before per-query class APs
    assert rare_paired(results, "m", "base", 0.0, "i2t", 200) is None


def test_noise_change_pairs_each_noisy_run_with_its_own_seed_at_noise_0():
    def run(seed: int, noise: float, i2t: float) -> dict:
        return {"phase": "final", "variant": "mcph", "noise_rate": noise, "seed": seed,
                "metrics": {"i2t@64": {"map_all": i2t}, "t2i@64": {"map_all": 0.5}}}

    # seed 0: 0.50 -> 0.40 (-0.10); seed 1: 0.70 -> 0.66 (-0.04); seed 2 has no noise-0 run: left out
    results = {f"{s}_{n}": run(s, n, v) for s, n, v in
               [(0, 0.0, 0.50), (1, 0.0, 0.70), (0, 0.2, 0.40), (1, 0.2, 0.66), (2, 0.2, 0.10)]}
    mean, seeds = noise_change(results, "mcph", 0.2, "i2t@64")
    assert (mean, seeds) == (pytest.approx(-0.07), 2)  # not the unpaired -0.15 of (0.40+0.66+0.10)/3 - 0.60
    assert noise_change(results, "mcph", 0.5, "i2t@64") is None
    spec = FairSpec(parse_methods("mcph"), bits=[64], noise_rates=[0.0, 0.2], seeds=[0, 1, 2], steps=1)
    row = next(line for line in noise_change_lines(spec, results) if line.startswith("| 20 % | mcph |"))
    assert [c.strip(" |") for c in row.split(" | ")[2:]] == ["2", "-0.070", "+0.000"]


def test_train_time_sums_every_epoch_across_resumes():
    assert train_seconds([{"epoch": 1, "seconds": 1.5}, {"epoch": 2, "seconds": 2.25}], this_call_s=2.25) == 3.8
    # epoch 1 ran before the engine recorded seconds: only this call's time is known
    assert train_seconds([{"epoch": 1}, {"epoch": 2, "seconds": 2.25}], this_call_s=2.3) == 2.3


def test_expected_recall_of_the_own_item_with_ties():
    dist = np.array([[1, 0, 2], [1, 1, 1]])
    own = np.array([0, 0])
    assert expected_recall_own(dist, own, 1).tolist() == [0.0, pytest.approx(1 / 3)]
    assert expected_recall_own(dist, own, 2).tolist() == [1.0, pytest.approx(2 / 3)]


def test_expected_recall_of_a_group_with_ties():
    dist = np.array([[0, 1, 1, 1]])
    same = np.array([[False, True, False, False]])
    # one item ahead, then a tie block of 3 holding 1 group item; top 2 takes 1 of the 3 at random
    assert expected_recall_group(dist, same, 2)[0] == pytest.approx(1 / 3)
    assert expected_recall_group(dist, same, 3)[0] == pytest.approx(1 - (2 / 3) * (1 / 2))
    assert expected_recall_group(dist, same, 1)[0] == 0.0


def test_probe_retrieval_pieces_by_hand():
    ap = average_precision(np.array([[0.9, 0.8, 0.7]]), np.array([[True, False, True]]))
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)
    p = share_probability(np.array([[0.5, 0.5]]), np.array([[1.0, 1.0], [0.0, 0.5]]))
    assert p[0].tolist() == [pytest.approx(0.75), pytest.approx(0.25)]
    assert macro_auc(np.array([[0.9], [0.1], [0.5]]), np.array([[1], [0], [0]])) == pytest.approx(1.0)


# ---- the grid --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fair_grid(tmp_path_factory: pytest.TempPathFactory):
    samples = make_samples(tmp_path_factory.mktemp("shapes"), n=96, seed=0)
    spec = FairSpec(parse_methods("base,base:classifier=on"), bits=[16, 32], noise_rates=[0.0], seeds=[0, 1],
                    steps=14, batch_size=8, lr_grid=[1e-4, 3e-3], backbone_lr_grid=[1.0], select_bits=32,
                    val_points=2, backbone="tiny", device="cpu", num_workers=0,
                    split_sizes={"query": 16, "train": 56, "val": 12}, bootstrap=200)
    out = tmp_path_factory.mktemp("fair") / "out"
    first = run_fair(samples, spec, out, max_runs=3, command="medhash experiment --protocol fair --max-runs 3")
    second = run_fair(samples, spec, out, command="medhash experiment --protocol fair")
    return samples, spec, out, first, second


def test_a_call_stops_at_its_run_budget_and_the_next_resumes(fair_grid):
    _, _, out, first, second = fair_grid
    assert len(first.ran) == 3 and first.pending
    assert set(first.ran).isdisjoint(second.ran) and not second.pending
    assert len(load_results(out)) == 4 + 4  # 2 variants x 2 lrs to select, 2 variants x 2 seeds final


def test_selection_picks_the_best_mirrored_val_map_per_method(fair_grid):
    _, spec, out, _, _ = fair_grid
    results = load_results(out)
    chosen = chosen_settings(spec, results)
    for v in spec.variants:
        cells = {(r["lr"], r["backbone_lr_scale"]): r["best_val_map"] for r in results.values()
                 if r["phase"] == "select" and r["variant"] == v.label}
        assert chosen[v.label] == max(cells, key=cells.get)
        finals = [r for r in results.values() if r["phase"] == "final" and r["variant"] == v.label]
        assert {(r["lr"], r["backbone_lr_scale"]) for r in finals} == {chosen[v.label]}


def test_runs_share_one_split_budget_and_mirrored_validation(fair_grid):
    _, spec, out, _, _ = fair_grid
    finals = [r for r in load_results(out).values() if r["phase"] == "final"]
    assert len({tuple(r["query_ids"]) for r in finals}) == 1  # one split for every seed and method
    for r in finals:
        assert r["steps"] >= spec.steps
        assert r["fingerprint"]["train_config"]["val_database"] == "train+val"
        assert r["val_history"][0]["val_map"]["database"] == 56 + 12
        assert len(r["per_query_ap"]["i2t@32"]) == 16
        assert 0.0 <= r["instance_recall"]["32"]["i2t_own_r@1"] <= r["instance_recall"]["32"]["i2t_own_r@10"] <= 1.0


def test_report_gives_intervals_verdicts_and_the_probe(fair_grid):
    _, _, out, _, second = fair_grid
    text = Path(second.report).read_text(encoding="utf-8")
    assert "medhash experiment --protocol fair" in text
    row = next(line for line in text.splitlines() if line.startswith("| base:classifier=on |") and "[" in line)
    assert any(v in row for v in ("beats", "ties", "loses"))
    probe = json.loads((out / "probe.json").read_text(encoding="utf-8"))
    assert 0.0 < probe["i2t_map"] <= 1.0 and 0.0 < probe["t2i_map"] <= 1.0
    assert "Linear-probe reference" in text


def test_the_report_lists_the_command_that_trained_each_run(fair_grid):
    _, _, out, first, second = fair_grid
    results = load_results(out)
    assert {results[name]["command"] for name in first.ran} == {"medhash experiment --protocol fair --max-runs 3"}
    assert {results[name]["command"] for name in second.ran} == {"medhash experiment --protocol fair"}
    text = Path(second.report).read_text(encoding="utf-8")
    listed = text[text.index("## Commands that trained these runs"):]
    assert f"- {len(first.ran)} run(s): {', '.join(sorted(first.ran))}" in listed
    assert "--max-runs 3\n```" in listed


def test_class_aps_keep_their_queries_and_the_report_gives_rare_class_intervals(fair_grid):
    _, _, out, _, second = fair_grid
    for r in (r for r in load_results(out).values() if r["phase"] == "final"):
        for c in r["per_class"]["classes"].values():
            assert len(c["query_index"]) == c["query_positives"]
            if c["query_positives"]:
                assert np.mean(c["i2t_query_ap"]) == pytest.approx(c["i2t_ap"], abs=1e-6)
    text = Path(second.report).read_text(encoding="utf-8")
    rare = text[text.index("## Rare classes"):].splitlines()
    row = next(line for line in rare if line.startswith("| 0 % | base:classifier=on |"))
    assert row.count("[") == 2 and any(v in row for v in ("beats", "ties", "loses"))


def test_a_run_evaluated_by_an_older_version_is_evaluated_again_from_its_checkpoint(fair_grid):
    samples, spec, out, _, _ = fair_grid
    finals = sorted(p for p in (out / "results").glob("final_*.json"))
    stale, orphan = finals[0], finals[1]
    before = {p: json.loads(p.read_text(encoding="utf-8")) for p in (stale, orphan)}
    for path, result in before.items():
        old = {**result, "metrics": {k: {**m, "map_all": -1.0} for k, m in result["metrics"].items()}}
        del old["evaluation_version"]
        path.write_text(json.dumps(old), encoding="utf-8")
    orphan_best = out / "runs" / (before[orphan].get("reused_from") or before[orphan]["name"]) / "best"
    orphan_best.rename(orphan_best.with_name("moved"))
    try:
        run_fair(samples, spec, out, train=False)
    finally:
        orphan_best.with_name("moved").rename(orphan_best)
    again = json.loads(stale.read_text(encoding="utf-8"))
    assert again["evaluation_version"] == 2 and again["metrics"] == before[stale]["metrics"]  # same model, same numbers
    assert again["per_query_ap"] == before[stale]["per_query_ap"] and again["train_s"] == before[stale]["train_s"]
    kept = json.loads(orphan.read_text(encoding="utf-8"))
    assert "evaluation_version" not in kept and all(m["map_all"] == -1.0 for m in kept["metrics"].values())
    orphan.write_text(json.dumps(before[orphan]), encoding="utf-8")  # the other tests read it


def test_the_report_uses_the_folders_grid_and_sets_aside_finals_at_an_unchosen_setting(fair_grid, tmp_path: Path):
    """A grid widened after the finals ran must not count a run at the old lr as another seed, and a
    later call that declares a narrower --lr-grid must not change which lr the report calls chosen."""
    samples, spec, out, _, _ = fair_grid
    folder = tmp_path / "out"
    shutil.copytree(out / "results", folder / "results")
    results = load_results(folder)
    lr, _ = chosen_settings(spec, results)["base"]
    other = next(x for x in spec.lr_grid if x != lr)
    seed0 = next(r for r in results.values() if r["phase"] == "final" and r["variant"] == "base" and r["seed"] == 0)
    (folder / "results" / "final_base_old_s0.json").write_text(
        json.dumps({**seed0, "name": "final_base_old_s0", "lr": other}), encoding="utf-8")
    outcome = run_fair(samples, replace(spec, lr_grid=[other]), folder, train=False)
    lines = Path(outcome.report).read_text(encoding="utf-8").splitlines()
    assert "- final_base_old_s0" in lines
    assert any(line.startswith("| base | 2 |") for line in lines)  # still two seeds, not three
    selection = next(line for line in lines if line.startswith("| base |") and "**" in line)
    assert selection.count("|") == 2 + len(spec.lr_grid) and f"**{results[f'select_base_lr{lr:g}_bb1_n00_s0']['best_val_map']:.3f}**" in selection


def test_a_call_for_one_method_still_reports_every_finished_method(fair_grid):
    """The grid is run a method at a time; each call rewrites report.md, which must keep the others."""
    samples, spec, out, _, _ = fair_grid
    narrow = replace(spec, variants=parse_methods("base:classifier=on"), seeds=[0])
    outcome = run_fair(samples, narrow, out, train=False, command="medhash experiment --methods base:classifier=on")
    text = Path(outcome.report).read_text(encoding="utf-8")
    assert not outcome.ran and not outcome.pending
    assert any(line.startswith("| base | 2 |") for line in text.splitlines())  # BASE's two seeds stay in
    row = next(line for line in text.splitlines() if line.startswith("| base:classifier=on |") and "[" in line)
    assert "(n=" not in row and "Final runs: seeds [0, 1]" in text  # the interval pairs both seeds


def test_splits_are_patient_disjoint(fair_grid):
    samples, spec, _, _, _ = fair_grid
    splits = make_splits(samples, sizes=spec.split_sizes, seed=spec.split_seed)
    assert not {s.patient_id for s in splits.query} & {s.patient_id for s in splits.train}
    assert torch.get_num_threads() == 1


# ---- the command ---------------------------------------------------------------------------------
def test_cli_fair_protocol_with_relevance_from_a_manifest_column(tmp_path: Path):
    import typer
    from typer.testing import CliRunner

    from medhash_app.cli_research import register
    from medhash_app.core.experiment import relevance_samples
    from medhash_app.core.ingest import ingest
    from medhash_app.core.library import Library

    samples = make_samples(tmp_path / "src", n=60, seed=1)
    rows = [{"image": Path(s.image_path).name, "report": s.report, "patient_id": s.patient_id,
             "shape_seen": s.labels[0]} for s in samples]  # no labels column: relevance comes from shape_seen
    (tmp_path / "src" / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with Library.open(tmp_path / "lib", create=True) as lib:
        assert ingest([tmp_path / "src" / "manifest.jsonl"], lib, workers=1).added == 60
        by_relevance = relevance_samples(lib, ["shape_seen"])
    assert sorted({s.labels[0] for s in by_relevance}) == ["circle", "square", "triangle"]
    app = typer.Typer()
    register(app)
    out = tmp_path / "fair"
    args = ["experiment", "--protocol", "fair", "--library", str(tmp_path / "lib"), "--out", str(out),
            "--methods", "base", "--bits", "16", "--noise", "0", "--seeds", "0", "--steps", "6",
            "--lr-grid", "0.001", "--backbone-lr-grid", "1", "--phase", "select,final",
            "--relevance", "shape_seen", "--backbone", "tiny", "--device", "cpu", "--workers", "0",
            "--batch-size", "8", "--split-sizes", "query=10,train=40,val=10", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert sorted(payload["ran"]) == ["final_base_lr0.001_bb1_n00_s0", "select_base_lr0.001_bb1_n00_s0"]
    final = json.loads((out / "results" / "final_base_lr0.001_bb1_n00_s0.json").read_text(encoding="utf-8"))
    assert final["reused_from"] == "select_base_lr0.001_bb1_n00_s0"  # same training: evaluated, not repeated
    assert len(final["per_query_ap"]["i2t@16"]) == 10
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "relevance = same shape_seen" in report and "--protocol fair" in report
    recipe = report.split("```bash\n")[1].split("\n```")[0]
    assert "--steps 6" in recipe and "--lr-grid 0.001" in recipe  # what the fair protocol reads ...
    assert "--epochs" not in recipe and "--eval-from-cache" not in recipe  # ... and not the grid's options
    res = CliRunner().invoke(app, [*args[:args.index("--phase")], "--phase", "final,nonsense", *args[args.index("--phase") + 2:]])
    assert res.exit_code == 2 and json.loads(res.stdout)["item"] == "--phase"
