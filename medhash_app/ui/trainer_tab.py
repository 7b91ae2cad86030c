"""Trainer tab: choose a method and its settings, train in a separate process with live curves,
then make the new model active and re-encode the library with one click."""

from __future__ import annotations

import datetime as dt
import html
import time
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from medhash_app.ui.collapsible import Collapsible
from medhash_app.ui.messages import MessageBar
from medhash_app.ui.session_state import SessionState
from medhash_app.ui.settings import AppSettings
from medhash_app.ui.themes import current_theme, set_role
from medhash_app.ui.training_process import TrainingProcess, TrainOptions, total_loss, val_map_value
from medhash_app.ui.workers import JobRunner
from trainer.config import DEFAULT_COMPONENTS, DEFAULT_METHOD, NOISE_HANDLINGS

METHOD_TITLES = {"base": "BASE", "mcph": "MCPH", "tripah": "TriPAH", "prompthash": "PromptHash"}
BITS_CHOICES = (16, 32, 64, 128)
BACKBONES = (("embedded", "Embedded (EfficientNet-Lite0 + MiniLM)"), ("tiny", "Tiny (fast test model)"))
NOISE_TITLES = {"none": "None", "adaptive_temperature": "Adaptive temperature (MCPH)"}


def method_title(key: str) -> str:
    """The paper's spelling of a method; a method registered later shows under its own key."""
    return METHOD_TITLES.get(key, key)


def common_components() -> dict[str, bool]:
    """The switches every method reads, shown until the trainer's registry has loaded."""
    return dict(DEFAULT_COMPONENTS)


def read_registry() -> dict[str, dict[str, bool]]:
    """{method: component switches} of every registered method (imports torch: run it off the GUI thread)."""
    from medhash_app.core.training import method_switches

    return method_switches()


REPORT_COLUMNS = (("map_all", "mAP@all"), ("map@10", "mAP@10"), ("map@100", "mAP@100"), ("p@10", "P@10"),
                  ("random_map_all", "chance mAP"), ("queries", "queries"), ("database", "database"))
DIRECTION_TITLES = {"i2t": "image → report", "t2i": "report → image", "i2i": "image → image",
                    "t2t": "report → report"}


def format_report(done: dict[str, Any]) -> str:
    """HTML evaluation report of a finished run: one row per direction and code length."""
    metrics = done.get("metrics") or {}
    checkpoint = html.escape(str(done.get("checkpoint", "")))
    head = (f"<h3 style='margin:0'>Evaluation on the held-out queries</h3>"
            f"<p>Model {html.escape(str(done.get('model_id', '')))} · checkpoint <code>{checkpoint}</code></p>")
    order = list(DIRECTION_TITLES)
    rows = sorted(((k, v) for k, v in metrics.items() if isinstance(v, dict)),
                  key=lambda kv: (order.index(kv[0].partition("@")[0]) if kv[0].partition("@")[0] in order
                                  else len(order), int(kv[0].partition("@")[2] or 0)))
    warnings = "".join(f"<p><b>Warning:</b> {html.escape(str(w))}</p>" for w in done.get("warnings") or [])
    head += warnings  # core.domain_check: a domain the model cannot tell apart, above the pooled numbers
    if not rows:
        return head + "<p>The run reported no evaluation metrics.</p>"
    cells = "".join(f"<th align='right'>&nbsp;{title}&nbsp;</th>" for _, title in REPORT_COLUMNS)
    body = []
    for key, values in rows:
        direction, _, bits = key.partition("@")
        name = f"{DIRECTION_TITLES.get(direction, direction)}, {bits} bits" if bits else key
        tds = "".join(f"<td align='right'>{_cell(values.get(col))}</td>" for col, _ in REPORT_COLUMNS)
        body.append(f"<tr><td>{html.escape(name)}</td>{tds}</tr>")
    return head + (f"<table cellspacing='0' cellpadding='3'><tr><th align='left'>Direction</th>{cells}</tr>"
                   + "".join(body) + "</table>")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else html.escape(str(value))


class TrainerTab(QWidget):
    """Settings on the left, live curves and the report on the right."""

    trainingFinished = Signal(object)  # the "done" event, or None when the run failed/stopped
    modelActivated = Signal()

    def __init__(self, state: SessionState, runner: JobRunner, settings: AppSettings,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.runner = runner
        self.settings = settings
        self.process = TrainingProcess(self)
        self.process.event.connect(self.on_event)
        self.process.log.connect(self._append_log)
        self.process.finished.connect(self._on_finished)
        self.last_out: Path | None = None
        self.last_done: dict[str, Any] | None = None
        self._started = 0.0
        self._last_error: str | None = None
        self._steps: list[float] = []
        self._losses: list[float] = []
        self._val_epochs: list[float] = []
        self._val_maps: list[float] = []
        self._step_counter = 0
        self.message = MessageBar(self)
        settings_panel = self._build_settings()
        plots_panel = self._build_plots()
        split = QSplitter(Qt.Orientation.Horizontal, self)
        split.addWidget(settings_panel)
        split.addWidget(plots_panel)
        split.setStretchFactor(1, 1)
        split.setSizes([420, 900])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.message)
        layout.addWidget(split, 1)
        self._restore_settings()
        state.changed.connect(self._update_enabled)
        self._update_enabled()
        job = runner.start("trainer registry", lambda _p, _c: read_registry())
        job.succeeded.connect(self._on_registry)

    def _apply_registry(self, registry: dict[str, dict[str, bool]]) -> None:
        """Enable the methods the trainer offers (adding any it registers beyond the known four); the
        others stay visible but greyed out."""
        for key in registry:
            if self.method.findData(key) < 0:
                self.method.addItem(method_title(key), key)
        for index in range(self.method.count()):
            item = self.method.model().item(index)
            offered = self.method.itemData(index) in registry
            item.setEnabled(offered)
            item.setToolTip("" if offered else "Not available in this version of the trainer")

    def _on_registry(self, registry: dict[str, dict[str, bool]]) -> None:
        self._registry = registry or {"base": common_components()}
        self._apply_registry(self._registry)
        self._select(self.method, self.settings.trainer_value("method", DEFAULT_METHOD))
        self._fill_components()

    # -- construction -------------------------------------------------------------------------
    def _build_settings(self) -> QWidget:
        box = QGroupBox("Training setup", self)
        form = QFormLayout()
        self.method = QComboBox(self)
        self.method.setAccessibleName("Method")
        for key, title in METHOD_TITLES.items():
            self.method.addItem(title, key)
        self._registry: dict[str, dict[str, bool]] = {"base": common_components()}
        self._apply_registry(self._registry)
        self.method.currentIndexChanged.connect(self._fill_components)
        self.backbone = QComboBox(self)
        self.backbone.setAccessibleName("Backbone")
        for key, title in BACKBONES:
            self.backbone.addItem(title, key)
        self.bits_boxes: dict[int, QCheckBox] = {}
        bits_row = QHBoxLayout()
        for b in BITS_CHOICES:
            check = QCheckBox(str(b), self)
            check.setAccessibleName(f"{b}-bit codes")
            self.bits_boxes[b] = check
            bits_row.addWidget(check)
        self.epochs = self._spin(1, 1000, 10, "Epochs")
        self.batch_size = self._spin(2, 4096, 32, "Batch size")
        self.lr = QDoubleSpinBox(self)
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(3e-4)
        self.lr.setAccessibleName("Learning rate")
        self.noise_handling = QComboBox(self)
        self.noise_handling.setAccessibleName("Noise handling")
        for key in NOISE_HANDLINGS:
            self.noise_handling.addItem(NOISE_TITLES.get(key, key), key)
        self.noise_rate = QLabeledDoubleSlider(Qt.Orientation.Horizontal, self)
        self.noise_rate.setRange(0.0, 0.9)
        self.noise_rate.setSingleStep(0.05)
        self.noise_rate.setValue(0.0)
        self.noise_rate.setAccessibleName("Injected noise rate")
        for editor in self.noise_rate.findChildren(QWidget):
            editor.setAccessibleName("Injected noise rate value")
        self.noise_rate.setToolTip("Fraction of training pairs whose reports are shuffled (seeded), "
                                   "to test robustness to mismatched pairs")
        self.device = QComboBox(self)
        self.device.setAccessibleName("Training device")
        for key, title in (("auto", "Automatic"), ("cpu", "CPU"), ("cuda", "GPU (CUDA)")):
            self.device.addItem(title, key)
        form.addRow("Method", self.method)
        form.addRow("Backbone", self.backbone)
        form.addRow("Code lengths", bits_row)
        form.addRow("Epochs", self.epochs)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Learning rate", self.lr)
        form.addRow("Noise handling", self.noise_handling)
        form.addRow("Injected noise", self.noise_rate)
        form.addRow("Device", self.device)
        self.components_box = Collapsible("Components (ablations)", self)
        self.components_widget = QWidget(self)
        self.components_layout = QVBoxLayout(self.components_widget)
        self.components_layout.setContentsMargins(12, 0, 0, 0)
        self.components_box.addWidget(self.components_widget)
        self.component_boxes: dict[str, QCheckBox] = {}
        self._fill_components()
        self.start_button = QPushButton("Start training", self)
        set_role(self.start_button, "primary")
        self.start_button.setAccessibleName("Start training")
        self.start_button.clicked.connect(lambda: self.start_training())
        self.stop_button = QPushButton("Stop", self)
        self.stop_button.setAccessibleName("Stop training")
        self.stop_button.setToolTip("Stop after saving a checkpoint you can resume from")
        self.stop_button.clicked.connect(self.stop_training)
        self.resume_button = QPushButton("Resume", self)
        self.resume_button.setAccessibleName("Resume training")
        self.resume_button.clicked.connect(lambda: self.start_training(resume=True))
        buttons = QHBoxLayout()
        for w in (self.start_button, self.stop_button, self.resume_button):
            buttons.addWidget(w)
        inner = QVBoxLayout(box)
        inner.addLayout(form)
        inner.addWidget(self.components_box)
        inner.addStretch(1)
        inner.addLayout(buttons)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        scroll.setWidget(box)
        scroll.setMinimumWidth(360)
        return scroll

    def _spin(self, lo: int, hi: int, value: int, name: str) -> QSpinBox:
        spin = QSpinBox(self)
        spin.setRange(lo, hi)
        spin.setValue(value)
        spin.setAccessibleName(name)
        return spin

    def _build_plots(self) -> QWidget:
        panel = QWidget(self)
        theme = current_theme()
        pg.setConfigOptions(antialias=True, background=theme.base, foreground=theme.text)
        self.loss_plot = pg.PlotWidget(panel, title="Training loss")
        self.loss_plot.setAccessibleName("Training loss plot")
        self.loss_plot.setLabel("bottom", "step")
        self.loss_plot.setLabel("left", "loss")
        self.loss_plot.showGrid(x=True, y=True, alpha=0.2)
        self.loss_curve = self.loss_plot.plot([], [], pen=pg.mkPen(theme.accent, width=2))
        self.map_plot = pg.PlotWidget(panel, title="Validation mAP")
        self.map_plot.setAccessibleName("Validation mAP plot")
        self.map_plot.setLabel("bottom", "epoch")
        self.map_plot.showGrid(x=True, y=True, alpha=0.2)
        self.map_plot.setYRange(0.0, 1.0)
        self.map_plot.setLabel("left", "mAP")
        self.map_curve = self.map_plot.plot([], [], pen=pg.mkPen("#3fb950", width=2), symbol="o",
                                            symbolSize=7, symbolBrush="#3fb950")
        self.status_label = QLabel("Not training.", panel)
        self.status_label.setAccessibleName("Training status")
        self.eta_label = QLabel("", panel)
        set_role(self.eta_label, "muted")
        self.eta_label.setAccessibleName("Time left")
        self.report = QTextBrowser(panel)
        self.report.setAccessibleName("Evaluation report")
        self.report.setPlaceholderText("The evaluation report appears here when a run finishes.")
        self.activate_button = QPushButton("Make active and re-encode", panel)
        set_role(self.activate_button, "primary")
        self.activate_button.setAccessibleName("Make active and re-encode")
        self.activate_button.setEnabled(False)
        self.activate_button.clicked.connect(self.activate_trained_model)
        self.log_view = QPlainTextEdit(panel)
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.log_view.setAccessibleName("Training log")
        log_box = Collapsible("Log", panel)
        log_box.addWidget(self.log_view)
        head = QHBoxLayout()
        head.addWidget(self.status_label, 1)
        head.addWidget(self.eta_label)
        plots = QSplitter(Qt.Orientation.Vertical, panel)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.map_plot)
        bottom = QWidget(panel)
        bottom_layout = QVBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        bottom_layout.addWidget(self.report, 1)
        bottom_layout.addWidget(self.activate_button, 0, Qt.AlignmentFlag.AlignRight)
        plots.addWidget(bottom)
        plots.setSizes([300, 220, 200])
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(head)
        layout.addWidget(plots, 1)
        layout.addWidget(log_box)
        return panel

    def _fill_components(self, *_: Any) -> None:
        previous = {k: b.isChecked() for k, b in self.component_boxes.items()}
        for box in self.component_boxes.values():
            box.deleteLater()
        self.component_boxes = {}
        method = self.method.currentData() or DEFAULT_METHOD
        for name, default in self._registry.get(method, common_components()).items():
            box = QCheckBox(name.replace("_", " "), self.components_widget)
            box.setAccessibleName(f"Component {name.replace('_', ' ')}")
            box.setChecked(previous.get(name, default))
            self.components_layout.addWidget(box)
            self.component_boxes[name] = box

    # -- options and settings -----------------------------------------------------------------
    def options(self, resume: bool = False) -> TrainOptions:
        library = self.state.info.library_dir
        if library is None:
            raise ValueError("no library open")
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        method = self.method.currentData()
        # Resume = the same command on the same output folder: the engine continues from the
        # last epoch checkpoint it saved there.
        out = self.last_out if resume and self.last_out else library / "models" / f"{method}-{stamp}"
        return TrainOptions(
            library=library, method=method, bits=[b for b, box in self.bits_boxes.items() if box.isChecked()],
            epochs=self.epochs.value(), batch_size=self.batch_size.value(), lr=self.lr.value(),
            noise_handling=self.noise_handling.currentData(), noise_rate=round(self.noise_rate.value(), 3),
            device=self.device.currentData(), backbone=self.backbone.currentData(),
            components={k: b.isChecked() for k, b in self.component_boxes.items()},
            out_dir=out)

    def _restore_settings(self) -> None:
        s = self.settings
        self._select(self.method, s.trainer_value("method", DEFAULT_METHOD))
        self._select(self.backbone, s.trainer_value("backbone", "embedded"))
        bits = {int(b) for b in str(s.trainer_value("bits", "16,32,64")).split(",") if b.strip().isdigit()}
        for b, box in self.bits_boxes.items():
            box.setChecked(b in bits)
        self.epochs.setValue(int(s.trainer_value("epochs", 10)))
        self.batch_size.setValue(int(s.trainer_value("batch_size", 32)))
        self.lr.setValue(float(s.trainer_value("lr", 3e-4)))
        self._select(self.noise_handling, s.trainer_value("noise_handling", "none"))
        self.noise_rate.setValue(float(s.trainer_value("noise_rate", 0.0)))
        self._select(self.device, s.trainer_value("device", "auto"))

    def save_settings(self) -> None:
        s = self.settings
        s.set_trainer_value("method", self.method.currentData())
        s.set_trainer_value("backbone", self.backbone.currentData())
        s.set_trainer_value("bits", ",".join(str(b) for b, box in self.bits_boxes.items() if box.isChecked()))
        s.set_trainer_value("epochs", self.epochs.value())
        s.set_trainer_value("batch_size", self.batch_size.value())
        s.set_trainer_value("lr", self.lr.value())
        s.set_trainer_value("noise_handling", self.noise_handling.currentData())
        s.set_trainer_value("noise_rate", self.noise_rate.value())
        s.set_trainer_value("device", self.device.currentData())

    @staticmethod
    def _select(combo: QComboBox, value: Any) -> None:
        index = combo.findData(value)
        if index >= 0 and combo.model().item(index).isEnabled():
            combo.setCurrentIndex(index)

    # -- running ------------------------------------------------------------------------------
    def is_training(self) -> bool:
        return self.process.is_running()

    def start_training(self, resume: bool = False) -> bool:
        if not self.state.is_open:
            self.message.show_message("Open a library with imported cases before training.", "warning")
            return False
        options = self.options(resume)
        if not options.bits:
            self.message.show_message("Choose at least one code length.", "warning")
            return False
        self.save_settings()
        self.message.hide()
        if not resume:
            self._clear_curves()
        self.report.clear()
        self.activate_button.setEnabled(False)
        self.last_out, self.last_done = options.out_dir, None
        self._started = time.perf_counter()
        self._last_error = None
        self._append_log("$ medhash " + " ".join(options.to_args()[2:]))  # args[:2] = -m medhash_app.cli
        self.process.start(options)
        self.status_label.setText(("Resuming" if resume else "Starting") + f" {method_title(options.method)} "
                                  f"training on {options.device}…")
        self._update_enabled()
        return True

    def stop_training(self) -> None:
        if self.process.is_running():
            self.status_label.setText("Stopping after the current step…")
            self.process.stop()

    def on_event(self, event: dict[str, Any]) -> None:
        """One JSON-lines event from the training process (shapes in trainer/engine.py)."""
        kind = event.get("event")
        if isinstance(event.get("eta_s"), (int, float)):
            self.eta_label.setText(f"about {_duration(event['eta_s'])} left")
        if kind == "start":
            total = int(event.get("epochs") or self.epochs.value())
            self.status_label.setText(f"Epoch {event.get('epoch')} of {total}"
                                      + (" (resumed)" if event.get("resumed") else ""))
        elif kind == "cache_fill":
            self.status_label.setText(f"Preparing image and report features: {event.get('done', 0):,} of "
                                      f"{event.get('total', 0):,}")
        elif kind == "step":
            self._on_step(event)
        elif kind == "epoch":
            self._on_epoch(event)
        elif kind == "encode":
            if not isinstance(event.get("eta_s"), (int, float)):  # not the training's last estimate
                self.eta_label.setText("")
            counts = (f": {event['done']:,} of {event['total']:,} cases"
                      if isinstance(event.get("done"), int) and isinstance(event.get("total"), int) else "")
            self.status_label.setText(f"Encoding the library with the new model{counts}…")
        elif kind == "evaluate":
            self.status_label.setText("Evaluating the new model on the held-out queries…")
        elif kind == "error":
            self._last_error = f"{event.get('item') or 'Training'}: {event.get('reason')}"
            self.message.show_message(self._last_error, "warning")
        elif kind == "done" and ("metrics" in event or "model_id" in event):
            self.last_done = event
            self.report.setHtml(format_report(event))
            self.activate_button.setEnabled(event.get("model_id") is not None and self.state.is_open)
        elif kind == "done":
            best = event.get("best_val_map")
            self.status_label.setText("Training " + ("stopped" if event.get("cancelled") else "finished")
                                      + (f" (best val mAP {best:.3f})" if isinstance(best, (int, float)) else "")
                                      + ". Registering, encoding and evaluating…")

    def _on_step(self, event: dict[str, Any]) -> None:
        loss = total_loss(event)
        if loss is None:
            return
        steps, step, epoch = event.get("steps"), event.get("step"), event.get("epoch")
        if all(isinstance(v, int) for v in (steps, step, epoch)):
            x = float((epoch - 1) * steps + step)
        else:
            x = float(len(self._losses) + 1)
        self._steps.append(x)
        self._losses.append(loss)
        self.loss_curve.setData(self._steps, self._losses)

    def _on_epoch(self, event: dict[str, Any]) -> None:
        loss = total_loss(event)
        if loss is not None and not self._losses:  # a run too short to report steps
            self._steps.append(float(event.get("step") or 1))
            self._losses.append(loss)
            self.loss_curve.setData(self._steps, self._losses)
        val = val_map_value(event.get("val_map"))
        if val is not None:
            self._val_epochs.append(float(event.get("epoch", len(self._val_epochs) + 1)))
            self._val_maps.append(val)
            self.map_curve.setData(self._val_epochs, self._val_maps)
        total = event.get("epochs") or self.epochs.value()
        self.status_label.setText(f"Epoch {event.get('epoch')} of {total} done"
                                  + (f" · validation mAP {val:.3f}" if val is not None else ""))

    def _on_finished(self, code: int, stopped: bool) -> None:
        elapsed = _duration(time.perf_counter() - self._started)
        self.eta_label.setText("")
        if self.last_done is not None and code == 0:
            self.status_label.setText(f"Finished in {elapsed}.")
        elif stopped:
            self.status_label.setText(f"Stopped after {elapsed}. Resume continues from the last checkpoint.")
        else:
            self.status_label.setText("Training failed.")
            reason = self._last_error or last_error_text(self.log_view.toPlainText())
            self.message.show_message(f"Training stopped with an error: {reason}", "error")
        self._update_enabled()
        self.trainingFinished.emit(self.last_done)

    def activate_trained_model(self) -> None:
        """Make the model of the finished run active, then encode what is not encoded yet (the
        training run registered it and encoded the library; cases imported since are added)."""
        library_tab = getattr(self.window(), "library_tab", None)
        if self.last_done is None or library_tab is None or self.last_done.get("model_id") is None:
            return
        job = library_tab.activate_model(self.last_done["model_id"], reencode=True)
        if job is None:
            return
        self.activate_button.setEnabled(False)
        job.succeeded.connect(lambda _r: self.modelActivated.emit())
        job.failed.connect(self.message.show_error)
        job.failed.connect(lambda _e: self.activate_button.setEnabled(True))

    # -- small helpers ------------------------------------------------------------------------
    def _clear_curves(self) -> None:
        self._steps, self._losses, self._val_epochs, self._val_maps = [], [], [], []
        self._step_counter = 0
        self.loss_curve.setData([], [])
        self.map_curve.setData([], [])

    def curve_points(self) -> tuple[int, int]:
        """(loss points, validation points) currently plotted."""
        return len(self._losses), len(self._val_maps)

    def _append_log(self, line: str) -> None:
        self.log_view.appendPlainText(line)

    def _update_enabled(self) -> None:
        running = self.process.is_running()
        self.start_button.setEnabled(self.state.is_open and not running)
        self.resume_button.setEnabled(self.state.is_open and not running and self.last_out is not None)
        self.stop_button.setEnabled(running)


def last_error_text(log: str) -> str:
    """The whole last error of a log, re-joined when the terminal wrapped it over several lines:
    from the last line starting with "error:" (or the last paragraph) to the end."""
    lines = [line.strip() for line in log.strip().splitlines()]
    if not lines:
        return "no message"
    start = next((i for i in range(len(lines) - 1, -1, -1)
                  if lines[i].lower().startswith(("error:", "traceback"))), None)
    if start is None:
        start = next((i + 1 for i in range(len(lines) - 1, -1, -1) if not lines[i]), 0)
    text = " ".join(line for line in lines[start:] if line)
    return text.removeprefix("error:").strip() or "no message"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
