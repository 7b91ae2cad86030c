"""The experiment grid on a real library (ingested synthetic pairs, tiny backbone, 1 epoch): the
report holds the measured numbers, the plots are images, re-runs skip finished runs, the library's
models are left alone, and the in-memory evaluation equals `evaluate_model` on stored codes."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from medhash_app.cli_research import register
from medhash_app.core.audit import audit_library
from medhash_app.core.errors import DataError
from medhash_app.core.experiment import register_run, run_experiment
from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
from medhash_app.core.session import MedHashSession
from medhash_app.core.training import evaluate_model, library_samples
from tests.trainer_synth import make_samples
from trainer.checkpoint import load_checkpoint
from trainer.experiment import GridSpec, parse_methods
from trainer.models.mcph import mcph_correspondence_scores

SMALL_MCPH = {"token_tower_dim": 64, "lta_dim": 64, "captioner_hidden": 32}
COMMAND = "medhash experiment --methods base,mcph (test)"


def _spec(**changes) -> GridSpec:
    base = {"variants": parse_methods("base,mcph"), "bits": [16, 32], "noise_rates": [0.0, 0.2], "seeds": [0],
            "epochs": 1, "backbone": "tiny", "lr": 1e-3, "device": "cpu", "num_workers": 0,
            "options": {"mcph": SMALL_MCPH}}
    return GridSpec(**{**base, **changes})


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("experiment-lib")
    samples = make_samples(root / "src", n=120, seed=0)
    rows = [{"image": Path(s.image_path).name, "report": s.report, "labels": s.labels, "patient_id": s.patient_id}
            for s in samples]
    (root / "src" / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with Library.open(root / "library", create=True) as lib:
        assert ingest([root / "src" / "manifest.jsonl"], lib, workers=1).added == 120
    return root / "library"


@pytest.fixture(scope="module")
def grid(library: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("grid") / "results"
    events: list[dict] = []
    with Library.open(library, read_only=True) as lib:
        outcome = run_experiment(lib, _spec(), out, progress=events.append, command=COMMAND)
    with Library.open(library, read_only=True) as lib:
        models_after = lib.list_models()
    results = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (out / "results").glob("*.json")}
    return out, outcome, results, events, models_after


def _tables(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Every pipe table under its heading, as rows of {column: cell}."""
    tables: dict[str, list[dict[str, str]]] = {}
    heading, header = "", None
    for line in markdown.splitlines():
        if line.startswith("#"):
            heading, header = line.lstrip("#").strip(), None
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line) <= set("|-"):
                tables.setdefault(heading, []).append(dict(zip(header, cells, strict=True)))
    return tables


def _result(results: dict, variant: str, noise: float) -> dict:
    return next(r for r in results.values() if r["variant"] == variant and r["noise_rate"] == noise)


def test_the_grid_trains_one_model_per_method_noise_and_seed(grid) -> None:
    out, outcome, results, events, models_after = grid
    assert sorted(outcome.ran) == sorted(results) == ["base_n00_s0", "base_n20_s0", "mcph_n00_s0", "mcph_n20_s0"]
    assert not outcome.skipped and not outcome.cancelled
    for r in results.values():  # all code lengths from one model
        assert set(r["metrics"]) == {"i2t@16", "i2t@32", "t2i@16", "t2i@32"} and r["bits"] == [16, 32]
        assert (out / r["checkpoint"] / "model.safetensors").is_file()
        assert not (out / "runs" / r["name"] / "last").exists()
    assert _result(results, "mcph", 0.2)["noise_handling"] == "adaptive_temperature"
    for r in results.values():  # one-query latency, batch 1, the first query of each kind not counted
        query = r["timing"]["query_ms"]
        assert query["queries"] == min(21, r["splits"]["query"]) - 1 > 0
        assert query["image_ms"] > 0 and query["text_ms"] > 0 and query["device"] == "cpu"
    assert _result(results, "base", 0.0)["audit"] is None
    assert [e["name"] for e in events if e.get("event") == "run" and e["status"] == "started"] == outcome.ran
    assert models_after == []  # nothing registered, nothing activated


def test_report_tables_hold_the_measured_numbers(grid) -> None:
    out, _, results, _, _ = grid
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"Command: `{COMMAND}`" in report and "Machine: " in report and "torch " in report
    tables = _tables(report)
    cells = 0
    for noise, title in ((0.0, "mAP@all, noise 0 %"), (0.2, "mAP@all, noise 20 %")):
        rows = tables[title]
        assert [r["Method"] for r in rows] == ["base", "mcph"]
        for row in rows:
            metrics = _result(results, row["Method"], noise)["metrics"]
            for direction, arrow in (("i2t", "I→T"), ("t2i", "T→I")):
                for bits in (16, 32):
                    assert row[f"{arrow} {bits}"] == f"{metrics[f'{direction}@{bits}']['map_all']:.3f}"
                    cells += 1
    assert cells == 16
    audit_rows = tables["Data audit on the noisy training pairs"]
    assert [(r["Method"], r["Noise"]) for r in audit_rows] == [("base", "20 %"), ("mcph", "20 %")]
    for row in audit_rows:
        audit = _result(results, row["Method"], 0.2)["audit"]
        assert row["Precision @ top 5 %"] == f"{audit['precision']:.3f}"
        assert row["Base rate"] == f"{audit['base_rate']:.3f}" and row["Score"] == audit["score_kind"]
    timing = {r["Run"]: r for r in tables["Time per run"]}
    assert set(timing) == set(results)
    for name, r in results.items():
        assert timing[name]["Encode ms/pair"] == f"{r['timing']['encode_ms_per_pair']:.2f}"
        assert timing[name]["Query ms: image"] == f"{r['timing']['query_ms']['image_ms']:.1f}"
        assert timing[name]["Query ms: report"] == f"{r['timing']['query_ms']['text_ms']:.1f}"
        assert float(timing[name]["Train s/epoch"]) > 0
    rare = tables["Rare classes, noise 0 %"]
    classes = _result(results, "base", 0.0)["per_class"]["classes"]
    assert {r["Class"] for r in rare} == set(classes)
    for row in rare:
        assert row["base I→T"] == f"{classes[row['Class']]['i2t_ap']:.3f}"
        assert int(row["train +"]) == classes[row["Class"]]["train_positives"]


def test_pr_curves_are_valid_png_images(grid) -> None:
    out, *_ = grid
    for name in ("pr-noise-0.png", "pr-noise-20.png"):
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 600 and img.height > 300
            assert len(img.convert("RGB").getcolors(1 << 20)) > 20  # axes, curves, text: not a blank canvas
        assert f"]({name})" in (out / "report.md").read_text(encoding="utf-8")


def test_rerun_skips_finished_runs_and_refuses_other_settings(grid, library: Path) -> None:
    out, outcome, _, _, _ = grid
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()}
    events: list[dict] = []
    with Library.open(library, read_only=True) as lib:
        again = run_experiment(lib, _spec(), out, progress=events.append, command=COMMAND)
        assert again.ran == [] and sorted(again.skipped) == sorted(outcome.ran)
        assert not [e for e in events if e.get("event") in ("start", "step", "epoch")]  # nothing trained
        assert {p.name: p.stat().st_mtime_ns for p in (out / "results").iterdir()} == stamps
        with pytest.raises(DataError, match="other settings"):
            run_experiment(lib, _spec(epochs=2), out)


@pytest.fixture(scope="module")
def registered(grid, library: Path) -> dict[str, int]:
    """Two grid runs promoted into the library (not active) and the library encoded with them."""
    out, *_ = grid
    with MedHashSession(library, device="cpu") as session:
        return {name: register_run(session, out, name) for name in ("base_n00_s0", "mcph_n20_s0")}


def test_in_memory_evaluation_equals_evaluate_model_on_stored_codes(grid, registered, library: Path) -> None:
    _, _, results, _, _ = grid
    with MedHashSession(library, device="cpu") as session:
        assert session.active_model() is None
        for name, model_id in registered.items():
            stored = evaluate_model(session, model_id)["metrics"]
            mine = results[name]["metrics"]
            for key, values in mine.items():
                for metric, value in values.items():
                    assert stored[key][metric] == pytest.approx(round(value, 4), abs=1e-9), (name, key, metric)


def test_mcph_library_audit_equals_the_trainers_correspondence_scores(grid, registered, library: Path) -> None:
    out, _, results, _, _ = grid
    with Library.open(library, read_only=True) as lib:
        report = audit_library(lib, registered["mcph_n20_s0"], top=None)
        samples = library_samples(lib)
    assert report.vectors == "embeddings" and report.score_kind == "mcph" and report.audited == 120
    model, _, _ = load_checkpoint(out / results["mcph_n20_s0"]["checkpoint"])
    expected = dict(zip([s.id for s in samples], -mcph_correspondence_scores(model, samples), strict=True))
    got = np.array([r.score for r in report.rows])
    want = np.array([expected[r.case_id] for r in report.rows])
    np.testing.assert_allclose(got, want, atol=5e-3)  # embeddings are stored as float16


def test_method_lists_parse_into_variants() -> None:
    variants = parse_methods("base,mcph,mcph:vpl=off,tpl=off,mcph:nrcl=off")
    assert [v.label for v in variants] == ["base", "mcph", "mcph:vpl=off,tpl=off", "mcph:nrcl=off"]
    assert [v.handling() for v in variants] == ["none", "adaptive_temperature", "adaptive_temperature", "none"]
    for bad, why in (("mcph:vlp=off", "no component"), ("nope", "unknown method"), ("vpl=off,mcph", "before"),
                     ("base,base", "twice"), ("mcph:vpl=maybe", "on or name=off")):
        with pytest.raises(DataError, match=why):
            parse_methods(bad)


def test_ablation_variants_get_a_component_table(tmp_path: Path) -> None:
    from trainer.experiment_report import ablation_tables

    spec = _spec(variants=parse_methods("base,mcph,mcph:vpl=off,tpl=off"), noise_rates=[0.0])
    fake = [{"variant": v.label, "noise_rate": 0.0, "metrics": {"i2t@32": {"map_all": 0.5 + i / 10},
                                                                  "t2i@32": {"map_all": 0.4}}}
            for i, v in enumerate(spec.variants)]
    rows = _tables("\n".join(ablation_tables(spec, fake)))["Ablation: mcph (mAP@all at 32 bits)"]
    assert [(r["Variant"], r["vpl"], r["tpl"], r["I→T n0 %"]) for r in rows] == [
        ("mcph", "✓", "✓", "0.600"), ("mcph:vpl=off,tpl=off", "✗", "✗", "0.700")]


def test_cli_audit_and_a_cancelled_then_resumed_experiment(grid, registered, library: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    csv_path = tmp_path / "audit.csv"
    res = runner.invoke(app, ["audit", "--library", str(library), "--model", str(registered["base_n00_s0"]),
                              "--top", "5", "--csv", str(csv_path), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert len(payload["rows"]) == 5 and payload["score_kind"] == "rank" and csv_path.is_file()
    res = runner.invoke(app, ["audit", "--library", str(library), "--json"])  # no active model
    assert res.exit_code == 2 and json.loads(res.stdout)["error"] == "ModelError"

    out = tmp_path / "small"
    stop = threading.Event()
    stop.set()
    with Library.open(library, read_only=True) as lib:
        spec = _spec(variants=parse_methods("base"), bits=[16], noise_rates=[0.2], seeds=[1])
        assert run_experiment(lib, spec, out, cancel=stop).cancelled
    assert not (out / "results").exists()
    args = ["experiment", "--library", str(library), "--out", str(out), "--methods", "base", "--bits", "16",
            "--noise", "0.2", "--seeds", "1", "--epochs", "1", "--backbone", "tiny", "--lr", "0.001",
            "--device", "cpu", "--workers", "0", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ran"] == ["base_n20_s1"]
    report = (out / "report.md").read_text(encoding="utf-8")
    command = re.search(r"Command: `(.*)`", report).group(1)
    assert command.startswith("medhash experiment --library") and "--noise 0.2" in command
    bad = [*args[:args.index("--methods") + 1], "base:contrastive=maybe", *args[args.index("--methods") + 2:]]
    res = runner.invoke(app, bad)
    assert res.exit_code == 2 and json.loads(res.stdout)["item"] == "--methods"


def test_caption_and_noise_drop_tables_hold_the_measured_numbers(grid) -> None:
    out, _, results, _, _ = grid
    tables = _tables((out / "report.md").read_text(encoding="utf-8"))
    captions = tables["Captions: mAP@all with and without the image's caption"]
    assert [(r["Method"], r["Noise"]) for r in captions] == [("mcph", "0 %"), ("mcph", "20 %")]  # base uses none
    assert _result(results, "base", 0.0)["metrics_without_captions"] is None
    for row, noise in zip(captions, (0.0, 0.2), strict=True):
        r = _result(results, "mcph", noise)
        for direction, arrow in (("i2t", "I→T"), ("t2i", "T→I")):
            for bits in (16, 32):
                key = f"{direction}@{bits}"
                assert row[f"{arrow} {bits} with"] == f"{r['metrics'][key]['map_all']:.3f}"
                assert row[f"{arrow} {bits} without"] == f"{r['metrics_without_captions'][key]['map_all']:.3f}"
        # report codes never see a caption: T->I differs only through the image (database) codes
        assert set(r["metrics_without_captions"]) == set(r["metrics"])

    drops = {r["Method"]: r for r in tables["Robustness: mAP@all lost to noise (32 bits)"]}
    assert drops["base"]["I→T of base's drop avoided"] == "–"
    for direction, arrow in (("i2t", "I→T"), ("t2i", "T→I")):
        m = {(v, n): _result(results, v, n)["metrics"][f"{direction}@32"]["map_all"]
             for v in ("base", "mcph") for n in (0.0, 0.2)}
        base_drop, mcph_drop = m["base", 0.0] - m["base", 0.2], m["mcph", 0.0] - m["mcph", 0.2]
        assert float(drops["mcph"][f"{arrow} drop"]) == pytest.approx(mcph_drop, abs=6e-4)
        if base_drop > 1e-9:
            assert drops["mcph"][f"{arrow} of base's drop avoided"] == f"{100 * (1 - mcph_drop / base_drop):.0f} %"


def test_evaluation_from_the_stem_cache_is_close_to_the_full_forward(grid, library: Path, tmp_path: Path) -> None:
    """`eval_from_cache` reuses the float16 stems: the same trained model scores (nearly) the same."""
    out, _, results, _, _ = grid
    fast = tmp_path / "fast"  # only the cache lives here: the finished grid's run is evaluated again
    from trainer.checkpoint import load_checkpoint as load
    from trainer.data.splits import load_splits
    from trainer.experiment import _evaluate_run, run_configs

    spec = _spec(eval_from_cache=True)
    run = next(r for r in spec.runs() if r.name == "mcph_n20_s0")
    best = out / results[run.name]["checkpoint"]
    model, _, _ = load(best)
    _, train_cfg = run_configs(spec, run, model.cfg.label_names, fast / ".feature-cache")
    with Library.open(library, read_only=True) as lib:
        splits = load_splits(best / "splits.json", library_samples(lib))
    quick = _evaluate_run(best, splits, run, train_cfg, spec, out / "runs" / run.name)
    assert quick["eval_from_cache"] and any((fast / ".feature-cache").iterdir())
    slow = results[run.name]
    assert slow["eval_from_cache"] is False
    for key, values in slow["metrics"].items():
        assert quick["metrics"][key]["map_all"] == pytest.approx(values["map_all"], abs=0.02), key
    assert quick["audit"]["pairs"] == slow["audit"]["pairs"]
    assert quick["audit"]["precision"] == pytest.approx(slow["audit"]["precision"], abs=0.15)


def test_report_only_trains_nothing_and_counts_the_missing_runs(grid, library: Path, tmp_path: Path) -> None:
    out, _, results, _, _ = grid
    partial = tmp_path / "partial"
    (partial / "results").mkdir(parents=True)
    (partial / "runs").symlink_to(out / "runs", target_is_directory=True)
    kept = [n for n in results if n.endswith("n00_s0")]  # a grid that finished only its noise-0 runs
    for name in kept:
        (partial / "results" / f"{name}.json").write_bytes((out / "results" / f"{name}.json").read_bytes())
    events: list[dict] = []
    with Library.open(library, read_only=True) as lib:
        outcome = run_experiment(lib, _spec(), partial, progress=events.append, train=False)
    assert outcome.ran == [] and sorted(outcome.skipped) == sorted(kept)
    assert not [e for e in events if e.get("event") in ("start", "step", "epoch")]
    assert sorted(p.stem for p in (partial / "results").glob("*.json")) == sorted(kept)
    report = (partial / "report.md").read_text(encoding="utf-8")
    assert f"Runs finished: {len(kept)} of 4" in report
    rows = _tables(report)["mAP@all, noise 20 %"]
    assert all(cell == "–" for row in rows for key, cell in row.items() if key != "Method")


def test_report_only_measures_query_latency_of_runs_made_before_it_existed(grid, library: Path, tmp_path: Path) -> None:
    out, *_ = grid
    older = tmp_path / "older"
    (older / "results").mkdir(parents=True)
    (older / "runs").symlink_to(out / "runs", target_is_directory=True)
    name = "base_n00_s0"
    result = json.loads((out / "results" / f"{name}.json").read_text(encoding="utf-8"))
    del result["timing"]["query_ms"]  # as a run finished by an older version of the grid
    (older / "results" / f"{name}.json").write_text(json.dumps(result), encoding="utf-8")
    with Library.open(library, read_only=True) as lib:
        run_experiment(lib, _spec(), older, train=False)
    saved = json.loads((older / "results" / f"{name}.json").read_text(encoding="utf-8"))["timing"]["query_ms"]
    assert saved["queries"] == min(21, result["splits"]["query"]) - 1 and saved["image_ms"] > 0
    row = {r["Run"]: r for r in _tables((older / "report.md").read_text(encoding="utf-8"))["Time per run"]}[name]
    assert row["Query ms: image"] == f"{saved['image_ms']:.1f}"


def test_tripah_and_prompthash_run_through_the_grid_into_the_report(library: Path, tmp_path: Path) -> None:
    """The side-by-side report is not BASE/MCPH-only: the other two methods train, are audited by
    Hamming rank, and their measured numbers land in the same tables."""
    out = tmp_path / "results"
    spec = _spec(variants=parse_methods("tripah,prompthash"), noise_rates=[0.2], bits=[32], options={})
    with Library.open(library, read_only=True) as lib:
        outcome = run_experiment(lib, spec, out, command=COMMAND)
    assert sorted(outcome.ran) == ["prompthash_n20_s0", "tripah_n20_s0"]
    results = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in (out / "results").glob("*.json")}
    tables = _tables((out / "report.md").read_text(encoding="utf-8"))
    rows = tables["mAP@all, noise 20 %"]
    assert [r["Method"] for r in rows] == ["tripah", "prompthash"]
    for row in rows:
        metrics = _result(results, row["Method"], 0.2)["metrics"]
        assert row["I→T 32"] == f"{metrics['i2t@32']['map_all']:.3f}"
        assert row["T→I 32"] == f"{metrics['t2i@32']['map_all']:.3f}"
    for row in tables["Data audit on the noisy training pairs"]:
        audit = _result(results, row["Method"], 0.2)["audit"]
        assert row["Score"] == audit["score_kind"] == "rank"
        assert row["Precision @ top 5 %"] == f"{audit['precision']:.3f}"
    rare = tables["Rare classes, noise 20 %"]
    classes = _result(results, "prompthash", 0.2)["per_class"]["classes"]
    assert rare and all(row["prompthash T→I"] == f"{classes[row['Class']]['t2i_ap']:.3f}" for row in rare)
