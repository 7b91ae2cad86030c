"""Live progress for the CLI's long jobs: one rich row per phase (bar, done/total, ETA, a note).

`medhash train` and `medhash demo` go through several phases (generate, ingest, fill the feature
cache, train the epochs, encode the library, evaluate); each gets its own row as it starts, so the
terminal always shows what is running, how far it is and how long it has left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Column

from medhash_app.cli_support import console

# Row titles, in the order the phases run.
GENERATE, INGEST, FEATURES, TRAIN, ENCODE, EVALUATE, QUERIES = (
    "Generate demo data", "Ingest", "Prepare features", "Train", "Encode library", "Evaluate", "Example queries")


class PhaseBars:
    """`update(phase, done, total, note)` draws (or moves) the row of `phase`; None: no terminal output."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}
        self.seen: dict[str, tuple[int, int | None, str]] = {}  # phase -> last (done, total, note); for tests

    def update(self, phase: str, done: int, total: int | None, note: str = "") -> None:
        self.seen[phase] = (done, total, note)
        if self.progress is None:
            return
        task = self.tasks.get(phase)
        if task is None:
            for other in self.tasks.values():  # a phase starts when the one before it is over
                self.progress.stop_task(other)
            task = self.tasks[phase] = self.progress.add_task(phase, total=total, note=note)
        self.progress.update(task, completed=done, total=total, note=note)

    def remove(self, phase: str) -> None:
        """Take `phase`'s row away (it comes back, last, at its next update)."""
        self.seen.pop(phase, None)
        task = self.tasks.pop(phase, None)
        if task is not None and self.progress is not None:
            self.progress.remove_task(task)

    def finish(self, phase: str, note: str | None = None) -> None:
        """Mark `phase` complete (its total becomes what was done when none was known)."""
        done, total, old = self.seen.get(phase, (0, None, ""))
        total = total if total is not None else max(done, 1)
        self.update(phase, total, total, old if note is None else note)


@contextmanager
def phase_bars(enabled: bool = True, get_time: Callable[[], float] | None = None) -> Iterator[PhaseBars]:
    """Rich rows on stderr while the block runs; silent when disabled (JSON mode, --progress none)."""
    if not enabled:
        yield PhaseBars(None)
        return
    columns = (TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, min_width=18)),
               BarColumn(bar_width=24), MofNCompleteColumn(table_column=Column(no_wrap=True)),
               TimeRemainingColumn(), TextColumn("{task.fields[note]}", table_column=Column(no_wrap=True,
                                                                                          overflow="ellipsis")))
    # ETA from the last 5 minutes of progress: an encode batch can take over rich's default 30 s window
    with Progress(*columns, console=console, transient=False, speed_estimate_period=300, get_time=get_time) as bar:
        try:
            yield PhaseBars(bar)
        except BaseException:  # a failed job leaves its one error line, not stale bars
            bar.live.transient = True
            bar.live.stop()
            bar.disable = True
            raise


def _count(value: Any) -> int:
    """A count, or the sum of a per-modality count ({"image": 108, "text": 97})."""
    if isinstance(value, dict):
        return sum(int(v) for v in value.values() if isinstance(v, (int, float)))
    return int(value) if isinstance(value, (int, float)) else 0


def job_events(bars: PhaseBars, epochs: int) -> Callable[[dict[str, Any]], None]:
    """The progress callback for a training job (trainer/engine.py's events plus core/training.py's
    encode/evaluate events and core/demo's generate/ingest/queries events) drawing `bars`."""
    state: dict[str, Any] = {"epochs": epochs}

    def on_event(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in ("generate", "ingest", "queries"):
            phase = {"generate": GENERATE, "ingest": INGEST, "queries": QUERIES}[kind]
            bars.update(phase, int(event.get("done") or 0), event.get("total"), event.get("note") or "")
        elif kind in ("cache_fill", "cache"):
            if FEATURES not in bars.seen and TRAIN in bars.seen:
                bars.remove(TRAIN)  # the engine announces training, then fills the cache: rows in running order
            if kind == "cache_fill":
                bars.update(FEATURES, int(event.get("done") or 0), event.get("total"), "frozen layers, once")
                return
            computed, hits = _count(event.get("computed")), _count(event.get("hits"))
            if FEATURES not in bars.seen:  # everything was cached already: no fill events came
                bars.update(FEATURES, computed + hits, computed + hits)
            bars.finish(FEATURES, f"{computed} computed, {hits} reused in {float(event.get('seconds') or 0):.0f} s")
            if TRAIN not in bars.seen and "start" in state:
                bars.update(TRAIN, *state["start"])
        elif kind == "start":
            state["epochs"] = int(event.get("epochs") or state["epochs"])
            steps = int(event.get("steps") or 0)
            epoch = int(event.get("epoch") or 1)
            state["start"] = ((epoch - 1) * steps, state["epochs"] * steps or None,
                              f"epoch {epoch} of {state['epochs']}" + (" (resumed)" if event.get("resumed") else ""))
            bars.update(TRAIN, *state["start"])
        elif kind in ("step", "epoch") and event.get("steps"):
            steps, epoch = int(event["steps"]), int(event.get("epoch") or 1)
            note = f"epoch {epoch} of {state['epochs']}"
            total_loss = (event.get("losses") or {}).get("total")
            if isinstance(total_loss, (int, float)):
                note += f" · loss {total_loss:.4f}"
            if isinstance(event.get("val_map"), dict):
                note += f" · val mAP {event['val_map'].get('mean', 0):.3f}"
            bars.update(TRAIN, (epoch - 1) * steps + int(event.get("step") or 0), state["epochs"] * steps, note)
        elif kind == "encode":
            note = f"model {event.get('model_id')}"
            if "done" in event:
                bars.update(ENCODE, int(event["done"]), event.get("total"), note)
            else:
                if TRAIN in bars.seen:
                    bars.finish(TRAIN)
                bars.update(ENCODE, 0, None, note)
        elif kind == "evaluate":
            if ENCODE in bars.seen:
                bars.finish(ENCODE)
            bars.update(EVALUATE, 0, None, "held-out queries")
        elif kind == "done" and "metrics" in event:
            bars.finish(EVALUATE, "done")

    return on_event
