"""Readable terminal tables for `medhash train`, `eval` and `search` (the --json shapes are untouched).

A radiologist reading the terminal needs to tell hits apart (case id and file, not only the
report, which is often word for word the same) and to read metrics as a table, not a Python dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from medhash_app.cli_support import console

DIRECTION_NAMES = {"i2t": "image → report", "t2i": "report → image", "i2i": "image → image",
                   "t2t": "report → report"}
METRIC_COLUMNS = (("map_all", "mAP@all"), ("random_map_all", "random"), ("map@100", "mAP@100"), ("p@10", "P@10"))


def _num(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def metrics_table(metrics: dict[str, dict[str, Any]]) -> Table:
    """One row per direction and code length ("i2t@64" -> image → report, 64 bits); the other
    cut-offs (mAP@10/50, P@50/100) are in --json."""
    order = list(DIRECTION_NAMES)

    def key(name: str) -> tuple[int, int]:
        direction, _, bits = name.partition("@")
        return (order.index(direction) if direction in order else len(order), int(bits) if bits.isdigit() else 0)

    entries = {name: value if isinstance(value, dict) else {"map_all": value} for name, value in metrics.items()}
    sizes = {(e.get("queries"), e.get("database")) for e in entries.values() if "queries" in e}
    caption = (f"{_num(next(iter(sizes))[0], 'd')} held-out queries against {_num(next(iter(sizes))[1], 'd')} "
               "cases; relevant = shares a label; random = random codes" if len(sizes) == 1 else None)
    table = Table(title="Retrieval on the held-out queries", title_justify="left", caption=caption,
                  caption_justify="left")
    table.add_column("direction", no_wrap=True)
    table.add_column("bits", justify="right")
    for _, title in METRIC_COLUMNS:
        table.add_column(title, justify="right")
    if len(sizes) > 1:
        table.add_column("queries", justify="right")
        table.add_column("database", justify="right")
    for name in sorted(entries, key=key):
        entry = entries[name]
        direction, _, bits = name.partition("@")
        sizes_cells = [_num(entry.get("queries"), "d"), _num(entry.get("database"), "d")] if len(sizes) > 1 else []
        table.add_row(DIRECTION_NAMES.get(direction, direction), bits,
                      *(_num(entry.get(field)) for field, _ in METRIC_COLUMNS), *sizes_cells)
    return table


def domain_table(by_domain: dict[str, dict[str, Any]]) -> Table:
    """Each domain on its own: mAP@all within it (random codes' level in brackets) and how many
    distinct codes its cases get (few codes for many cases: the model cannot tell them apart)."""
    table = Table(title="Within each domain (mAP@all at the longest code; random codes in brackets)",
                  title_justify="left")
    for title in ("domain", "cases", "image → report", "report → image", "distinct image codes",
                  "distinct report codes"):
        table.add_column(title, justify="left" if title == "domain" else "right")
    for domain, entry in by_domain.items():
        def level(direction: str, entry: dict[str, Any] = entry) -> str:
            if f"{direction}_map_all" not in entry:
                return "–"
            return f"{_num(entry[f'{direction}_map_all'])} ({_num(entry.get(f'{direction}_random_map_all'))})"

        table.add_row(escape(domain), _num(entry.get("cases"), "d"), level("i2t"), level("t2i"),
                      f"{_num(entry.get('distinct_image_codes'), 'd')} of {_num(entry.get('cases'), 'd')}",
                      f"{_num(entry.get('distinct_text_codes'), 'd')} of {_num(entry.get('distinct_reports'), 'd')} "
                      "reports")
    return table


def print_model_report(payload: dict[str, Any]) -> None:
    """What `medhash train` and `medhash eval` print: the model, its splits, metric and domain tables,
    then the warnings."""
    head = f"model {payload.get('model_id')}"
    if payload.get("checkpoint"):
        head += f" saved to {payload['checkpoint']}"
    console.print(escape(head), highlight=False, soft_wrap=True)
    splits = payload.get("splits")
    if isinstance(splits, dict) and splits:
        console.print("splits: " + ", ".join(f"{name} {count}" for name, count in splits.items()), highlight=False)
    if payload.get("metrics"):
        console.print(metrics_table(payload["metrics"]))
    if payload.get("by_domain"):
        console.print(domain_table(payload["by_domain"]))
    for warning in payload.get("warnings") or []:
        console.print(f"[yellow]warning[/]: {escape(warning)}")


def hits_table(result: Any, width: int | None = None) -> Table:
    """The ranked hits of a search: rank, distance, similarity, what matched, the case id and file
    (identical reports are common; these tell the cases apart), labels and one line of the report."""
    width = width or console.width
    table = Table(title=f"{result.query_kind} query · {result.bits} bits · {result.total_ms:.0f} ms "
                        f"on {result.device}", title_justify="left")
    narrow = width < 100  # the calibrated "closer than" share is dropped first when the terminal is narrow
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("dist", justify="right", no_wrap=True)
    if not narrow:
        table.add_column("closer than", justify="right", no_wrap=True)  # % of in-domain matches (ood.py)
    table.add_column("matched", no_wrap=True)
    table.add_column("case id", no_wrap=True)
    table.add_column("file", no_wrap=True, overflow="ellipsis", max_width=40)
    table.add_column("labels", max_width=24)
    table.add_column("report", overflow="ellipsis", no_wrap=True, max_width=max(12, width - 75))
    for hit in result.hits:
        case = hit.case
        report = " ".join((case.get("report") or "").split())
        closer = "–" if getattr(hit, "closer_than", None) is None else f"{hit.closer_than * 100:.0f} %"
        similarity = [] if narrow else [closer]
        table.add_row(str(hit.rank), str(hit.distance), *similarity, hit.matched, str(case.get("id") or "–")[:8],
                      escape(Path(case.get("source_path") or "").name or "–"),
                      escape(", ".join(case.get("labels") or [])), escape(report[:300]) or "(no report)")
    return table
