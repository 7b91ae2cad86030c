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
from trainer.data.manifest import Sample
from trainer.experiment import GridOutcome, GridSpec, run_grid
from trainer.fair_protocol import FairOutcome, FairSpec, run_fair

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


def relevance_samples(library: Library, fields: list[str]) -> list[Sample]:
    """The library's training cases with ONE label made of the given case fields, e.g.
    ["modality", "location_category"] -> "CT / Abdomen": relevant = same values of every field.

    For collections whose reports are free text without finding labels (MedPix): the label is what
    a reader expects a similar case to share at the least (the same body region seen the same way).
    Fields are case columns or imported manifest columns (the case's `extra`); a case missing one
    is left out.
    """
    samples = []
    for case in library.iter_cases():
        if not (case.get("report") or "").strip() or not case.get("input_path"):
            continue
        extra = case.get("extra") or {}
        values = [case.get(f) if case.get(f) not in (None, "") else extra.get(f) for f in fields]
        if any(v in (None, "") for v in values):
            continue
        metadata = {k: case.get(k) for k in ("domain", "view", "laterality", "sex", "age", "modality", "body_part")}
        samples.append(Sample(id=case["id"], image_path=str(library.path_of(case["input_path"])),
                              report=case["report"], labels=[" / ".join(str(v) for v in values)],
                              patient_id=case.get("patient_key"), metadata=metadata))
    return samples


def run_fair_experiment(library: Library, spec: FairSpec, out: str | Path, *, relevance: list[str] | None = None,
                        phases: tuple[str, ...] | None = None, max_runs: int | None = None,
                        progress: Callable[[dict[str, Any]], None] | None = None,
                        cancel: threading.Event | None = None, command: str = "", train: bool = True) -> FairOutcome:
    """The fair protocol (trainer/fair_protocol.py) on the library's cases; labels from the library,
    or from `relevance` fields (relevance_samples)."""
    samples = relevance_samples(library, relevance) if relevance else library_samples(library)
    if len(samples) < MIN_PAIRS:
        raise DataError(str(library.folder), f"only {len(samples)} cases have an image, a report and labels; "
                        f"an experiment needs at least {MIN_PAIRS}")
    name = f"library {Path(library.folder).name}" + (f", relevance = same {' and '.join(relevance)}" if relevance else "")
    kw = {"phases": phases} if phases else {}
    return run_fair(samples, spec, out, progress=progress, cancel=cancel, command=command, data_name=name,
                    max_runs=max_runs, train=train, **kw)


def register_run(session: Any, out: str | Path, run_name: str, *, activate: bool = False) -> int:
    """Register one finished grid run's best checkpoint in the session's library and encode the
    library with it (then `evaluate_model` / search use it like a model trained in the app)."""
    checkpoint = Path(out) / "runs" / run_name / "best"
    if not (checkpoint / "splits.json").is_file():
        raise ModelError(checkpoint, "not a finished experiment run (no best/ checkpoint with its splits)")
    model_id = session.register_checkpoint(checkpoint, activate=activate, name=f"experiment {run_name}")
    session.encode_library(model_id, prepare_checks=False)  # a grid run's model: searched by evaluation only
    return model_id
