"""`medhash archive init|publish|search|status`: a shared case archive on PostgreSQL + pgvector
(docs/archive.md), added to the main app by `register(app)`. An archive is named by a libpq service
name or a postgresql:// URL without a password (passwords live in ~/.pgpass or a service file)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medhash_app.cli_support import JsonOpt, LibraryOpt, cancellable, console, emit_json, fail, progress_bar
from medhash_app.core.errors import MedHashError

archive_app = typer.Typer(help="Publish de-identified cases to a shared PostgreSQL archive and search it.")
ArchiveOpt = Annotated[str, typer.Option("--archive", "-a", help="libpq service name or postgresql:// URL "
                                         "(no password: use ~/.pgpass or a service file).")]


@archive_app.command("init")
def init_cmd(archive: Annotated[str, typer.Argument(help="libpq service name or postgresql:// URL.")],
             roles: Annotated[bool, typer.Option("--roles", help="Also create the medhash_reader and "
                                                 "medhash_writer group roles with their grants.")] = False,
             as_json: JsonOpt = False) -> None:
    """Create the archive's tables in a database (or bring an older archive up to date)."""
    from medhash_app.core.archive import connect, init_archive

    try:
        with connect(archive, autocommit=True) as conn:
            result = init_archive(conn, roles=roles)
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json(result)
    else:
        verb = "created" if result["created"] else "up to date"
        console.print(f"archive {verb}: schema {result['schema_version']}, pgvector {result['pgvector']}",
                      markup=False)


@archive_app.command("publish")
def publish_cmd(library: LibraryOpt, archive: ArchiveOpt,
                model: Annotated[int | None, typer.Option("--model", help="Library model id (default: "
                                                          "the active model).")] = None,
                batch: Annotated[int, typer.Option("--batch", min=1, help="Cases per transaction.")] = 1000,
                with_weights: Annotated[bool, typer.Option("--with-weights", help="Store the checkpoint's "
                                                           "weights in the archive too.")] = False,
                as_json: JsonOpt = False) -> None:
    """Publish the library's de-identified cases and its model's codes (again: adds only what is new)."""
    from medhash_app.core.archive import publish_library
    from medhash_app.core.library import Library

    try:
        with Library.open(library, read_only=True) as lib, cancellable() as cancel, \
                progress_bar("publishing", not as_json) as bar:
            report = publish_library(lib, archive, model_id=model, batch=batch, with_weights=with_weights,
                                     cancel=cancel, progress=bar)
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json(report.to_dict())
    else:
        console.print(f"{report.cases_added} new case(s) and {report.codes_added} code(s) of "
                      f"{report.cases_seen} case(s) published to {report.archive} in {report.seconds:.1f} s",
                      markup=False)
    if report.cancelled:
        raise typer.Exit(130)


@archive_app.command("search")
def search_cmd(archive: ArchiveOpt,
               library: Annotated[Path | None, typer.Option("--library", "-l", help="Library whose model encodes "
                                                            "the query (default: none, the archive's own "
                                                            "published model).")] = None,
               image: Annotated[Path | None, typer.Option(help="Query image file.")] = None,
               text: Annotated[str | None, typer.Option(help="Query report text.")] = None,
               code: Annotated[str | None, typer.Option(help="Query code (hex), e.g. from an export.")] = None,
               code_kind: Annotated[str, typer.Option("--code-kind", help="What a --code was made from: "
                                                      "image or text.")] = "image",
               target: Annotated[str | None, typer.Option(help="reports, images or both (default: the other "
                                                          "modality).")] = None,
               k: Annotated[int, typer.Option("-k", min=1, help="Number of hits.")] = 10,
               bits: Annotated[int | None, typer.Option(help="Code length (default: longest).")] = None,
               label: Annotated[list[str] | None, typer.Option(help="Keep hits with any of these labels.")] = None,
               modality: str | None = None, view: str | None = None, domain: str | None = None,
               date_from: Annotated[str | None, typer.Option(help="Shifted date (archive dates are "
                                                             "shifted per publisher).")] = None,
               date_to: str | None = None,
               keyword: Annotated[str | None, typer.Option(help="Words the report must contain.")] = None,
               approximate: Annotated[bool, typer.Option("--approximate", help="Use the HNSW index (may miss "
                                                         "hits; see `archive recall`).")] = False,
               ef_search: Annotated[int, typer.Option("--ef-search", min=1)] = 200,
               mirror: Annotated[Path | None, typer.Option("--mirror", help="Folder of this workstation's "
                                                           "mirror (`archive mirror`): answers unfiltered exact "
                                                           "searches while current.")] = None,
               model: Annotated[int | None, typer.Option("--model", help="Library model id that encodes the "
                                                         "query (default: active).")] = None,
               archive_model: Annotated[int | None, typer.Option("--archive-model", help="Without --library: "
                                                                 "the archive's model that encodes the query "
                                                                 "(default: the newest with published weights "
                                                                 "and codes).")] = None,
               device: Annotated[str, typer.Option("--device")] = "auto", as_json: JsonOpt = False) -> None:
    """Rank archive cases by Hamming distance to the query (exact: the local FAISS order)."""
    from medhash_app.core.archive import ArchiveSearch, connect, describe_target
    from medhash_app.core.archive.mirror import ArchiveMirror
    from medhash_app.core.archive.query import encode_query, targets_for
    from medhash_app.core.archive.schema import require_archive
    from medhash_app.core.archive.search import stored_recall
    from medhash_app.core.library import CaseFilter, Library

    recall = None
    try:
        filters = CaseFilter(labels=label or None, modality=modality, view=view, domain=domain,
                             date_from=date_from, date_to=date_to, keyword=keyword)
        with ExitStack() as stack:
            lib = stack.enter_context(Library.open(library, read_only=True)) if library is not None else None
            conn = stack.enter_context(connect(archive, autocommit=True))
            require_archive(conn, describe_target(archive))
            query = encode_query(conn, lib, model_id=model, image=image, text=text, code=code,
                                 code_kind=code_kind, bits=bits, device=device, archive_model_id=archive_model)
            searcher = ArchiveSearch(conn, ArchiveMirror(mirror, conn) if mirror else None)
            targets = targets_for(query.kind, target)
            hits = searcher.search(query.archive_model_id, targets, query.bits, query.code, k, filters,
                                   query_kind=query.kind, approximate=approximate, ef_search=ef_search)
            if approximate:
                recall = {m: stored_recall(conn, query.archive_model_id, m, query.bits, ef_search) for m in targets}
    except MedHashError as exc:
        fail(exc, as_json)
    mode = "hnsw" if approximate else "exact"
    if as_json:
        emit_json({"archive": describe_target(archive), "answered_by": searcher.last_answer, "mode": mode,
                   "recall": recall,
                   "model_id": query.archive_model_id, "bits": query.bits, "query_kind": query.kind,
                   "hits": [{"rank": h.rank, "case_id": h.case_id, "case_key": h.case.get("case_key"),
                             "distance": h.distance, "matched": h.matched, "labels": h.case.get("labels"),
                             "modality": h.case.get("modality"), "view": h.case.get("view"),
                             "study_date": h.case.get("study_date"), "report": h.case.get("report")}
                            for h in hits]})
        return
    console.print(f"{len(hits)} hit(s), answered by the {searcher.last_answer} ({mode}, {query.bits} bits)",
                  markup=False)
    for codes_of, measured in (recall or {}).items():
        console.print(f"HNSW {codes_of} codes: " + (
            "recall not measured; run `medhash archive index`" if measured is None else
            f"recall@{measured['k']} {measured['recall']:.3f} measured at ef_search {measured['ef_search']} "
            f"over {measured['queries']} queries and {measured['codes']} codes"), markup=False, style="yellow")
    for h in hits:
        report = (h.case.get("report") or "").replace("\n", " ")[:80]
        console.print(f"{h.rank:>3}  d={h.distance:<3} {h.matched:<5} #{h.case_id:<8} "
                      f"{escape(', '.join(h.case.get('labels') or []))}  {escape(report)}", highlight=False)


@archive_app.command("status")
def status_cmd(archive: ArchiveOpt, as_json: JsonOpt = False) -> None:
    """Cases, models and code sets (with their version counters) in the archive."""
    from medhash_app.core.archive import connect, describe_target
    from medhash_app.core.archive.model_cache import list_models
    from medhash_app.core.archive.schema import require_archive

    try:
        with connect(archive, autocommit=True) as conn:
            require_archive(conn, describe_target(archive))
            cases = conn.execute("SELECT count(*) FROM medhash.cases").fetchone()[0]
            sets = conn.execute(
                "SELECT m.id, m.name, m.method, v.modality, v.bits, v.version, "
                "(SELECT count(*) FROM medhash.codes k WHERE k.model_id = m.id AND k.modality = v.modality "
                "AND k.bits = v.bits) FROM medhash.models m JOIN medhash.code_versions v ON v.model_id = m.id "
                "ORDER BY 1, 4, 5").fetchall()
            models = list_models(conn)
    except MedHashError as exc:
        fail(exc, as_json)
    payload = {"archive": describe_target(archive), "cases": int(cases),
               "models": [{"model_id": m.id, "name": m.name, "method": m.method, "bits": m.bits,
                           "weights_published": m.has_weights} for m in models],
               "code_sets": [{"model_id": r[0], "name": r[1], "method": r[2], "modality": r[3], "bits": r[4],
                              "version": r[5], "codes": r[6]} for r in sets]}
    if as_json:
        emit_json(payload)
        return
    console.print(f"{payload['archive']}: {cases} case(s)", markup=False)
    for m in models:
        console.print(f"  model {m.id} {m.name} ({m.method}, {'/'.join(map(str, m.bits))} bits): weights "
                      + ("published: searchable without a library" if m.has_weights else
                         "not published: only a library holding it can encode queries"), markup=False)
    for s in payload["code_sets"]:
        console.print(f"  model {s['model_id']} {s['name']} ({s['method']}): {s['modality']} {s['bits']} bits, "
                      f"{s['codes']} codes, version {s['version']}", markup=False)


@archive_app.command("mirror")
def mirror_cmd(archive: ArchiveOpt,
               folder: Annotated[Path, typer.Option("--folder", help="Where this workstation keeps its mirror.")],
               model: Annotated[int | None, typer.Option("--model", help="Archive model id (default: all).")] = None,
               as_json: JsonOpt = False) -> None:
    """Bring this workstation's FAISS mirror of the archive's codes up to date (downloads only what changed)."""
    from medhash_app.core.archive import connect, describe_target
    from medhash_app.core.archive.mirror import ArchiveMirror
    from medhash_app.core.archive.schema import require_archive

    try:
        with connect(archive, autocommit=True) as conn:
            require_archive(conn, describe_target(archive))
            mirror = ArchiveMirror(folder, conn)
            sets = conn.execute("SELECT model_id, modality, bits FROM medhash.code_versions WHERE %s::bigint IS NULL "
                                "OR model_id = %s ORDER BY 1, 2, 3", [model, model]).fetchall()
            done = [{"model_id": m, "modality": mo, "bits": b, "codes": mirror.refresh(m, mo, b)} for m, mo, b in sets]
    except MedHashError as exc:
        fail(exc, as_json)
    except OSError as exc:
        fail(MedHashError(str(folder), f"cannot write the mirror ({exc.strerror or exc})"), as_json)
    if as_json:
        emit_json({"archive": describe_target(archive), "mirrored": done})
        return
    for d in done:
        console.print(f"model {d['model_id']} {d['modality']} {d['bits']} bits: {d['codes']} codes mirrored",
                      markup=False)


@archive_app.command("index")
def index_cmd(archive: ArchiveOpt,
              model: Annotated[int, typer.Option("--model", help="Archive model id.")],
              bits: Annotated[int, typer.Option("--bits", help="Code length.")],
              modality: Annotated[str, typer.Option("--modality", help="image or text codes.")] = "image",
              k: Annotated[int, typer.Option("-k", min=1, help="Recall is measured at this k.")] = 10,
              queries: Annotated[int, typer.Option("--queries", min=1, help="Queries for the recall.")] = 100,
              as_json: JsonOpt = False) -> None:
    """Build the HNSW index of one code set and measure its recall@k per ef_search (stored, shown by searches)."""
    from medhash_app.core.archive import connect, describe_target
    from medhash_app.core.archive.schema import create_hnsw_index, require_archive
    from medhash_app.core.archive.search import record_recall

    try:
        with connect(archive, autocommit=True) as conn:
            require_archive(conn, describe_target(archive))
            name = create_hnsw_index(conn, model, modality, bits)
            measured = record_recall(conn, model, modality, bits, k=k, queries=queries)
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json({"index": name, "recall": measured})
        return
    for m in measured:
        console.print(f"ef_search {m['ef_search']:>4}: recall@{m['k']} {m['recall']:.3f} ({m['queries']} queries, "
                      f"{m['codes']} codes)", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(archive_app, name="archive")
