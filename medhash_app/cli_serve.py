"""`medhash serve` and the search's detour through it: a running server answers `medhash search`
without this process importing torch or loading the model (core/serve; issue 14).

`served_search` imports only the standard library; when no server answers, the CLI searches in its
own process as before and then starts a server in the background for the next search.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from medhash_app.cli_support import JsonOpt, console, emit_json, fail
from medhash_app.core.errors import MedHashError
from medhash_app.core.serve.client import ask, start_server
from medhash_app.core.serve.folder import ServeFolderError, check_folder, serve_folder, supported

NO_SERVE_ENV = "MEDHASH_NO_SERVE"
IDLE_ENV = "MEDHASH_SERVE_IDLE_TIMEOUT"
NoServeOpt = Annotated[bool, typer.Option("--no-serve", help=f"Search in this process; do not use or start "
                                                             f"the search server (also {NO_SERVE_ENV}=1).")]


def serve_disabled(no_serve: bool) -> bool:
    return no_serve or not supported() or os.environ.get(NO_SERVE_ENV, "").lower() in ("1", "true", "yes")


def served_search(library: Path, fields: dict[str, Any], filters: dict[str, Any], model: int | None,
                  device: str, no_serve: bool) -> dict[str, Any] | None:
    """The `search --json` payload from a running server; None when none answered (search here).
    A problem with the query raises the same MedHashError (by name) the search would raise here."""
    if serve_disabled(no_serve):
        return None
    image = fields.get("image_path")
    request = {"op": "search", "library": os.path.abspath(library), "device": device, "model": model,
               "cwd": os.getcwd(), "query": {**fields, "image_path": None if image is None else str(image),
                                             "filters": filters}}
    try:
        answer = ask(serve_folder(), request)
    except ServeFolderError as exc:
        console.print(f"[yellow]warning[/]: not using the search server: {exc}", soft_wrap=True, highlight=False)
        return None
    if answer and answer.get("error"):
        error = answer["error"]
        raise type(str(error.get("type") or "MedHashError"), (MedHashError,), {})(error.get("item"), error["reason"])
    return answer["result"] if answer and answer.get("ok") else None


def start_on_demand(library: Path, device: str, no_serve: bool) -> None:
    """After a search in this process: start a server (detached) so the next search is fast."""
    if serve_disabled(no_serve):
        return
    idle = os.environ.get(IDLE_ENV)
    try:
        start_server(serve_folder(), [Path(os.path.abspath(library))], device, float(idle) if idle else None)
    except (ServeFolderError, OSError, ValueError):
        return  # the search is done; a server that cannot start is not the user's problem now


def result_view(payload: dict[str, Any]) -> SimpleNamespace:
    """The `search --json` payload in the shape cli_tables.hits_table reads from a SearchResult."""
    hits = [SimpleNamespace(**hit, case={"id": hit.get("case_id"), "source_path": hit.get("source_path"),
                                         "labels": hit.get("labels"), "report": hit.get("report")})
            for hit in payload["hits"]]
    return SimpleNamespace(**{**payload, "hits": hits, "total_ms": payload["timing_ms"]["total"]})


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)


def serve_cmd(library: Annotated[list[Path] | None, typer.Option(
                  "--library", "-l", help="Load this library's model and codes now (repeatable).")] = None,
              idle_timeout: Annotated[float, typer.Option(help="Exit after this many idle seconds.")] = 900.0,
              foreground: Annotated[bool, typer.Option(help="Serve in this process (Ctrl-C stops).")] = False,
              stop: Annotated[bool, typer.Option(help="Stop the running server.")] = False,
              device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
              as_json: JsonOpt = False) -> None:
    """Keep a search process running on a private Unix socket, so `medhash search` answers fast."""
    if not supported():
        fail(MedHashError("medhash serve", "needs Unix sockets with peer credentials (Linux)"), as_json)
    folder = serve_folder()
    libraries = [Path(os.path.abspath(p)) for p in library or []]
    try:
        if stop:
            answer = ask(folder, {"op": "stop"}, timeout=30)
            payload = {"stopped": bool(answer and answer.get("ok")), "pid": (answer or {}).get("pid")}
        elif foreground:
            from medhash_app.core.serve.server import run

            console.print(f"serving on {folder} (Ctrl-C stops)", soft_wrap=True, highlight=False)
            raise typer.Exit(run(folder, idle_timeout, libraries, device))
        else:
            payload = _start(folder, libraries, device, idle_timeout)
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json(payload)
    elif stop:
        console.print(f"stopped the search server (pid {payload['pid']})" if payload["stopped"]
                      else "no search server was running", highlight=False)
    else:
        console.print(f"search server running (pid {payload['pid']}) on {payload['socket']}; "
                      f"exits after {idle_timeout:g} s idle", soft_wrap=True, highlight=False)


def _start(folder: Path, libraries: list[Path], device: str, idle_timeout: float) -> dict[str, Any]:
    """Start a server unless one answers; wait until it answers (it listens before loading anything)."""
    answer = ask(folder, {"op": "ping"}, timeout=30)
    if not (answer and answer.get("ok")):
        check_folder(folder, create=True)
        process = start_server(folder, libraries, device, idle_timeout)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            answer = ask(folder, {"op": "ping"}, timeout=30)
            if answer and answer.get("ok"):
                break
            time.sleep(0.1)
    if not (answer and answer.get("ok")):
        raise MedHashError(folder, "the search server did not start; see serve.log there")
    return {"pid": answer["pid"], "socket": answer["socket"], "libraries": answer["libraries"]}
