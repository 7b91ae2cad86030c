"""A cold `medhash search --image F` on the 100k library: an older checkout beside this one, one run.

Each run is a fresh process (`medhash search --library L --image F --json`, k = 10), timed from the
outside (wall: start-up, imports, library open, search, exit) and by its own `timing_ms`. The old code
runs from a git worktree of `--before` on PYTHONPATH, against its own copy of the library (it reads
schema 2; this checkout migrates its copy to schema 3 on the first run, and writes its codes and
reference files then: that first run is reported apart). Also per checkout, from one
`python -X importtime` run of the same search: the import time of the session's modules, of torch,
and which heavy modules (torchvision, open_clip, timm, transformers, torch._dynamo, sympy) were
loaded. The hits (case, distance) and the out-of-domain verdict of both checkouts are compared.

    python benchmarks/bench_cold_cli.py --before e1920e7 --after HEAD     # ~5 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchkit import RESULTS, LoadMonitor, MarkdownReport, Stats, command_line, require_shared

REPO = Path(__file__).resolve().parents[1]
QUERY = ("dicom", "xray_chest", "DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm")
HEAVY = ("torchvision", "open_clip", "timm", "transformers", "torch._dynamo", "sympy")
PROBE = ("import json, runpy, sys\n"
         "sys.argv = ['medhash', 'search', '--library', sys.argv[1], '--image', sys.argv[2], '--json']\n"
         "try:\n    runpy.run_module('medhash_app.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         f"print('HEAVY ' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n")


def run_search(tree: Path, library: Path, query: Path) -> tuple[float, dict]:
    """(wall seconds, the command's JSON) of one fresh `medhash search` with `tree` first on the path."""
    exe = Path(sys.executable).with_name("medhash")
    env = {**os.environ, "PYTHONPATH": str(tree), "MEDHASH_NO_SERVE": "1"}  # in-process, as before serve
    start = time.perf_counter()
    done = subprocess.run([str(exe), "search", "--library", str(library), "--image", str(query), "--json"],
                          capture_output=True, text=True, env=env, cwd="/", check=True)
    return time.perf_counter() - start, json.loads(done.stdout)


def import_profile(tree: Path, library: Path, query: Path) -> dict:
    """Import times (s) of the search's modules and the heavy modules present, from -X importtime."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", PROBE, str(library), str(query)],
                          capture_output=True, text=True, env=env, cwd="/", check=True)
    cumulative: dict[str, float] = {}
    total = 0.0
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line[len("import time:"):].split("|")
            try:
                self_us, cum_us = int(parts[0]), int(parts[1])
            except ValueError:
                continue
            total += self_us / 1e6
            cumulative.setdefault(parts[2].strip(), cum_us / 1e6)
    heavy = json.loads(next(ln for ln in done.stderr.splitlines() if ln.startswith("HEAVY "))[6:])
    return {"all imports s": total, "torch s": cumulative.get("torch", 0.0),
            "medhash_app.core.session s": cumulative.get("medhash_app.core.session", 0.0), "heavy": heavy}


def summary(result: dict) -> tuple:
    return ([(h["case_id"], h["distance"]) for h in result["hits"]], result.get("out_of_domain"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="e1920e7", help="git revision of the old code")
    parser.add_argument("--after", help="git revision of the new code (default: this checkout as it is)")
    parser.add_argument("--library", type=Path, default=Path("/tmp/medhash-bench-e2e/lib-100000-200"),
                        help="a schema-2 library built by bench_search_e2e.py")
    parser.add_argument("--runs", type=int, default=3, help="cold runs per checkout (after the first)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cold_cli.md")
    args = parser.parse_args()
    query = require_shared(*QUERY)
    work = Path("/tmp/medhash-bench-cold-cli")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    trees = {"before": work / "before", "after": work / "after" if args.after else REPO}
    for name, rev in (("before", args.before), ("after", args.after)):
        if rev:
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(trees[name]), rev], check=True,
                           capture_output=True)
    libs = {name: work / f"lib-{name}" for name in ("before", "after")}
    for lib in libs.values():
        shutil.copytree(args.library, lib)
    walls: dict[str, list[float]] = {"before": [], "after": []}
    inside: dict[str, list[float]] = {"before": [], "after": []}
    results: dict[str, dict] = {}
    try:
        with LoadMonitor() as load:
            first_wall, first = run_search(trees["after"], libs["after"], query)  # migrates, writes files
            for _ in range(args.runs):
                for name in ("before", "after"):
                    wall, result = run_search(trees[name], libs[name], query)
                    walls[name].append(wall)
                    inside[name].append(result["timing_ms"]["total"] / 1e3)
                    results[name] = result
                    print(f"{name}: {wall:.1f} s", flush=True)
            imports = {name: import_profile(trees[name], libs[name], query) for name in trees}
    finally:
        for tree in trees.values():
            if tree != REPO:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False,
                               capture_output=True)
    same = summary(results["before"]) == summary(results["after"]) == summary(first)
    report = MarkdownReport("Cold `medhash search --image` on a 100,000-case library, before and after", command_line())
    report.paragraph(f"Query `{QUERY[-1]}`; library a copy of `{args.library}` per checkout; `before` = git "
                     f"`{args.before}`, `after` = {f'git `{args.after}`' if args.after else 'this checkout'}. Runs alternate between the two. Hits (case, "
                     f"distance) and the out-of-domain verdict identical in both: **{'yes' if same else 'NO'}**.")
    rows = [["after, first run (migrates to schema 3, writes codes + reference files)", 1, first_wall, first_wall,
             first["timing_ms"]["total"] / 1e3]]
    for name in ("before", "after"):
        w, s = Stats.of(walls[name]), Stats.of(inside[name])
        rows.append([name, w.n, w.median, w.high, s.median])
    report.table(["checkout", "runs", "wall median s", "wall max s", "`timing_ms.total` median s"], rows)
    report.heading("Imports (one `python -X importtime` run of the same search per checkout)")
    report.table(["checkout", "all imports s (sum of self times)", "torch s", "medhash_app.core.session s",
                  "heavy modules loaded"],
                 [[name, v["all imports s"], v["torch s"], v["medhash_app.core.session s"],
                   ", ".join(v["heavy"]) or "none"] for name, v in imports.items()])
    report.write(args.out, load)
    print(args.out.read_text(encoding="utf-8"))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
