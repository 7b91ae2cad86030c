"""Reading the progress events of core jobs and showing them as a bar, a rate and an ETA."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from medhash_app.ui.themes import set_role


@dataclass
class ProgressState:
    done: int = 0
    total: int | None = None
    text: str = ""
    rate: float | None = None  # items per second, when the job measures it itself
    counts: dict[str, int] | None = None  # added/skipped/failed so far, when the job reports them


def read_progress(value: Any) -> ProgressState:
    """Accept the shapes core jobs report: dicts or objects with done/total (or current/count)."""
    if isinstance(value, ProgressState):
        return value
    get = value.get if isinstance(value, dict) else (lambda k, d=None: getattr(value, k, d))
    done = get("done", None)
    if done is None:
        done = get("current", get("n", 0))
    total = get("total", get("count", None))
    text = get("message", None) or get("path", None) or get("stage", None) or ""
    try:
        done_i = int(done or 0)
    except (TypeError, ValueError):
        done_i = 0
    try:
        total_i = int(total) if total is not None else None
    except (TypeError, ValueError):
        total_i = None
    rate = get("files_per_s", None) or get("rate", None)
    counts = {k: v for k in ("added", "skipped", "failed") if isinstance(v := get(k, None), int)}
    return ProgressState(done_i, total_i, str(text), float(rate) if isinstance(rate, (int, float)) else None,
                         counts or None)


def eta_text(seconds: float) -> str:
    """"about 40 s left", "about 12 min left", "about 2 h 5 min left"."""
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"about {seconds} s left"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds // 3600} h {seconds % 3600 // 60} min left"


class ProgressRow(QWidget):
    """Bar + "123/456 · 35 files/s · about 20 s left" + Cancel; hidden when idle."""

    def __init__(self, unit: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.unit = unit
        self.bar = QProgressBar(self)
        self.bar.setAccessibleName(f"{unit} progress")
        self.bar.setTextVisible(True)
        self.label = QLabel("", self)
        set_role(self.label, "muted")
        self.label.setAccessibleName(f"{unit} throughput")
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setAccessibleName(f"Cancel {unit}")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar, 2)
        layout.addWidget(self.label, 3)
        layout.addWidget(self.cancel_button)
        self._start = 0.0
        self.rate = 0.0
        self.hide()

    def begin(self, text: str = "") -> None:
        self._start = time.perf_counter()
        self.rate = 0.0
        self.bar.setRange(0, 0)
        self.label.setText(text or "Starting…")
        self.cancel_button.setEnabled(True)
        self.show()

    def update_progress(self, value: Any) -> ProgressState:
        state = read_progress(value)
        elapsed = max(time.perf_counter() - self._start, 1e-6)
        self.rate = state.rate if state.rate is not None else state.done / elapsed
        counts = "".join(f" · {k} {v:,}" for k, v in (state.counts or {}).items())
        if state.total:
            self.bar.setRange(0, state.total)
            self.bar.setValue(min(state.done, state.total))
            left = (state.total - state.done) / self.rate if self.rate > 0 and state.done else None
            eta = f" · {eta_text(left)}" if left is not None else ""
            self.label.setText(f"{state.done:,} of {state.total:,} {self.unit}{counts} · {self.rate:.1f}/s{eta}")
        else:
            self.label.setText(f"{state.done:,} {self.unit}{counts} · {self.rate:.1f}/s")
        self.label.setToolTip(self.label.text())
        return state

    def finish(self) -> None:
        self.cancel_button.setEnabled(False)
        self.hide()
