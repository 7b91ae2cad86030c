"""Terminal plumbing for `medhash …`: JSON output, rich progress bars, Ctrl-C and error handling.

Kept apart from cli.py so each command body reads as: parse -> call a core service -> print.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from medhash_app.core.errors import MedHashError

# Options every command spells the same way (cli.py, cli_research.py, cli_captions.py).
LibraryOpt = Annotated[Path, typer.Option("--library", "-l", help="Library folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


console = Console(stderr=True)


def emit_json(payload: Any) -> None:
    """Print one JSON document on stdout (the stable machine interface, see docs/cli.md)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def emit_jsonl(event: dict[str, Any]) -> None:
    """Print one progress event as a JSON line (read by the trainer tab's QProcess)."""
    sys.stdout.write(json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


def fail(exc: MedHashError, as_json: bool) -> None:
    """Report a user-caused error without a traceback and exit with status 2."""
    if as_json:
        emit_json({"error": type(exc).__name__, "item": exc.item, "reason": exc.reason})
    else:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)  # one line
    raise typer.Exit(2)


@contextmanager
def cancellable() -> Iterator[threading.Event]:
    """Turn the first Ctrl-C into a cancel request the running job honours between batches.

    The job stops at a consistent point (a committed batch, a saved epoch); a second Ctrl-C
    falls back to Python's default and interrupts at once.
    """
    cancel = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def _handler(signum: int, frame: Any) -> None:
        if cancel.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        cancel.set()
        console.print("[yellow]Stopping after the current batch… (Ctrl-C again to abort)[/]")

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.signal(signal.SIGINT, _handler)
    try:
        yield cancel
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int | None, str], None]]:
    """Yield `update(done, total, note)`; draws a rich bar on stderr unless disabled (JSON mode)."""
    if not enabled:
        yield lambda done, total, note="": None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=None, note="")

        def update(done: int, total: int | None, note: str = "") -> None:
            bar.update(task, completed=done, total=total, note=note)

        try:
            yield update
        except BaseException:  # a failed job leaves its one error line, not a stale bar
            bar.live.transient = True
            bar.live.stop()
            bar.disable = True  # Progress.stop would print an empty line on a non-terminal
            raise


class Stopwatch:
    """Milliseconds since construction; for the timings each command reports."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000.0


def parse_sizes(text: str | None) -> dict[str, int] | None:
    """`--split-sizes query=350,train=2275` -> {"query": 350, "train": 2275} (None when not given)."""
    if not text:
        return None
    try:
        return {name.strip(): int(value) for name, _, value in (p.partition("=") for p in text.split(","))}
    except ValueError:
        raise MedHashError("--split-sizes", f"expected name=count pairs like query=350,train=2275, "
                           f"got {text!r}") from None
