"""The per-file work of ingest (decode, model image, thumbnail, write both files), run inline or
in a pool of worker processes. A worker process also contains a decoder that crashes outright."""

from __future__ import annotations

import ctypes
import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from medhash_app.core.errors import MedHashError
from medhash_app.core.image_stats import guess_domain
from medhash_app.core.imaging import load_image, model_image, thumbnail_jpeg
from medhash_app.core.ingest.ingest_log import captured_warnings, failure_detail
from medhash_app.core.library import atomic_write, input_rel_path, thumb_rel_path

MODEL_SIZE, THUMB_SIZE = 256, 160
PNG_LEVEL = 3  # zlib level: on radiographs as small as level 6 and about twice as fast
_GREY_TOLERANCE = 8  # max channel difference of an RGB image that is really greyscale


@dataclass(frozen=True)
class DecodeJob:
    path: str
    case_id: str
    frame: int | None
    salt: bytes
    folder: str
    key: bytes | None = None  # the workstation's pseudonym key: the patient key is made in the worker


@dataclass
class DecodeResult:
    """`reason` says why the file failed; `library_problem` means the library could not be
    written (disk full...), which stops the whole ingest rather than failing one file."""

    case_id: str
    facts: dict[str, Any] = field(default_factory=dict)
    looks_grey: bool = False
    domain_guess: tuple[str, float, str] | None = None  # (domain, confidence, why) from core/image_stats.py
    reason: str | None = None
    library_problem: str | None = None
    detail: str | None = None  # the exception behind `reason`, redacted: for logs/ingest.log only
    warnings: list[str] = field(default_factory=list)  # redacted decoder warnings, for the log


UNEXPECTED = ("the image could not be decoded: the decoder failed in an unexpected way (the details are in "
              "the library's logs/ingest.log)")


def decode_job(job: DecodeJob) -> DecodeResult:
    """Decode one file and store its model input PNG and thumbnail JPEG in the library. The
    decoders' warnings come back in `warnings` (for logs/ingest.log) instead of reaching stderr."""
    with captured_warnings() as lines:
        result = _decode_job(job)
    result.warnings = lines
    return result


def _decode_job(job: DecodeJob) -> DecodeResult:
    try:
        image = load_image(job.path, frame=job.frame, salt=job.salt, key=job.key)
        model = model_image(image, MODEL_SIZE)
        thumb = thumbnail_jpeg(image, THUMB_SIZE)
    except MedHashError as exc:
        return DecodeResult(job.case_id, reason=exc.reason, detail=failure_detail(exc))
    except MemoryError:
        return DecodeResult(job.case_id, reason="there was not enough memory to decode this image")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a decoder bug, even a native panic, fails one file
        return DecodeResult(job.case_id, reason=UNEXPECTED, detail=failure_detail(exc))
    png = io.BytesIO()
    model.save(png, format="PNG", compress_level=PNG_LEVEL)
    try:
        atomic_write(Path(job.folder, input_rel_path(job.case_id)), png.getvalue())
        atomic_write(Path(job.folder, thumb_rel_path(job.case_id)), thumb)
    except OSError as exc:
        return DecodeResult(job.case_id, library_problem=f"cannot write into the library ({exc.strerror or exc})")
    pixels = np.asarray(model, dtype=np.int16)
    grey = int(np.abs(pixels - pixels[..., :1]).max()) <= _GREY_TOLERANCE
    guess = guess_domain(model)
    return DecodeResult(job.case_id, facts=image.facts.to_dict(), looks_grey=grey,
                        domain_guess=(guess.domain, guess.confidence, guess.reason))


_PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 1.0


def worker_init(parent_pid: int) -> None:
    """In each decode worker: exit when the process that started it dies.

    A killed ingest (kill -9, an out-of-memory kill, a crashed app) left its workers waiting forever
    on the task queue, each holding a decoder's memory. On Linux the kernel sends SIGKILL when the
    parent goes (prctl PR_SET_PDEATHSIG; it fires on the exit of the thread that started the worker,
    which is the thread running the ingest, alive as long as the pool is); everywhere a daemon thread
    also polls os.getppid(), which changes when the parent is gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl here: the polling below still applies
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="medhash-parent-watch", daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(1)


FILE_TIME_LIMIT_S = 300.0  # one file's decode; a 2 GiB multi-frame study decodes well inside it


def timed_out(job: DecodeJob, limit_s: float) -> DecodeResult:
    return DecodeResult(job.case_id, reason=f"decoding took longer than {limit_s:g} s, so the file was skipped "
                                            "(a damaged or pathological file makes some decoders loop)")


class Decoder:
    """Runs decode jobs in a process pool started on first need (inline with `workers` 1).

    In the pool every file has a time limit (`limit_s`): when no file finishes within it, the busy
    workers are killed and each unfinished file is retried alone under the same limit, so only a
    file that hangs by itself is reported (`timed_out`) and the import goes on. Inline decoding
    (`workers` 1, the tests' and debuggers' choice) has no limit.
    """

    def __init__(self, workers: int | None, limit_s: float = FILE_TIME_LIMIT_S,
                 job_fn: Callable[[DecodeJob], DecodeResult] = decode_job) -> None:
        self.workers = min(os.cpu_count() or 1, 4) if workers is None else max(1, workers)
        self.limit_s, self.job_fn = limit_s, job_fn
        self._pool: Executor | None = None

    def run(self, jobs: Sequence[DecodeJob]) -> list[DecodeResult]:
        """Results in the order of `jobs`."""
        if self.workers <= 1:
            return [self.job_fn(job) for job in jobs]
        try:
            return self._timed(jobs)
        except BrokenProcessPool:
            self._restart()
            if not self._pool_starts():  # workers cannot start here (e.g. no importable __main__)
                self.workers = 1
                return [self.job_fn(job) for job in jobs]
            return [self._isolated(job) for job in jobs]
        except Exception:  # noqa: BLE001 - e.g. a worker's result that could not be pickled back
            return [self._isolated(job) for job in jobs]

    def _timed(self, jobs: Sequence[DecodeJob]) -> list[DecodeResult]:
        """Every job through the pool; when nothing finishes for `limit_s`, the rest one by one."""
        self._pool_starts()  # workers up first: their start (imports) is not a file's decode time
        futures: dict[Future, int] = {self._executor().submit(self.job_fn, job): i for i, job in enumerate(jobs)}
        results: list[DecodeResult | None] = [None] * len(jobs)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=self.limit_s, return_when=FIRST_COMPLETED)
            for future in done:
                results[futures[future]] = future.result()
            if not done:  # some worker is stuck: stop them all, then find the culprit(s) alone
                self._kill()
                for future in pending:
                    results[futures[future]] = self._isolated(jobs[futures[future]])
                break
        return [r for r in results if r is not None]

    def _kill(self) -> None:
        """Stop the pool's workers now (a hung decoder never returns to take a shutdown request)."""
        if self._pool is not None:
            for process in list(getattr(self._pool, "_processes", {}).values()):  # no public way before 3.14
                process.kill()
        self._restart()

    def _pool_starts(self) -> bool:
        try:
            return self._executor().submit(os.getpid).result(timeout=120) > 0
        except (BrokenProcessPool, TimeoutError, OSError):
            self._restart()
            return False

    def _isolated(self, job: DecodeJob) -> DecodeResult:
        """After a worker died or hung, retry one file per call (under the time limit) so only the
        culprit fails."""
        self._pool_starts()
        try:
            return self._executor().submit(self.job_fn, job).result(timeout=self.limit_s)
        except TimeoutError:
            self._kill()
            return timed_out(job, self.limit_s)
        except BrokenProcessPool:
            self._restart()
            return DecodeResult(job.case_id, reason="the decoder crashed on this file (its worker process died)")
        except Exception as exc:  # noqa: BLE001 - whatever came back, it is this file's failure
            return DecodeResult(job.case_id, reason=UNEXPECTED, detail=failure_detail(exc))

    def _executor(self) -> Executor:
        if self._pool is None:
            # spawn, not fork: forking a process that runs Qt or other threads can deadlock.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=worker_init,
                                             initargs=(os.getpid(),))
        return self._pool

    def _restart(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
