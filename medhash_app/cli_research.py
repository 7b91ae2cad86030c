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
                   bits: Annotated[str, typer.Option(help="Code lengths.")] = "16,32,64,128",
                   noise: Annotated[str, typer.Option(help="Injected noise rates.")] = "0,0.2,0.5",
                   seeds: Annotated[str, typer.Option(help="Seeds (splits and initialisation).")] = "0",
                   epochs: Annotated[int, typer.Option(min=1)] = 10,
                   backbone: Annotated[str, typer.Option(help="embedded, tiny or open_clip:<arch>.")] = "embedded",
                   weights: Annotated[Path | None, typer.Option(help="Local weights for open_clip:<arch>.")] = None,
                   batch_size: Annotated[int | None, typer.Option(min=2, help="Default: the method's.")] = None,
                   lr: Annotated[float | None, typer.Option(help="Default: the method's.")] = None,
                   split_sizes: Annotated[str | None, typer.Option(help="e.g. 'query=350,train=2275'.")] = None,
                   device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
                   workers: Annotated[int, typer.Option(min=0, help="Data-loading processes.")] = 2,
                   progress: Annotated[str, typer.Option(help="bar, jsonl or none.")] = "bar",
                   eval_from_cache: Annotated[bool, typer.Option(
                       "--eval-from-cache", help="Evaluate and audit from the float16 frozen-stem cache: several "
                       "times faster on CPU, codes within ~2e-3 of the full forward.")] = False,
                   report_only: Annotated[bool, typer.Option(
                       "--report-only", help="Train nothing: write the report from the runs already finished "
                       "(with the same settings) in --out.")] = False,
                   as_json: JsonOpt = False) -> None:
    """Run a method x code length x injected noise x seed grid; write report.md, PR plots, run JSONs."""
    from medhash_app.core.experiment import run_experiment
    from medhash_app.core.library import Library
    from trainer.experiment import GridSpec, parse_list, parse_methods

    try:
        spec = GridSpec(parse_methods(methods), bits=parse_list(bits, int, "--bits"),
                        noise_rates=parse_list(noise, float, "--noise"), seeds=parse_list(seeds, int, "--seeds"),
                        epochs=epochs, backbone=backbone, weights_path=str(weights) if weights else None,
                        batch_size=batch_size, lr=lr, device=device, num_workers=workers,
                        split_sizes=parse_sizes(split_sizes), eval_from_cache=eval_from_cache)
        command = command_line(ctx)
        with Library.open(library, read_only=True) as lib, cancellable() as cancel:
            outcome = _run_grid(lambda on_event: run_experiment(lib, spec, out, progress=on_event, cancel=cancel,
                                                                command=command, train=not report_only),
                                progress, as_json)
    except MedHashError as exc:
        if progress == "jsonl":
            emit_jsonl({"event": "error", "item": exc.item, "reason": exc.reason})
        fail(exc, as_json)
    if as_json:
        emit_json(outcome.to_dict())
    elif progress != "jsonl":
        console.print(f"ran {len(outcome.ran)}, skipped {len(outcome.skipped)} finished run(s); "
                      f"report: {outcome.report}")
    if outcome.cancelled:
        raise typer.Exit(130)


def command_line(ctx: typer.Context) -> str:
    """The command as parsed, every option spelled out (defaults included): the report's recipe."""
    words = ["medhash", ctx.info_name or "experiment"]
    for param in ctx.command.params:
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
                state.update(done=event["index"], total=event["total"], run=event["name"])
                update(state["done"], state["total"], f"{state['run']} {event['status']}")
            elif event.get("event") == "epoch":
                update(state["done"], state["total"], f"{state['run']} epoch {event.get('epoch')}/{event.get('epochs')}")
        return job(on_event)


def register(app: typer.Typer) -> None:
    """Add `audit` and `experiment` to the main `medhash` app."""
    app.command("audit")(audit_cmd)
    app.command("experiment")(experiment_cmd)
