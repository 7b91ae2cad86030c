"""`medhash demo`: generated data -> library -> trained (or reused) model -> example queries.

Everything runs offline on the project's own generated data. A second run reuses the library and
its active model, so the demo opens in seconds after the first time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medhash_app.core.demo.generator import DEMO_QUERIES, demo_query_images, generate_demo_dataset
from medhash_app.core.demo.location import default_demo_library
from medhash_app.core.library import CaseFilter
from medhash_app.core.search import SearchQuery
from medhash_app.core.session import MedHashSession
from medhash_app.core.training import TrainRequest, train_on_library

Log = Callable[[str], None] | None
Events = Callable[[dict[str, Any]], None] | None  # core/training.py's job events plus generate/ingest/queries


def _say(log: Log, text: str) -> None:
    if log is not None:
        log(text)


def _emit(progress: Events, event: dict[str, Any]) -> None:
    if progress is not None:
        progress(event)


def _ensure_model(session: MedHashSession, backbone: str, epochs: int, cancel: threading.Event | None,
                  log: Log, progress: Events = None) -> dict[str, Any]:
    active = session.active_model()
    if active is not None and (active.get("config") or {}).get("backbone") == backbone:
        _say(log, f"Using the trained model {active['id']} ({active['method']}, {active['bits']} bits).")
        return {"model_id": active["id"], "trained": False, "metrics": active.get("metrics") or {},
                "method": active["method"], "bits": active["bits"]}
    _say(log, f"Training BASE on the {backbone} backbone for {epochs} epochs (2-core CPU: about 5 minutes)…")
    # feature_norm "batch": with LayerNorm alone the two domains' offset swamped the small
    # differences between the generated radiographs and all chest images got one code, at any lr
    # or depth we tried; standardising each feature separates them (benchmarks/results/domain_collapse.md).
    request = TrainRequest(method="base", bits=[16, 32, 64], epochs=epochs, backbone=backbone, seed=0, lr=1e-3,
                           options={"feature_norm": "batch"})
    outcome = train_on_library(session, request, progress=progress, cancel=cancel)
    for warning in outcome.warnings:
        _say(log, f"Warning: {warning}")
    return {"model_id": outcome.model_id, "trained": True, "metrics": outcome.metrics, "warnings": outcome.warnings,
            "method": request.method, "bits": request.bits}


def _example_queries(session: MedHashSession, source: Path, progress: Events = None) -> list[dict[str, Any]]:
    queries = [SearchQuery(image_path=p, k=5) for p in demo_query_images(source)]
    queries += [SearchQuery(text=t, k=5) for t in DEMO_QUERIES]
    answers = []
    for query in queries:
        result = session.search(query)
        answers.append({"query": str(query.image_path or query.text), **result.to_dict()})
        _emit(progress, {"event": "queries", "done": len(answers), "total": len(queries)})
    return answers


def run_demo(library: Path | None = None, *, backbone: str = "embedded", epochs: int = 10,
             cancel: threading.Event | None = None, log: Log = None, progress: Events = None) -> dict[str, Any]:
    """Build (or reuse) the demo library and answer the example queries; returns a JSON-able dict.

    `progress` receives one event stream for every phase: {"event": "generate" | "ingest" |
    "queries", "done", "total"} and, when a model is trained, core/training.py's job events."""
    folder = Path(library) if library is not None else default_demo_library()
    source = folder / "demo-source"
    with MedHashSession(folder, create=True) as session:
        if not (source / "pairs.jsonl").is_file():
            _say(log, f"Generating demo radiographs and fundus photographs in {source} …")
            generate_demo_dataset(source, workers=2, progress=lambda done, total: _emit(
                progress, {"event": "generate", "done": done, "total": total}))
        report = session.ingest([source / "pairs.jsonl"], cancel=cancel, progress=lambda p: _emit(
            progress, {"event": "ingest", "done": p.done, "total": p.total, "note": f"{p.files_per_s:.1f} files/s"}))
        _say(log, f"Library {folder}: {session.library.count_cases()} cases "
                  f"({report.added} new, {len(report.failed)} failed).")
        model = _ensure_model(session, backbone, epochs, cancel, log, progress)
        answers = _example_queries(session, source, progress)
        by_domain = {d: session.library.count_cases(CaseFilter(domain=d)) for d in session.library.facets()["domains"]}
    for answer in answers:
        _say(log, f"\nQuery: {answer['query'][:100]}  ({answer['timing_ms']['total']:.0f} ms)")
        for hit in answer["hits"]:
            text = (hit["report"] or Path(hit["source_path"]).name).replace("\n", " ")[:80]
            _say(log, f"  {hit['rank']}. d={hit['distance']:>2}  [{', '.join(hit['labels'] or [])}]  {text}")
    return {"library": str(folder), "cases": report.added + report.skipped, "by_domain": by_domain, "model": model,
            "queries": answers}
