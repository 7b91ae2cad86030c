"""Run the papers' experiment grid on a library's own cases, without touching its models.

The same cases the trainer tab trains on (`training.library_samples`) go to trainer.experiment's
grid runner; every grid model stays in the output folder (never registered, never made active,
never written into the library's codes). `register_run` promotes one run's checkpoint when wanted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medhash_app.core.errors import DataError, ModelError
from medhash_app.core.library import Library
from medhash_app.core.training import library_samples
from trainer.experiment import GridOutcome, GridSpec, run_grid

MIN_PAIRS = 20  # as train_on_library


def run_experiment(library: Library, spec: GridSpec, out: str | Path, *,
                   progress: Callable[[dict[str, Any]], None] | None = None,
                   cancel: threading.Event | None = None, command: str = "", train: bool = True) -> GridOutcome:
    """Train/evaluate every run of `spec` on the library's cases; report.md in `out` (`train=False`:
    only the report, from the runs already finished)."""
    samples = library_samples(library)
    if len(samples) < MIN_PAIRS:
        raise DataError(str(library.folder), f"only {len(samples)} cases have an image, a report and labels; "
                        f"an experiment needs at least {MIN_PAIRS}")
    return run_grid(samples, spec, out, progress=progress, cancel=cancel, command=command,
                    data_name=f"library {Path(library.folder).name}", train=train)


def register_run(session: Any, out: str | Path, run_name: str, *, activate: bool = False) -> int:
    """Register one finished grid run's best checkpoint in the session's library and encode the
    library with it (then `evaluate_model` / search use it like a model trained in the app)."""
    checkpoint = Path(out) / "runs" / run_name / "best"
    if not (checkpoint / "splits.json").is_file():
        raise ModelError(checkpoint, "not a finished experiment run (no best/ checkpoint with its splits)")
    model_id = session.register_checkpoint(checkpoint, activate=activate, name=f"experiment {run_name}")
    session.encode_library(model_id)
    return model_id
