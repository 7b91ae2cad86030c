"""A cold `medhash search --image F` with no server (today's in-process path) beside the same command
answered by a warm `medhash serve`, in one run, alternating.

Each run is a fresh `medhash search --library L --image F --json` process timed from the outside (wall:
interpreter start, CLI imports, search, print). "no server" sets MEDHASH_NO_SERVE=1; "warm server"
points MEDHASH_SERVE_DIR at a private folder where a server started with `--library L` has loaded the
model and codes (its start and warm-up are timed apart). The hits of both paths are compared.

    python benchmarks/bench_serve.py --library DIR [--runs 3]     # ~2 min on 2 busy cores (small library)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit import RESULTS, LoadMonitor, MarkdownReport, Stats, command_line, require_shared

EXE = Path(sys.executable).with_name("medhash")
QUERY = ("dicom", "xray_chest", "DX_chest_MONO2_NIH_ChestXray14_implicitLE.dcm")


def search(library: Path, query: Path, env: dict[str, str]) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([str(EXE), "search", "--library", str(library), "--image", str(query), "--json"],
                          capture_output=True, text=True, env=env, cwd="/", check=True)
    return time.perf_counter() - start, json.loads(done.stdout)


def hits(payload: dict) -> list[tuple]:
    return [(h["case_id"], h["distance"]) for h in payload["hits"]] + [payload["out_of_domain"]]


def client_imports(library: Path, query: Path, env: dict[str, str]) -> tuple[float, list[str], list[str]]:
    """(sum of import self-times in s, heavy modules imported, the 3 slowest) of one served search."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "medhash_app.cli", "search", "--library",
                           str(library), "--image", str(query), "--json"], capture_output=True, text=True, env=env,
                          cwd="/", check=True)
    rows = [line.split("|") for line in done.stderr.splitlines() if line.startswith("import time:")][1:]
    times = [(int(r[0].split(":")[1]), r[2].strip()) for r in rows]
    heavy = sorted({name for _, name in times if name.split(".")[0] in ("torch", "numpy", "faiss", "pydicom")})
    return sum(t for t, _ in times) / 1e6, heavy, [f"{n} {t / 1e3:.0f} ms" for t, n in sorted(times)[-3:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--library", type=Path, required=True)
    parser.add_argument("--query", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.md")
    args = parser.parse_args()
    query = args.query or require_shared(*QUERY)
    folder = Path(tempfile.mkdtemp(prefix="mhsb-"))
    base = {k: v for k, v in os.environ.items() if k not in ("MEDHASH_NO_SERVE", "MEDHASH_SERVE_DIR")}
    local_env, served_env = {**base, "MEDHASH_NO_SERVE": "1"}, {**base, "MEDHASH_SERVE_DIR": str(folder)}
    times: dict[str, list[float]] = {"no server": [], "warm server": []}
    results: dict[str, list] = {"no server": [], "warm server": []}
    with LoadMonitor() as load:
        start = time.perf_counter()
        pid = json.loads(subprocess.run([str(EXE), "serve", "--library", str(args.library), "--json"],
                                        env=served_env, check=True, capture_output=True, text=True).stdout)["pid"]
        started = time.perf_counter() - start
        warm_first, _ = search(args.library, query, served_env)  # waits for the warm-up, then answers
        for _ in range(args.runs):
            for name, env in (("no server", local_env), ("warm server", served_env)):
                seconds, payload = search(args.library, query, env)
                times[name].append(seconds)
                results[name].append(hits(payload))
        imports = client_imports(args.library, query, served_env)
        stopped = json.loads(subprocess.run([str(EXE), "serve", "--stop", "--json"], env=served_env, check=True,
                                            capture_output=True, text=True).stdout)["pid"]
    shutil.rmtree(folder, ignore_errors=True)
    same = all(r == results["no server"][0] for rs in results.values() for r in rs)
    report = MarkdownReport("Cold `medhash search --image`: no server vs a warm `medhash serve`", command_line())
    report.paragraph(f"Library `{args.library}`; query `{query.name}`; runs alternate between the two paths. "
                     f"Hits (case, distance) and the out-of-domain verdict identical on every run: "
                     f"**{'yes' if same else 'NO'}**. One server process answered throughout (pid at start = pid stopped "
                     f"at the end): **{'yes' if pid == stopped else 'NO'}**. `medhash serve --library L` returned in {started:.2f} s, when "
                     f"the server first answered (it listens at once and answers once it has loaded the "
                     f"library's model and codes); the first search through it then took {warm_first:.2f} s.")
    report.table(["path", "runs", "wall median s", "wall min s", "wall max s"],
                 [[name, len(v), Stats.of(v).median, Stats.of(v).low, Stats.of(v).high] for name, v in times.items()])
    report.paragraph(f"A served search's own imports (`python -X importtime`, one run): {imports[0]:.2f} s in "
                     f"all; torch, numpy, faiss or pydicom imported: {', '.join(imports[1]) or 'none'}; slowest "
                     f"(self time): {', '.join(imports[2])}.")
    report.emit(args.out, load)


if __name__ == "__main__":
    main()
