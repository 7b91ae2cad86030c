"""Mutation fuzzing of the image decoders: N seeded mutations of real DICOM files and generated
DICOM/PNG/JPEG (tests/fuzzing.py), each run through what ingest does with one file.

Each case runs in a worker process with a per-file time limit, so a crash that kills the
interpreter (a segfault) or a decoder that never returns is counted, not fatal:
- crash: an exception other than MedHashError escaped (a traceback), or the worker died;
- hang: no answer within --limit-s seconds (the worker is killed and restarted);
- unclear: a MedHashError whose message does not name the file or whose reason is not a plain
  sentence (Python exception text, decoder dumps: tests/fuzzing.unclear_reason);
- failed / ok: the file failed with a clear reason / decoded.
Peak memory is the largest resident set size a worker reached (ru_maxrss).

    python benchmarks/fuzz_inputs.py                    # 10,000 cases -> results/fuzz.md
    python benchmarks/fuzz_inputs.py --n 500 --seed 1   # a smaller run

Real seeds come from ../shared/data/dicom (or MEDHASH_SHARED_DATA) when present; without it only
generated seeds are used (the results file says which). Mutated files live in a scratch folder
and are deleted; nothing from the shared data is written anywhere else.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
import warnings
from collections import Counter, defaultdict
from multiprocessing.connection import Connection
from pathlib import Path

from benchkit import REPO, RESULTS, SHARED, LoadMonitor, MarkdownReport, command_line, tmp_dir

sys.path.insert(0, str(REPO))

from tests.fuzzing import MUTATIONS, cases, generated_seeds, judge, shared_dicom_seeds

OUTCOMES = ("ok", "failed", "unclear", "crash", "hang")
DEFAULT_N = 10_000
EXAMPLES = 12


def worker(conn: Connection) -> None:
    """Judge each path sent; answer (outcome, detail, seconds, peak RSS in KiB)."""
    warnings.simplefilter("ignore")  # decoder warnings are not what is measured here
    while True:
        path = conn.recv()
        if path is None:
            return
        started = time.perf_counter()
        verdict = judge(Path(path))
        conn.send((verdict.outcome, verdict.detail, time.perf_counter() - started,
                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


class Runner:
    """One worker process at a time; a dead or stuck one is replaced."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.context = multiprocessing.get_context("spawn")
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self.peak_kib = 0
        self.restarts = 0

    def _start(self) -> None:
        parent, child = self.context.Pipe()
        self.process = self.context.Process(target=worker, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent

    def _kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
            self.restarts += 1
        self.process = self.conn = None

    def run(self, path: Path) -> tuple[str, str, float]:
        if self.process is None:
            self._start()
        started = time.perf_counter()
        self.conn.send(str(path))
        # the first case of a fresh worker also pays for its imports
        if not self.conn.poll(self.limit_s + 30.0 if self.restarts == 0 and self.peak_kib == 0 else self.limit_s):
            self._kill()
            return "hang", f"no answer within {self.limit_s:.0f} s", time.perf_counter() - started
        try:
            outcome, detail, seconds, peak = self.conn.recv()
        except (EOFError, OSError):
            code = self.process.exitcode if self.process else None
            self._kill()
            return "crash", f"the worker process died (exit code {code})", time.perf_counter() - started
        self.peak_kib = max(self.peak_kib, peak)
        if seconds > self.limit_s:
            return "hang", f"took {seconds:.1f} s", seconds
        return outcome, detail, seconds

    def close(self) -> None:
        if self.conn is not None:
            self.conn.send(None)
            self.process.join(10)
        if self.process is not None and self.process.is_alive():
            self._kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="number of mutated files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-s", type=float, default=20.0, help="per-file time limit (hang above it)")
    parser.add_argument("--max-seed-bytes", type=int, default=200_000, help="largest real DICOM used as a seed")
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz.md")
    args = parser.parse_args()

    real = shared_dicom_seeds(SHARED / "dicom", args.max_seed_bytes)
    seeds = generated_seeds() + real
    counts: Counter[str] = Counter()
    by_mutation: dict[str, Counter[str]] = defaultdict(Counter)
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    examples: dict[str, list[str]] = defaultdict(list)
    slowest: list[tuple[float, str]] = []
    runner = Runner(args.limit_s)
    started = time.perf_counter()
    with LoadMonitor() as load, tmp_dir("medhash-fuzz-") as scratch:
        try:
            for case in cases(seeds, args.n, args.seed):
                path = scratch / case.file_name
                path.write_bytes(case.data)
                outcome, detail, seconds = runner.run(path)
                path.unlink(missing_ok=True)
                counts[outcome] += 1
                by_mutation[case.mutation][outcome] += 1
                by_kind[case.kind][outcome] += 1
                slowest = sorted([*slowest, (seconds, f"#{case.index} {case.seed_name} {case.mutation}")])[-5:]
                if outcome in ("unclear", "crash", "hang") and len(examples[outcome]) < EXAMPLES:
                    examples[outcome].append(f"#{case.index} {case.seed_name} {case.mutation}: {detail}")
                if (case.index + 1) % 500 == 0:
                    print(f"{case.index + 1}/{args.n} {dict(counts)}", flush=True)
        finally:
            runner.close()
    elapsed = time.perf_counter() - started

    report = MarkdownReport("Decoder fuzzing: seeded mutations of DICOM, PNG and JPEG", command_line())
    seeds_text = (f"{len(real)} real DICOM files of ../shared/data/dicom up to {args.max_seed_bytes:,} bytes "
                  f"and {len(seeds) - len(real)} generated seeds" if real else
                  f"{len(seeds)} generated seeds only (../shared/data/dicom was not found)")
    report.paragraph(
        f"{args.n:,} cases (seed {args.seed}) from {seeds_text}; mutations: {', '.join(MUTATIONS)} "
        f"(tests/fuzzing.py). Each case: imaging.load_image + model_image + thumbnail_jpeg in a spawn worker "
        f"process, per-file limit {args.limit_s:.0f} s. Wall time {elapsed:,.0f} s "
        f"({args.n / max(elapsed, 1e-9):.1f} files/s); worker restarts {runner.restarts}; "
        f"peak worker memory (max RSS) {runner.peak_kib / 1024:.0f} MiB.")
    if args.n != DEFAULT_N:
        report.paragraph(f"**This run used N = {args.n:,}, not the default {DEFAULT_N:,}** (a smaller run on a "
                         "shared machine); run the command without --n for the full count.")
    report.heading("Outcomes")
    report.table(["outcome", "cases", "share"],
                 [(o, counts[o], f"{100 * counts[o] / max(args.n, 1):.1f} %") for o in OUTCOMES])
    report.heading("By mutation")
    report.table(["mutation", *OUTCOMES], [(m, *(by_mutation[m][o] for o in OUTCOMES)) for m in MUTATIONS])
    report.heading("By seed format")
    report.table(["format", *OUTCOMES], [(k, *(by_kind[k][o] for o in OUTCOMES)) for k in sorted(by_kind)])
    report.heading("Slowest cases")
    report.table(["seconds", "case"], [(round(s, 2), name) for s, name in reversed(slowest)])
    for outcome in ("crash", "hang", "unclear"):
        if examples[outcome]:
            report.heading(f"Examples: {outcome}")
            report.lines += [f"- {line}" for line in examples[outcome]] + [""]
    report.emit(args.out, load)


if __name__ == "__main__":
    main()
