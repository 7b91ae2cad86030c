"""Shared plumbing of bench_ingest.py, bench_encode.py and bench_search_e2e.py.

The machine these run on is small and shared, so every result file says what the machine was and
how loaded it was while the numbers were taken (the 1-minute load average, sampled in the
background), and reports repeated timings as median and p90 rather than one lucky run.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDHASH_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"


# ------------------------------------------------------------------------------------ data
def require_shared(*parts: str) -> Path:
    """The shared real-data path, or a clean exit (status 0) saying why the benchmark is skipped."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        print(f"SKIPPED: real test data not found at {path} (set MEDHASH_SHARED_DATA to its folder)")
        raise SystemExit(0)
    return path


# ------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Stats:
    """Summary of repeated timings (any unit)."""

    n: int
    median: float
    p90: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        arr = np.asarray(values, dtype=float)
        return cls(len(arr), float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.min()),
                   float(arr.max()))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


# ------------------------------------------------------------------------------------ machine
def _run(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine_lines() -> list[str]:
    """`uname -a`, CPU model, nproc, RAM, Python/torch versions and threads."""
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = _run("lscpu | grep 'Model name'").split(":", 1)[-1].strip() or platform.processor()
    lines = [f"- `uname -a`: {_run('uname -a')}",
             f"- CPU: {cpu}; `nproc`: {_run('nproc')}; RAM: {mem_gib:.1f} GiB",
             f"- Python {platform.python_version()}"]
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        cuda = torch.cuda.is_initialized()
        used = f"yes ({torch.cuda.get_device_name()})" if cuda else "no"
        lines[-1] += (f"; torch {torch.__version__} ({torch.get_num_threads()} intra-op threads, "
                      f"{torch.get_num_interop_threads()} inter-op); CUDA used: {used}")
    return lines


class LoadMonitor:
    """Samples the 1-minute load average every few seconds while a benchmark runs."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.samples: list[float] = []
        self.start_load = os.getloadavg()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.every_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        cores = os.cpu_count() or 1
        s = Stats.of(self.samples)
        start = ", ".join(f"{x:.2f}" for x in self.start_load)
        return (f"load average at start {start} (1/5/15 min); 1-minute load during the run "
                f"(sampled every {self.every_s:.0f} s, n={s.n}): median {s.median:.2f}, max {s.high:.2f} "
                f"on {cores} cores, i.e. about {s.median / cores:.1f} runnable tasks per core: "
                f"{'the machine was shared and busy' if s.median > cores else 'lightly loaded'}")


# ------------------------------------------------------------------------------------ report
@dataclass
class MarkdownReport:
    """One results file: title, command, machine and load, then sections of text and tables."""

    title: str
    command: str
    lines: list[str] = field(default_factory=list)

    def paragraph(self, text: str) -> None:
        self.lines += [text, ""]

    def heading(self, text: str) -> None:
        self.lines += [f"## {text}", ""]

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.lines.append("| " + " | ".join(headers) + " |")
        self.lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|")
        self.lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
        self.lines.append("")

    def render(self, load: LoadMonitor) -> str:
        head = [f"# {self.title}", "", f"Command: `{self.command}`", "", "Machine:", *machine_lines(),
                f"- Load: {load.summary()}", ""]
        return "\n".join(head + self.lines).rstrip() + "\n"

    def write(self, path: Path, load: LoadMonitor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(load), encoding="utf-8")
        print(path.read_text(encoding="utf-8"))

    def emit(self, path: Path | None, load: LoadMonitor) -> None:
        """Write to `path` (and print) or, without one, only print."""
        if path is not None:
            self.write(path, load)
        else:
            print(self.render(load))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3g}"
    return str(value)


def command_line() -> str:
    """The command as the user typed it, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", str(script), *map(shlex.quote, sys.argv[1:])])


@contextmanager
def tmp_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A scratch folder removed afterwards (unless `keep`)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def odir_manifest(folder: Path, count: int, start: int = 0) -> tuple[Path, list[Path]]:
    """A JSONL manifest of ODIR-5K rows [start, start + count) with absolute image paths, written to
    `folder`; returns it and the image files it names."""
    import json

    source = require_shared("odir5k-256", "pairs.jsonl")
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[start:start + count]
    for row in rows:
        row["image"] = str((source.parent / row["image"]).resolve())
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / f"odir-{start}-{start + len(rows)}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest, [Path(r["image"]) for r in rows]
