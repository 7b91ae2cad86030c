"""`medhash captions`: store a captions file's image captions in a library's cases, added to the main
app by `register(app)` (medhash_app/cli.py). Same conventions as the other commands: `--library`,
`--json` (one JSON document on stdout), user errors exit 2 with item + reason via `fail`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medhash_app.cli_support import JsonOpt, LibraryOpt, console, emit_json, fail
from medhash_app.core.errors import MedHashError


def captions_cmd(file: Annotated[Path, typer.Argument(help="Captions file (.jsonl or .csv: id and/or image, "
                                                            "caption), e.g. from scripts/chexagent_captions.py.")],
                 library: LibraryOpt, as_json: JsonOpt = False) -> None:
    """Store image captions (MCPH) in the matching cases; caption-reading models then re-encode those images."""
    from medhash_app.core.captions import import_captions
    from medhash_app.core.library import Library

    try:
        with Library.open(library) as lib:
            outcome = import_captions(lib, file)
    except MedHashError as exc:
        fail(exc, as_json)
    if as_json:
        emit_json(outcome.to_dict())
        return
    console.print(f"{outcome.matched} cases matched, {outcome.changed} captions changed "
                  f"({outcome.entries} entries in the file)")
    for title, count, items in (("unmatched", outcome.unmatched_count, outcome.unmatched),
                                ("ambiguous", outcome.ambiguous_count,
                                 [f"{a['key']} ({a['cases']} cases by {a['rule']})" for a in outcome.ambiguous])):
        if count:
            more = f", first {len(items)}" if count > len(items) else ""
            console.print(f"[yellow]{count} {title}{more}:[/] " + "; ".join(items))
    if outcome.invalidated_codes:
        console.print(f"image codes of model(s) {', '.join(map(str, outcome.models))} removed for the changed "
                      f"cases; run `medhash encode --library {library}` to re-encode them")


def register(app: typer.Typer) -> None:
    """Add `captions` to the main app."""
    app.command("captions")(captions_cmd)
