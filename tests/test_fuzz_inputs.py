"""A few hundred seeded mutations of DICOM, PNG and JPEG files (tests/fuzzing.py): no traceback, no hang,
and every failure names the file and gives a plain reason. benchmarks/fuzz_inputs.py runs 10,000."""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from medhash_app.core.ingest import ingest
from medhash_app.core.library import Library
from tests.conftest import SHARED_DATA
from tests.fuzzing import Verdict, cases, generated_seeds, judge, shared_dicom_seeds, unclear_reason

CASES = 300
PER_FILE_LIMIT_S = 10.0  # generous: a 2-core machine shared with training; a decode here takes milliseconds


class _Hang(Exception):
    pass


def _judge_with_limit(path: Path) -> tuple[Verdict, float]:
    def on_alarm(signum: int, frame: object) -> None:
        raise _Hang

    use_alarm = sys.platform != "win32"
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, PER_FILE_LIMIT_S)
    started = time.perf_counter()
    try:
        verdict = judge(path)
    except _Hang:
        verdict = Verdict("hang", f"over {PER_FILE_LIMIT_S} s")
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    seconds = time.perf_counter() - started
    if seconds > PER_FILE_LIMIT_S and verdict.outcome != "hang":
        verdict = Verdict("hang", f"{seconds:.1f} s")
    return verdict, seconds


def _seeds() -> list:
    return generated_seeds() + shared_dicom_seeds(SHARED_DATA / "dicom")  # real files when present


def test_mutated_inputs_fail_cleanly(tmp_path: Path) -> None:
    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    for case in cases(_seeds(), CASES, seed=20240601):
        path = tmp_path / case.file_name
        path.write_bytes(case.data)
        verdict, _ = _judge_with_limit(path)
        outcomes[verdict.outcome] += 1
        if verdict.outcome not in ("ok", "failed"):
            bad.append(f"#{case.index} {case.seed_name} {case.mutation}: {verdict.outcome}: {verdict.detail}")
        path.unlink()
    assert not bad, f"{outcomes}\n" + "\n".join(bad[:20])
    assert outcomes["failed"] > CASES // 4 and outcomes["ok"] > 0  # the mutations do break files, not all


@pytest.mark.parametrize("reason", [
    "the pixel data is truncated or damaged (cannot reshape array of size 50 into shape (16,16))",
    "the image could not be decoded (ValueError: not enough values to unpack (expected 3, got 2))",
    "the PNG image data is truncated or damaged (image file is truncated (3 bytes not processed))",
    "",
])
def test_the_judge_flags_what_the_issue_reported(reason: str) -> None:
    assert unclear_reason(reason)


def test_mutated_files_through_ingest_name_the_file_and_keep_stderr_quiet(tmp_path: Path,
                                                                         capfd: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    names = set()
    for case in cases(_seeds(), 60, seed=7):
        (folder / case.file_name).write_bytes(case.data)
        names.add(case.file_name)
    with Library.open(tmp_path / "lib", create=True) as lib:
        report = ingest([folder], lib, workers=1)
    assert report.added + report.skipped + len(report.failed) == report.total >= 50  # suffixless non-DICOM: not images
    for path, reason in report.failed:
        assert Path(path).name in names and not unclear_reason(reason), (path, reason)
    assert "Warning" not in capfd.readouterr().err  # decoder warnings went to logs/ingest.log
