"""`medhash listen` (a DICOM Storage SCP: "send to MedHash") and `medhash pacs find|pull` (DICOMweb
query and retrieve), added to the main app by `register(app)` (medhash_app/cli.py). Same conventions
as the other commands: `--json` prints one JSON document on stdout, user errors exit 2 with one
line, Ctrl-C stops between two instances (exit 130) and leaves no half-written case."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from medhash_app.cli_support import (
    JsonOpt,
    LibraryOpt,
    cancellable,
    console,
    emit_json,
    emit_jsonl,
    fail,
    progress_bar,
)
from medhash_app.core.errors import MedHashError

if TYPE_CHECKING:
    from medhash_app.core.pacs.dicomweb import PullReport

pacs_app = typer.Typer(help="Query a PACS over DICOMweb and pull studies into a library (docs/pacs.md).")
UrlArg = Annotated[str, typer.Argument(help="DICOMweb root, e.g. http://pacs:8042/dicom-web (user:password@ "
                                            "for basic authentication), or a DICOM peer dicom://PACS_AET@host:port "
                                            "(C-FIND / C-GET).")]
AetOpt = Annotated[str, typer.Option("--aet", help="This workstation's AE title towards a dicom:// peer.")]


def listen_cmd(library: LibraryOpt,
               port: Annotated[int, typer.Option("--port", help="TCP port to listen on.")] = 11112,
               aet: Annotated[str, typer.Option("--aet", help="This node's AE title.")] = "MEDHASH",
               accept_aet: Annotated[list[str] | None, typer.Option(
                   "--accept-aet", help="Calling AE title allowed to send (repeatable; default: any).")] = None,
               host: Annotated[str, typer.Option("--host", help="Address to bind; 127.0.0.1 (this machine only) "
                                                 "unless the PACS sends from another machine.")] = "127.0.0.1",
               workers: Annotated[int, typer.Option("--workers", help="Decode worker processes.")] = 2,
               tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="DICOM TLS: this node's "
                                                             "certificate chain (PEM).")] = None,
               tls_key: Annotated[Path | None, typer.Option("--tls-key", help="DICOM TLS: its private key (PEM).")] = None,
               tls_ca: Annotated[Path | None, typer.Option("--tls-ca", help="DICOM TLS: accept only callers with "
                                                           "a certificate from this CA (PEM).")] = None,
               as_json: JsonOpt = False) -> None:
    """Receive studies by DICOM C-STORE (and answer C-ECHO) into a library until Ctrl-C."""
    from medhash_app.core.pacs.listener import ListenerConfig, ReceiveEvent, StorageListener

    def on_event(event: ReceiveEvent) -> None:
        got = event.received
        if as_json:
            emit_jsonl({"event": "received", "calling_aet": event.calling_aet, "status": got.status,
                        "case_id": got.case_id, "reason": got.reason})
        elif got.ok:
            console.print(f"{got.status} {got.case_id} from {escape(event.calling_aet)}", highlight=False)
        else:
            console.print(f"[red]refused[/] an instance from {escape(event.calling_aet)}: {escape(got.reason or '')}",
                          highlight=False)

    config = ListenerConfig(library=library, aet=aet, port=port, host=host, accept_aets=tuple(accept_aet or ()),
                            workers=workers, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca)
    listener = StorageListener(config, on_event)
    try:
        with cancellable() as stop:
            listener.start()
            who = ", ".join(config.accept_aets) or "any calling AE title"
            tls = " over TLS" if tls_cert else ""
            console.print(f"listening as {escape(aet)} on {listener.status.address}{tls} (accepting {escape(who)}); "
                          "Ctrl-C stops", highlight=False)
            if as_json:
                emit_jsonl({"event": "listening", **listener.status.to_dict()})
            stop.wait()
    except MedHashError as exc:
        fail(exc, as_json)
    finally:
        listener.stop()
    summary = listener.status.to_dict()
    if as_json:
        emit_jsonl({"event": "stopped", **summary})
    else:
        console.print(f"stopped: added {summary['added']}, already there {summary['duplicates']}, "
                      f"refused {summary['failed']}")


def find_cmd(url: UrlArg,
             patient: Annotated[str | None, typer.Option("--patient", help="Patient ID (* wildcards).")] = None,
             name: Annotated[str | None, typer.Option("--name", help="Patient name (* wildcards).")] = None,
             date: Annotated[str | None, typer.Option("--date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD.")] = None,
             modality: Annotated[str | None, typer.Option("--modality", help="e.g. CR, DX, OP.")] = None,
             accession: Annotated[str | None, typer.Option("--accession", help="Accession number.")] = None,
             limit: Annotated[int, typer.Option("--limit", help="At most this many studies.")] = 100,
             aet: AetOpt = "MEDHASH", as_json: JsonOpt = False) -> None:
    """Find studies on a PACS (QIDO-RS, or C-FIND); pull the ones you want with `medhash pacs pull`."""
    from medhash_app.core.pacs.remote import find_studies

    try:
        studies = find_studies(url, patient_id=patient, patient_name=name, date=date, modality=modality,
                               accession=accession, limit=limit, calling_aet=aet)
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json({"studies": [s.to_dict() for s in studies]})
        return
    from rich.table import Table

    table = Table("Study UID", "Date", "Patient", "Patient ID", "Accession", "Modalities", "Description",
                  "Images", title=f"{len(studies)} studies")
    for s in studies:
        table.add_row(s.study_uid, s.study_date, s.patient_name, s.patient_id, s.accession, s.modalities,
                      s.description, "" if s.instances is None else str(s.instances))
    console.print(table)


def pull_cmd(url: UrlArg, library: LibraryOpt,
             study: Annotated[list[str], typer.Option("--study", help="Study Instance UID (repeatable).")],
             workers: Annotated[int, typer.Option("--workers", help="Decode worker processes.")] = 1,
             aet: AetOpt = "MEDHASH", as_json: JsonOpt = False) -> None:
    """Pull studies from a PACS (WADO-RS, or C-GET) into a library; a re-run skips what already arrived."""
    from medhash_app.core.library import Library
    from medhash_app.core.pacs.remote import pull_studies

    try:
        with Library.open(library, create=True) as lib, cancellable() as cancel, \
                progress_bar("Pull", not as_json) as update:
            update(0, None, "asking the server for the instances…")
            report = pull_studies(url, study, lib, cancel=cancel, workers=workers, calling_aet=aet, progress=lambda p: update(
                p.done, p.total, f"{p.added} added, {p.duplicates} already there, {p.failed} refused"))
    except MedHashError as exc:
        fail(exc, as_json)
    _print_pull(report, as_json)
    if report.cancelled:
        raise typer.Exit(130)


def _print_pull(report: PullReport, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_dict())
        return
    console.print(f"added {report.added}, already there {report.duplicates}, refused {len(report.failed)} "
                  f"of {report.total} instance(s)" + (" (stopped by Ctrl-C)" if report.cancelled else ""))
    for label, reason in report.failed:
        console.print(f"  [red]refused[/] {label}: {escape(reason)}", highlight=False)


def search_cmd(url: UrlArg, library: LibraryOpt,
               study: Annotated[str, typer.Option("--study", help="Study Instance UID to search with.")],
               target: Annotated[str | None, typer.Option(help="reports, images or both (default: reports).")] = None,
               k: Annotated[int, typer.Option("-k", min=1, help="Number of hits.")] = 10,
               as_json: JsonOpt = False) -> None:
    """Search the library with a study's first image fetched from the PACS (WADO-RS), without
    adding it to the library."""
    import tempfile

    from medhash_app.cli_tables import hits_table
    from medhash_app.core.pacs.remote import fetch_for_query
    from medhash_app.core.search import SearchQuery
    from medhash_app.core.session import MedHashSession

    try:
        if target not in (None, "reports", "images", "both"):
            raise MedHashError("--target", "must be reports, images or both")
        with tempfile.TemporaryDirectory(prefix="medhash-pacs-query-") as folder, \
                MedHashSession(library, device="auto") as session:
            image = fetch_for_query(url, study, Path(folder))
            result = session.search(SearchQuery(image_path=image, target=target, k=k))
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json(result.to_dict())
        return
    if result.out_of_domain:
        console.print(f"[bold red]Out of domain:[/] {escape(result.out_of_domain_reason or '')}")
    console.print(hits_table(result))


def origin_cmd(case_id: Annotated[str, typer.Argument(help="Case id (from a search hit or the case browser).")],
               library: LibraryOpt, as_json: JsonOpt = False) -> None:
    """Where a case came from on the PACS: its Study, Series and SOP Instance UIDs (read from its
    received original) and the server or calling AE, to open it in the PACS viewer or fetch it again."""
    from dataclasses import asdict

    from medhash_app.core.library import Library
    from medhash_app.core.pacs.origin import network_origin, wado_url

    try:
        with Library.open(library, read_only=True) as lib:
            case = lib.get_case(case_id)
        if case is None:
            raise MedHashError(case_id, "no case with this id in the library")
        origin = network_origin(case)
        if origin is None:
            raise MedHashError(case_id, "this case was imported from a file, not received from a PACS")
    except MedHashError as exc:
        fail(exc, as_json)
    payload = {**asdict(origin), "wado_url": wado_url(origin)}
    if as_json:
        emit_json(payload)
        return
    for key, value in payload.items():
        if value:
            console.print(f"{key}: {value}", highlight=False, soft_wrap=True)
    if not origin.study_uid:
        console.print("the received original is gone, so its UIDs are unknown (the library keeps only pseudonyms)")


def register(app: typer.Typer) -> None:
    """Add `listen` and the `pacs` group to the main app."""
    app.command("listen")(listen_cmd)
    pacs_app.command("find")(find_cmd)
    pacs_app.command("pull")(pull_cmd)
    pacs_app.command("search")(search_cmd)
    pacs_app.command("origin")(origin_cmd)
    app.add_typer(pacs_app, name="pacs")

