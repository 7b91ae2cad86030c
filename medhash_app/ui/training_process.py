"""Training as a separate process: `python -m medhash_app.cli train … --progress jsonl`.

A separate process keeps the GUI responsive (no GIL contention, no CUDA state in the GUI) and a
crash in training cannot take the window down. Each stdout line is one JSON progress event
(trainer/engine.py); anything else on stdout/stderr is kept as log text.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from trainer.config import DEFAULT_METHOD


@dataclass
class TrainOptions:
    """Everything the trainer tab lets the user choose; `to_args` makes the CLI call."""

    library: Path
    method: str = DEFAULT_METHOD
    bits: list[int] = field(default_factory=lambda: [16, 32])
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    noise_handling: str = "none"
    noise_rate: float = 0.0
    device: str = "auto"
    backbone: str = "embedded"
    components: dict[str, bool] = field(default_factory=dict)
    out_dir: Path | None = None
    activate: bool = False  # the tab offers "Make active and re-encode" after reading the report

    def to_args(self) -> list[str]:
        args = ["-m", "medhash_app.cli", "train", "--library", str(self.library), "--method", self.method,
                "--bits", ",".join(str(b) for b in sorted(self.bits)), "--epochs", str(self.epochs),
                "--batch-size", str(self.batch_size), "--lr", f"{self.lr:g}",
                "--noise-handling", self.noise_handling, "--noise-rate", f"{self.noise_rate:g}",
                "--device", self.device, "--backbone", self.backbone, "--progress", "jsonl",
                "--activate" if self.activate else "--no-activate"]
        if self.components:
            switches = ",".join(f"{k}={'on' if v else 'off'}" for k, v in sorted(self.components.items()))
            args += ["--components", switches]
        if self.out_dir is not None:
            args += ["--out", str(self.out_dir)]
        return args


def parse_event(line: str) -> dict[str, Any] | None:
    """One JSON progress event from a stdout line, or None for ordinary text."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "event" in value else None


MAP_DIRECTIONS = ("i2t", "t2i", "i2i", "t2t")


def val_map_value(value: Any) -> float | None:
    """A single validation mAP to plot: the number itself, a dict's "mean", or the mean of its
    per-direction mAPs (the engine reports {"bits", "i2t", "t2i", "mean"})."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        if isinstance(value.get("mean"), (int, float)):
            return float(value["mean"])
        maps = [float(v) for k, v in value.items() if k in MAP_DIRECTIONS and isinstance(v, (int, float))]
        return sum(maps) / len(maps) if maps else None
    return None


def total_loss(event: dict[str, Any]) -> float | None:
    """The number to plot as "loss": the event's total, else the sum of its loss terms."""
    losses = event.get("losses")
    if isinstance(losses, (int, float)):
        return float(losses)
    if isinstance(losses, dict) and losses:
        if isinstance(losses.get("total"), (int, float)):
            return float(losses["total"])
        values = [float(v) for v in losses.values() if isinstance(v, (int, float))]
        return sum(values) if values else None
    return None


class TrainingProcess(QObject):
    """Runs and watches one training process; emits parsed events, log text and the exit."""

    event = Signal(dict)
    log = Signal(str)
    started = Signal()
    finished = Signal(int, bool)  # exit code, stopped by the user

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.process: QProcess | None = None
        self._buffer = b""
        self._stopping = False
        self.last_done: dict[str, Any] | None = None
        self.command: list[str] = []

    def is_running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    def start(self, options: TrainOptions, python: str | None = None) -> None:
        if self.is_running():
            raise RuntimeError("a training run is already going")
        process = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        env.insert("PYTHONIOENCODING", "utf-8")
        process.setProcessEnvironment(env)
        process.setWorkingDirectory(os.getcwd())
        process.readyReadStandardOutput.connect(self._read_stdout)
        process.readyReadStandardError.connect(self._read_stderr)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_error)
        self.process, self._buffer, self._stopping, self.last_done = process, b"", False, None
        self.command = [python or sys.executable, *options.to_args()]
        process.start(self.command[0], self.command[1:])
        self.started.emit()

    def stop(self, grace_ms: int = 30_000) -> None:
        """Ask the trainer to stop like Ctrl-C does (it finishes the step; the last saved epoch
        stays resumable), then kill it if it has not exited after `grace_ms`."""
        if not self.is_running():
            return
        self._stopping = True
        pid = self.process.processId()
        if os.name == "posix" and pid > 0:
            os.kill(pid, signal.SIGINT)  # the CLI turns the first Ctrl-C into a clean cancel
        else:
            self.process.terminate()
        QTimer.singleShot(grace_ms, self._kill_if_running)

    def wait(self, msecs: int = 30_000) -> bool:
        return self.process is None or self.process.waitForFinished(msecs)

    def _kill_if_running(self) -> None:
        if self.is_running():
            self.process.kill()

    def _read_stdout(self) -> None:
        self._buffer += bytes(self.process.readAllStandardOutput().data())
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            self._handle_line(raw.decode("utf-8", "replace"))

    def _handle_line(self, line: str) -> None:
        event = parse_event(line)
        if event is None:
            if line.strip():
                self.log.emit(line.rstrip())
            return
        if event.get("event") == "done":
            self.last_done = event
        self.event.emit(event)

    def _read_stderr(self) -> None:
        text = bytes(self.process.readAllStandardError().data()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                self.log.emit(line.rstrip())

    def _on_finished(self, code: int, _status: QProcess.ExitStatus) -> None:
        if self._buffer:
            self._handle_line(self._buffer.decode("utf-8", "replace"))
            self._buffer = b""
        self.finished.emit(code, self._stopping)

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.log.emit("The training program could not be started.")
            self.finished.emit(-1, False)
