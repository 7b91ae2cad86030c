"""`medhash …`: headless commands over the same core services the desktop app uses.

Every command takes `--json` and then prints one JSON document on stdout (shapes in docs/cli.md);
progress goes to stderr. User-caused problems exit with status 2 and a one-line reason; Ctrl-C
stops long jobs at a consistent point (exit 130).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before FAISS/torch start OpenMP (see docs/cli.md)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medhash_app.cli_support import (
    JsonOpt,
    LibraryOpt,
    Stopwatch,
    cancellable,
    console,
    emit_json,
    emit_jsonl,
    fail,
    parse_sizes,
    progress_bar,
)
from medhash_app.cli_version import version_callback
from medhash_app.core.errors import JobCancelled, MedHashError
from trainer.config import DEFAULT_METHOD

app = typer.Typer(add_completion=False, no_args_is_help=False, rich_markup_mode=None,
                  help="MedHash: similar-case search for chest radiographs and fundus photographs.")
index_app = typer.Typer(help="Inspect or rebuild the FAISS caches of a library.")
app.add_typer(index_app, name="index")

ModelOpt = Annotated[int | None, typer.Option("--model", help="Model id (default: the active model).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]


def _session(library: Path, create: bool = False, device: str = "auto"):
    from medhash_app.core.session import MedHashSession

    return MedHashSession(library, create=create, device=device)


def _bits(text: str) -> list[int]:
    try:
        return sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise MedHashError("--bits", f"expected comma-separated numbers like 16,32,64, got {text!r}") from None


@app.callback(invoke_without_command=True)
def main_callback(ctx: typer.Context,
                  library: Annotated[Path | None, typer.Option("--library", "-l")] = None,
                  open_paths: Annotated[list[Path] | None, typer.Option(
                      "--open", help="Open the window with this file as the query (the .dcm file association).")] = None,
                  version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                        help="Print the version and exit.")] = False) -> None:
    """With no command: open the desktop app."""
    if ctx.invoked_subcommand is None:
        problem = _window_problem()
        if problem:
            fail(MedHashError(None, problem), as_json=False)
        from medhash_app.ui.app import run_app

        raise typer.Exit(run_app(library, [], open_paths=open_paths or []))


@app.command("ingest")
def ingest_cmd(paths: Annotated[list[Path], typer.Argument(help="Files, folders, DICOMDIRs or manifests.")],
               library: LibraryOpt, as_json: JsonOpt = False,
               domain: Annotated[str | None, typer.Option(help="chest, fundus or other (default: detect).")] = None,
               allow_outside: Annotated[list[Path] | None, typer.Option(
                   "--allow-outside", help="Also read files under this folder when a manifest or DICOMDIR names "
                   "them (default: only files inside the imported folder; repeatable).")] = None,
               ) -> None:
    """Add images (and their reports) to a library, creating it if needed; re-runs skip what is there."""
    from medhash_app.core.ingest.rows import DOMAINS

    try:
        if domain is not None and domain not in DOMAINS:
            raise MedHashError("--domain", f"must be one of {', '.join(DOMAINS)}, not {domain!r}")
        with _session(library, create=True) as session, cancellable() as cancel, \
                progress_bar("Ingest", not as_json) as update:
            update(0, None, "finding files…")
            report = session.ingest(paths, domain=domain, cancel=cancel, allowed_roots=allow_outside or [],
                                    progress=lambda p: update(p.done, p.total, f"{p.files_per_s:.1f} files/s"))
    except MedHashError as exc:
        fail(exc, as_json)
    payload = report.to_dict()
    if as_json:
        emit_json(payload)
    else:
        console.print(f"added {report.added}, skipped {report.skipped}, failed {len(report.failed)}")
        for path, reason in report.failed:
            console.print(f"  [red]failed[/] {path}: {reason}")
        for notice in report.notices:
            console.print(f"note: {notice}", markup=False, style="yellow")
        if report.decoder_warnings:
            console.print(f"{report.decoder_warnings} decoder warning(s) written to {report.log_file}", markup=False)
    if report.cancelled:
        raise typer.Exit(130)


@app.command("train")
def train_cmd(library: LibraryOpt,
              method: Annotated[str, typer.Option(help="base, mcph, tripah or prompthash.")] = DEFAULT_METHOD,
              bits: Annotated[str, typer.Option(help="Code lengths, e.g. 16,32,64.")] = "16,32,64",
              epochs: Annotated[int, typer.Option(min=1)] = 10,
              seed: int = 0,
              out: Annotated[Path | None, typer.Option(help="Checkpoint folder (default: in the library).")] = None,
              backbone: Annotated[str, typer.Option(help="embedded, tiny or open_clip:<arch>.")] = "embedded",
              weights: Annotated[Path | None, typer.Option(help="Local weights for open_clip:<arch>.")] = None,
              batch_size: Annotated[int | None, typer.Option(min=2, help="Default: the method's.")] = None,
              lr: Annotated[float | None, typer.Option(help="Learning rate (default: the method's).")] = None,
              noise_rate: Annotated[float, typer.Option(help="Inject this fraction of shuffled pairs.")] = 0.0,
              noise_handling: Annotated[str, typer.Option(help="none or adaptive_temperature.")] = "none",
              components: Annotated[str | None, typer.Option(help="Switches, e.g. 'vpl=off,tpl=on'.")] = None,
              split_sizes: Annotated[str | None, typer.Option(
                  help="Split sizes, e.g. 'query=350,train=2275' (default: 10 % query, 10 % val).")] = None,
              feature_cache: Annotated[bool, typer.Option(
                  help="Cache the frozen layers' outputs (fast epochs, no augmentation).")] = True,
              feature_norm: Annotated[str | None, typer.Option(
                  help="BASE: 'layer' (default) or 'batch' (for libraries of several domains; "
                       "benchmarks/results/domain_collapse.md).")] = None,
              device: DeviceOpt = "auto",
              progress: Annotated[str, typer.Option(help="bar, jsonl or none.")] = "bar",
              activate: Annotated[bool, typer.Option(help="Make the new model active and encode.")] = True,
              as_json: JsonOpt = False) -> None:
    """Train a hashing model on the library's cases, evaluate it on held-out queries, register it."""
    from medhash_app.core.training import TrainRequest

    try:
        request = TrainRequest(method=method, bits=_bits(bits), epochs=epochs, seed=seed, out=out,
                               backbone=backbone, weights_path=weights, batch_size=batch_size, lr=lr,
                               noise_rate=noise_rate, noise_handling=noise_handling,
                               components=_switches(components), device=device, activate=activate,
                               split_sizes=parse_sizes(split_sizes), feature_cache=feature_cache,
                               options={"feature_norm": feature_norm} if feature_norm else {})
        with _session(library, device=device) as session, cancellable() as cancel:
            outcome = _run_training(session, request, progress, as_json, cancel)
    except JobCancelled as exc:
        if progress == "jsonl":
            emit_jsonl({"event": "cancelled", "item": exc.item, "reason": exc.reason})
        console.print(f"[yellow]{exc.reason}[/]")
        raise typer.Exit(130) from None
    except MedHashError as exc:
        if progress == "jsonl":
            emit_jsonl({"event": "error", "item": exc.item, "reason": exc.reason})
        fail(exc, as_json)
    if outcome is None:  # a torchrun worker other than rank 0: the main process reports
        return
    if as_json:
        emit_json(outcome.to_dict())
    elif progress != "jsonl":
        _print_metrics(outcome.to_dict())


def _run_training(session, request, progress: str, as_json: bool, cancel):
    from medhash_app.cli_progress import job_events, phase_bars
    from medhash_app.core.training import train_on_library

    if progress == "jsonl":
        return train_on_library(session, request, progress=emit_jsonl, cancel=cancel)
    with phase_bars(progress == "bar" and not as_json) as bars:
        return train_on_library(session, request, progress=job_events(bars, request.epochs), cancel=cancel)


def _switches(text: str | None) -> dict[str, bool]:
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if value.strip().lower() not in ("on", "off", "true", "false", "1", "0"):
            raise MedHashError("--components", f"expected name=on|off, got {part!r}")
        out[name.strip()] = value.strip().lower() in ("on", "true", "1")
    return out


def _print_metrics(payload: dict) -> None:
    from medhash_app.cli_tables import print_model_report

    print_model_report(payload)


@app.command("encode")
def encode_cmd(library: LibraryOpt, model: ModelOpt = None, device: DeviceOpt = "auto",
               as_json: JsonOpt = False) -> None:
    """Compute and store codes for every case not yet encoded by the model (resumable)."""
    watch = Stopwatch()
    try:
        with _session(library, device=device) as session, cancellable() as cancel, \
                progress_bar("Encode", not as_json) as update:
            count = session.encode_library(model, cancel=cancel, progress=lambda d, t: update(d, t, ""))
            model_row = session.resolve_model(model)
    except MedHashError as exc:
        fail(exc, as_json)
    payload = {"model_id": model_row["id"], "encoded": count, "seconds": round(watch.ms / 1000, 2)}
    emit_json(payload) if as_json else console.print(f"encoded {count} cases with model {model_row['id']}")


ARCHIVE_PREFIXES = ("postgresql://", "postgres://", "service=")  # a --library that names a shared archive


@app.command("search")
def search_cmd(library: Annotated[str, typer.Option("--library", "-l", help="Library folder, or a shared archive "
                                                    "(postgresql:// URL or service=NAME): then the search is "
                                                    "`medhash archive search` without a library.")],
               image: Annotated[Path | None, typer.Option(help="Query image file (DICOM, PNG, JPEG).")] = None,
               text: Annotated[str | None, typer.Option(help="Query report text.")] = None,
               target: Annotated[str | None, typer.Option(
                   help="reports, images or both (default: the other modality, so --text finds images "
                        "and --image finds reports).")] = None,
               k: Annotated[int, typer.Option("-k", min=1, help="Number of hits.")] = 10,
               bits: Annotated[int | None, typer.Option(help="Code length (default: longest).")] = None,
               label: Annotated[list[str] | None, typer.Option(help="Keep hits with any of these labels.")] = None,
               modality: str | None = None, view: str | None = None, domain: str | None = None,
               date_from: str | None = None, date_to: str | None = None,
               keyword: Annotated[str | None, typer.Option(help="Full-text filter on reports.")] = None,
               rerank: Annotated[bool, typer.Option(help="Re-rank by continuous embeddings.")] = False,
               model: ModelOpt = None, device: DeviceOpt = "auto", as_json: JsonOpt = False,
               no_serve: NoServeOpt = False) -> None:
    """Rank library cases by Hamming distance to the query's code."""
    if library.strip().startswith(ARCHIVE_PREFIXES):
        _search_archive(library, image, text, target, k, bits, label, modality, view, domain, date_from, date_to,
                        keyword, rerank, model, device, as_json)
        return
    folder = Path(library)
    try:
        if (image is None) == (text is None):
            raise MedHashError("query", "give exactly one of --image FILE or --text TEXT")
        if target not in (None, "reports", "images", "both"):
            raise MedHashError("--target", "must be reports, images or both")
        filters = {"labels": label or None, "modality": modality, "view": view, "domain": domain,
                   "date_from": date_from, "date_to": date_to, "keyword": keyword}
        fields = {"image_path": image, "text": text, "target": target, "k": k, "bits": bits, "rerank": rerank}
        served = served_search(folder, fields, filters, model, device, no_serve)  # a running `medhash serve`
        if served is not None:
            emit_json(served) if as_json else _print_hits(result_view(served))
            return
        from medhash_app.core.search import SearchFilters, SearchQuery

        with _session(folder, device=device) as session:
            result = session.search(SearchQuery(**fields, filters=SearchFilters(**filters)), model)
    except MedHashError as exc:
        fail(exc, as_json)
    emit_json(result.to_dict()) if as_json else _print_hits(result)
    start_on_demand(folder, device, no_serve)


def _search_archive(archive: str, image: Path | None, text: str | None, target: str | None, k: int, bits: int | None,
                    label: list[str] | None, modality: str | None, view: str | None, domain: str | None,
                    date_from: str | None, date_to: str | None, keyword: str | None, rerank: bool,
                    model: int | None, device: str, as_json: bool) -> None:
    """`medhash search --library postgresql://…`: the archive's exact search, encoded by the archive's
    own published model (`--model`: its archive id), as `medhash archive search` without --library."""
    from medhash_app.cli_archive import search_cmd as archive_search

    if rerank:
        fail(MedHashError("--rerank", "an archive stores codes only; re-ranking needs a local library"), as_json)
    archive_search(archive=archive, library=None, image=image, text=text, code=None, code_kind="image",
                   target=target, k=k, bits=bits, label=label, modality=modality, view=view, domain=domain,
                   date_from=date_from, date_to=date_to, keyword=keyword, approximate=False, ef_search=200,
                   mirror=None, model=None, archive_model=model, device=device, as_json=as_json)


def _print_hits(result) -> None:
    from medhash_app.cli_tables import hits_table

    if result.out_of_domain:
        console.print(f"[bold red]Out of domain:[/] {escape(result.out_of_domain_reason or '')}")
    console.print(hits_table(result))


@app.command("eval")
def eval_cmd(library: LibraryOpt, model: ModelOpt = None, device: DeviceOpt = "auto",
             as_json: JsonOpt = False) -> None:
    """mAP@all, mAP@k, P@k of a model on its held-out query split (the papers' protocol)."""
    from medhash_app.core.training import evaluate_model

    try:
        with _session(library, device=device) as session:
            report = evaluate_model(session, model)
    except MedHashError as exc:
        fail(exc, as_json)
    emit_json(report) if as_json else _print_metrics(report)


@app.command("export")
def export_cmd(out: Annotated[Path, typer.Argument(help="A new or empty folder for the export.")],
               library: LibraryOpt, as_json: JsonOpt = False,
               deidentify: Annotated[bool, typer.Option("--deidentify", help="Required: the only export offered "
                                                        "is de-identified (DICOM PS3.15 Basic Profile where it "
                                                        "applies; see docs/architecture.md).")] = False,
               ) -> None:
    """Write reports, labels, codes and thumbnails under per-export pseudonyms (no paths, ids or real dates)."""
    from medhash_app.core.export import export_deidentified
    from medhash_app.core.library import Library

    try:
        if not deidentify:
            raise MedHashError("--deidentify", "an export must be de-identified; pass --deidentify (names, ids, "
                               "paths and real dates never leave the library)")
        with Library.open(library, read_only=True) as lib:
            report = export_deidentified(lib, out)
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json(report.to_dict())
    else:
        console.print(f"exported {report.cases} case(s), {report.thumbnails} thumbnail(s) to {report.folder}",
                      markup=False)
        for notice in report.notices:
            console.print(f"note: {notice}", markup=False, style="yellow")


@app.command("info")
def info_cmd(file: Annotated[Path | None, typer.Argument(help="An image file to describe.")] = None,
             library: Annotated[Path | None, typer.Option("--library", "-l")] = None,
             as_json: JsonOpt = False) -> None:
    """Describe an image file (header facts, no PHI) or a library (cases, models, codes)."""
    from medhash_app.core.info import describe_file, describe_library

    try:
        if (file is None) == (library is None):
            raise MedHashError("info", "give either a FILE or --library DIR")
        payload = describe_file(file) if file is not None else describe_library(library)
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json(payload)
    else:
        for key, value in payload.items():
            console.print(f"[bold]{key}[/]: {value}")


@app.command("models")
def models_cmd(library: LibraryOpt,
               activate: Annotated[int | None, typer.Option(help="Make this model active.")] = None,
               as_json: JsonOpt = False) -> None:
    """List the library's models; optionally choose the active one."""
    try:
        with _session(library) as session:
            if activate is not None:
                session.set_active_model(activate)
            rows = session.models()
    except MedHashError as exc:
        fail(exc, as_json)
    payload = [{k: m[k] for k in ("id", "name", "method", "bits", "active", "checkpoint_path", "metrics")}
               for m in rows]
    if as_json:
        emit_json(payload)
    else:
        for m in payload:
            console.print(f"{'*' if m['active'] else ' '} {m['id']}: {m['name']} {m['method']} bits={m['bits']}")


@index_app.command("status")
def index_status_cmd(library: LibraryOpt, as_json: JsonOpt = False) -> None:
    """Code counts and FAISS cache state per model, modality and code length."""
    try:
        with _session(library) as session:
            rows = session.index_status()
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            console.print(f"{r['key']}: {r['count']} codes, cache {r['state']}")


@index_app.command("rebuild")
def index_rebuild_cmd(library: LibraryOpt, as_json: JsonOpt = False) -> None:
    """Rebuild every FAISS cache from the codes in SQLite."""
    try:
        with _session(library) as session:
            session.rebuild_indexes()
            rows = session.index_status()
    except MedHashError as exc:
        fail(exc, as_json)
    emit_json(rows) if as_json else console.print(f"rebuilt {sum(1 for r in rows if r['count'])} indexes")


@app.command("demo")
def demo_cmd(library: Annotated[Path | None, typer.Option("--library", "-l",
                                                             help="Where to build it (default: user data dir).")] = None,
             backbone: str = "embedded",
             epochs: Annotated[int, typer.Option(min=1)] = 10,
             window: Annotated[bool, typer.Option(help="Open the desktop app on the demo library.")] = True,
             as_json: JsonOpt = False) -> None:
    """Build the demo library (generated data), train or load the default model, run example queries."""
    from medhash_app.cli_progress import job_events, phase_bars
    from medhash_app.core.demo.pipeline import run_demo

    # The window is checked before the work, so a missing system library costs no work: the demo
    # finishes and says how to open the library once the library is installed.
    problem = _window_problem() if window and not as_json and _has_display() else None
    if problem:
        console.print(f"[yellow]note:[/] {escape(problem)}; building the demo library anyway", soft_wrap=True,
                      highlight=False)
    try:
        with cancellable() as cancel, phase_bars(not as_json) as bars:
            outcome = run_demo(library, backbone=backbone, epochs=epochs, cancel=cancel,
                               log=None if as_json else console.print, progress=job_events(bars, epochs))
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json(outcome)
        return
    _print_demo_summary(outcome)
    if not window:
        return
    if problem:
        console.print(f"[yellow]note:[/] {escape(problem)}; then open the library with the command above.",
                      soft_wrap=True, highlight=False)
        return
    if _has_display():
        from medhash_app.ui.app import run_app

        raise typer.Exit(run_app(Path(outcome["library"]), []))


def _print_demo_summary(outcome: dict) -> None:
    """What was built, where it is, and the command that opens it."""
    import shlex

    model = outcome.get("model") or {}
    domains = ", ".join(f"{count} {name}" for name, count in (outcome.get("by_domain") or {}).items())
    bits = "/".join(str(b) for b in model.get("bits") or [])
    how = "trained now" if model.get("trained") else "reused from an earlier run"
    console.print(f"\n[bold]Built the demo library[/] {escape(outcome['library'])}", soft_wrap=True, highlight=False)
    console.print(f"  {outcome.get('cases')} cases" + (f" ({domains})" if domains else "")
                  + f"; model {model.get('model_id')} ({str(model.get('method') or '').upper()}"
                  + (f", {bits}-bit codes" if bits else "") + f", {how}); "
                  + f"{len(outcome.get('queries') or [])} example queries answered above.", highlight=False)
    console.print(f"  Open it with: [bold]medhash --library {escape(shlex.quote(outcome['library']))}[/]",
                  soft_wrap=True, highlight=False)


from medhash_app.cli_archive import register as register_archive
from medhash_app.cli_captions import register as register_captions
from medhash_app.cli_pacs import register as register_pacs
from medhash_app.cli_research import register as register_research
from medhash_app.cli_serve import NoServeOpt, result_view, served_search, start_on_demand
from medhash_app.cli_serve import register as register_serve

register_research(app)
register_captions(app)
register_pacs(app)
register_archive(app)
register_serve(app)


def _window_problem() -> str | None:
    """Why Qt's window cannot open on this system (missing xcb libraries), checked before Qt starts:
    Qt itself would abort the process (exit 134) naming the wrong package."""
    from medhash_app.core.system_libraries import window_problem

    return window_problem()


def _has_display() -> bool:
    """A visible window can open (an X or Wayland display; headless runs just print)."""
    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal"):
        return False
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
