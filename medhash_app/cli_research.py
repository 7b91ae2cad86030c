"""`medhash audit` and `medhash experiment`: the research commands, added to the main app by
`register(app)` (medhash_app/cli.py). Same conventions as the other commands: `--library`,
`--json` (one JSON document on stdout), progress on stderr, user errors exit 2 via `fail`.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from medhash_app.cli_support import (
    JsonOpt,
    LibraryOpt,
    cancellable,
    console,
    emit_json,
    emit_jsonl,
    fail,
    parse_sizes,
    progress_bar,
)
from medhash_app.core.errors import MedHashError


def audit_cmd(library: LibraryOpt,
              model: Annotated[int | None, typer.Option("--model", help="Model id (default: the active model).")] = None,
              top: Annotated[int, typer.Option("--top", min=1, help="How many pairs to list.")] = 50,
              bits: Annotated[int | None, typer.Option(help="Code length whose codes/embeddings to use "
                                                            "(default: longest).")] = None,
              csv_path: Annotated[Path | None, typer.Option("--csv", help="Also write the rows to this CSV.")] = None,
              as_json: JsonOpt = False) -> None:
    """List the image-report pairs that most likely do not belong together (highest score first)."""
    from medhash_app.core.audit import audit_library
    from medhash_app.core.library import Library

    try:
        with Library.open(library, read_only=True) as lib:
            report = audit_library(lib, model, top=top, bits=bits)
        if csv_path is not None:
            report.write_csv(csv_path)
    except MedHashError as exc:
        fail(exc, as_json)
    except OSError as exc:
        fail(MedHashError(csv_path, f"cannot write the CSV ({exc.strerror or exc})"), as_json)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_audit(report)


def _print_audit(report) -> None:
    from rich.table import Table

    table = Table(title=f"model {report.model_id} ({report.method}) · {report.audited} pairs · "
                        f"score {report.score_kind} on {report.vectors}, {report.bits} bits")
    for col in ("#", "score", "rank I→T", "rank T→I", "labels", "case", "report"):
        table.add_column(col)
    for r in report.rows:
        table.add_row(str(r.rank), f"{r.score:.3f}", f"{r.rank_i2t:g}", f"{r.rank_t2i:g}", ", ".join(r.labels),
                      r.case_id[:12], r.report_excerpt[:80])
    console.print(table)
    if report.not_audited:
        console.print(f"[yellow]{report.not_audited} cases were not audited: no report, or no codes of this model "
                      "yet (`medhash encode` adds them)[/]")


def experiment_cmd(ctx: typer.Context, library: LibraryOpt,
                   out: Annotated[Path, typer.Option(help="Output folder, e.g. docs/results/<name>.")],
                   methods: Annotated[str, typer.Option(help="Methods and ablation variants, e.g. "
                                                             "'base,mcph,mcph:vpl=off,tpl=off'.")] = "base,mcph",
                   protocol: Annotated[str, typer.Option(
                       help="grid: the papers' grid at each method's paper settings. fair: the same step budget, "
                       "lr and backbone-lr scale tuned per method on mirrored validation, several seeds, paired "
                       "bootstrap intervals against BASE, the linear-probe reference and the leak study.")] = "grid",
                   bits: Annotated[str | None, typer.Option(help="Code lengths (grid: 16,32,64,128; fair: 64).")] = None,
                   noise: Annotated[str, typer.Option(help="Injected noise rates.")] = "0,0.2,0.5",
                   seeds: Annotated[str | None, typer.Option(help="Seeds (grid: 0, splits and initialisation; "
                                                                  "fair: 0,1,2, initialisation only).")] = None,
                   epochs: Annotated[int, typer.Option(min=1, help="grid only.")] = 10,
                   steps: Annotated[int, typer.Option(min=1, help="fair: optimizer steps per run.")] = 1500,
                   lr_grid: Annotated[str, typer.Option(help="fair: learning rates to choose from.")] = "1e-4,3e-4,1e-3",
                   backbone_lr_grid: Annotated[str, typer.Option(
                       help="fair: backbone-lr scales to choose from.")] = "0.1,1",
                   select_steps: Annotated[int | None, typer.Option(
                       min=1, help="fair: steps of a selection run (default: --steps).")] = None,
                   trainable_top_blocks: Annotated[int | None, typer.Option(
                       min=0, help="fair: tower blocks that train (default: the method's, 2); 0 freezes both "
                       "towers (cheaper for BASE only: benchmarks/results/fair_step_cost.md).")] = None,
                   phase: Annotated[str, typer.Option(help="fair: phases to run (select,final,probe,leak).")]
                   = "select,final,probe,leak",
                   max_runs: Annotated[int | None, typer.Option(
                       min=0, help="fair: train at most this many runs in this call (the next call resumes).")] = None,
                   relevance: Annotated[str | None, typer.Option(
                       help="fair: make each case's label from these case fields (relevant = same values), e.g. "
                       "'modality,location_category' for MedPix; default: the library's labels.")] = None,
                   backbone: Annotated[str, typer.Option(help="embedded, tiny or open_clip:<arch>.")] = "embedded",
                   weights: Annotated[Path | None, typer.Option(help="Local weights for open_clip:<arch>.")] = None,
                   batch_size: Annotated[int | None, typer.Option(
                       min=2, help="Default: the method's (grid), 32 for every method (fair).")] = None,
                   lr: Annotated[float | None, typer.Option(help="grid: default the method's.")] = None,
                   split_sizes: Annotated[str | None, typer.Option(help="e.g. 'query=350,train=2275'.")] = None,
                   device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
                   workers: Annotated[int, typer.Option(min=0, help="Data-loading processes.")] = 2,
                   progress: Annotated[str, typer.Option(help="bar, jsonl or none.")] = "bar",
                   eval_from_cache: Annotated[bool, typer.Option(
                       "--eval-from-cache", help="grid: evaluate and audit from the float16 frozen-stem cache: "
                       "several times faster on CPU, codes within ~2e-3 of the full forward.")] = False,
                   report_only: Annotated[bool, typer.Option(
                       "--report-only", help="Train nothing: write the report from the runs already finished "
                       "(with the same settings) in --out. Runs scored by an older evaluation version are "
                       "first evaluated again from their checkpoints (minutes each on a CPU).")] = False,
                   as_json: JsonOpt = False) -> None:
    """Compare methods: the papers' grid, or the fair protocol; writes report.md and per-run JSONs."""
    try:
        if protocol not in ("grid", "fair"):
            raise MedHashError("--protocol", f"must be grid or fair, not {protocol!r}")
        command = command_line(ctx)
        if protocol == "fair":
            spec = _fair_spec(methods, bits, noise, seeds, steps, lr_grid, backbone_lr_grid, select_steps, backbone,
                              weights, batch_size, split_sizes, device, workers, trainable_top_blocks)
            job = _fair_job(library, spec, out, relevance, phase, max_runs, command, report_only)
        else:
            job = _grid_job(library, out, methods, bits, noise, seeds, epochs, backbone, weights, batch_size, lr,
                            split_sizes, device, workers, eval_from_cache, command, report_only)
        outcome = _run_grid(job, progress, as_json)
    except MedHashError as exc:
        if progress == "jsonl":
            emit_jsonl({"event": "error", "item": exc.item, "reason": exc.reason})
        fail(exc, as_json)
    if as_json:
        emit_json(outcome.to_dict())
    elif progress != "jsonl":
        pending = f", {len(outcome.pending)} pending" if getattr(outcome, "pending", None) else ""
        console.print(f"ran {len(outcome.ran)}, skipped {len(outcome.skipped)} finished run(s){pending}; "
                      f"report: {outcome.report}")
    if outcome.cancelled:
        raise typer.Exit(130)


def _grid_job(library, out, methods, bits, noise, seeds, epochs, backbone, weights, batch_size, lr, split_sizes,
              device, workers, eval_from_cache, command, report_only):
    from medhash_app.core.experiment import run_experiment
    from medhash_app.core.library import Library
    from trainer.experiment import GridSpec, parse_list, parse_methods

    spec = GridSpec(parse_methods(methods), bits=parse_list(bits or "16,32,64,128", int, "--bits"),
                    noise_rates=parse_list(noise, float, "--noise"), seeds=parse_list(seeds or "0", int, "--seeds"),
                    epochs=epochs, backbone=backbone, weights_path=str(weights) if weights else None,
                    batch_size=batch_size, lr=lr, device=device, num_workers=workers,
                    split_sizes=parse_sizes(split_sizes), eval_from_cache=eval_from_cache)

    def job(on_event):
        with Library.open(library, read_only=True) as lib, cancellable() as cancel:
            return run_experiment(lib, spec, out, progress=on_event, cancel=cancel, command=command,
                                  train=not report_only)
    return job


def _fair_spec(methods, bits, noise, seeds, steps, lr_grid, backbone_lr_grid, select_steps, backbone, weights,
               batch_size, split_sizes, device, workers, trainable_top_blocks=None):
    from trainer.experiment import parse_list, parse_methods
    from trainer.fair_protocol import FairSpec

    chosen_bits = parse_list(bits or "64", int, "--bits")
    return FairSpec(parse_methods(methods), bits=chosen_bits, noise_rates=parse_list(noise, float, "--noise"),
                    seeds=parse_list(seeds or "0,1,2", int, "--seeds"), steps=steps,
                    batch_size=batch_size or 32, lr_grid=parse_list(lr_grid, float, "--lr-grid"),
                    backbone_lr_grid=parse_list(backbone_lr_grid, float, "--backbone-lr-grid"),
                    select_bits=64 if 64 in chosen_bits else max(chosen_bits), select_steps=select_steps,
                    backbone=backbone, weights_path=str(weights) if weights else None,
                    trainable_top_blocks=trainable_top_blocks, device=device, num_workers=workers,
                    split_sizes=parse_sizes(split_sizes))


def _fair_job(library, spec, out, relevance, phase, max_runs, command, report_only):
    from medhash_app.core.experiment import run_fair_experiment
    from medhash_app.core.library import Library

    fields = [f.strip() for f in relevance.split(",") if f.strip()] if relevance else None
    phases = tuple(p.strip() for p in phase.split(",") if p.strip())

    def job(on_event):
        with Library.open(library, read_only=True) as lib, cancellable() as cancel:
            return run_fair_experiment(lib, spec, out, relevance=fields, phases=phases, max_runs=max_runs,
                                       progress=on_event, cancel=cancel, command=command, train=not report_only)
    return job


# Options that only one protocol reads: the recipe of the other protocol leaves them out.
PROTOCOL_ONLY = {"grid": {"epochs", "lr", "eval_from_cache"},
                 "fair": {"steps", "lr_grid", "backbone_lr_grid", "select_steps", "trainable_top_blocks", "phase",
                          "max_runs", "relevance"}}


def command_line(ctx: typer.Context) -> str:
    """The command as parsed, every option spelled out (defaults included) except those the chosen
    protocol ignores: the report's recipe."""
    words = ["medhash", ctx.info_name or "experiment"]
    protocol = ctx.params.get("protocol")
    ignored = {name for other, names in PROTOCOL_ONLY.items() if other != protocol for name in names}
    for param in ctx.command.params:
        if param.name in ignored:
            continue
        value = ctx.params.get(param.name)
        if getattr(param, "is_flag", False):
            words += [param.opts[0]] if value else []
        elif value is not None:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


def _run_grid(job, progress: str, as_json: bool):
    if progress == "jsonl":
        return job(emit_jsonl)
    with progress_bar("Experiment", progress == "bar" and not as_json) as update:
        state = {"done": 0, "total": None, "run": ""}

        def on_event(event: dict) -> None:
            if event.get("event") == "run":
                state.update(done=event.get("index", state["done"]), total=event.get("total"), run=event["name"])
                update(state["done"], state["total"], f"{state['run']} {event['status']}")
            elif event.get("event") == "epoch":
                update(state["done"], state["total"], f"{state['run']} epoch {event.get('epoch')}/{event.get('epochs')}")
        return job(on_event)


def register(app: typer.Typer) -> None:
    """Add `audit` and `experiment` to the main `medhash` app."""
    app.command("audit")(audit_cmd)
    app.command("experiment")(experiment_cmd)
