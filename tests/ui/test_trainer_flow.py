"""Trainer tab: one short epoch in a real `medhash train` process, live curves, then activation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medhash_app.ui.training_process import TrainOptions, parse_event, total_loss, val_map_value


def test_cli_arguments_and_event_parsing(tmp_path: Path) -> None:
    args = TrainOptions(library=tmp_path, method="mcph", bits=[32, 16], epochs=2, backbone="tiny",
                        components={"quantization": False, "contrastive": True}).to_args()
    assert args[:3] == ["-m", "medhash_app.cli", "train"]
    assert args[args.index("--bits") + 1] == "16,32"
    assert args[args.index("--components") + 1] == "contrastive=on,quantization=off"
    assert "--no-activate" in args and args[args.index("--progress") + 1] == "jsonl"
    assert parse_event('{"event": "step", "losses": {"total": 1.5}}')["event"] == "step"
    assert parse_event("Loading weights…") is None and parse_event('{"no": "event"}') is None
    assert total_loss({"losses": {"a": 1.0, "b": 2.0}}) == 3.0
    assert val_map_value({"bits": 32, "i2t": 0.4, "t2i": 0.6}) == pytest.approx(0.5)
    assert val_map_value({"bits": 32, "i2t": 0.4, "t2i": 0.6, "mean": 0.55}) == 0.55


@pytest.mark.shared_data
def test_train_one_epoch_from_the_tab_then_make_it_active(qtbot, open_library, window, demo_library: Path,
                                                           tmp_path: Path) -> None:
    library = tmp_path / "library"
    shutil.copytree(demo_library, library, ignore=shutil.ignore_patterns("indexes"))
    open_library(window, library)
    old_model = window.state.info.model["id"]
    tab = window.trainer_tab
    window.tabs.setCurrentWidget(tab)
    tab.backbone.setCurrentIndex(tab.backbone.findData("tiny"))
    tab.device.setCurrentIndex(tab.device.findData("cpu"))
    tab.epochs.setValue(1)
    for bits, box in tab.bits_boxes.items():
        box.setChecked(bits == 16)
    with qtbot.waitSignal(tab.trainingFinished, timeout=300_000) as blocker:
        assert tab.start_training()
        assert tab.stop_button.isEnabled() and not tab.start_button.isEnabled()
    done = blocker.args[0]
    assert done is not None, tab.log_view.toPlainText()[-2000:]
    assert done["model_id"] != old_model
    loss_points, val_points = tab.curve_points()
    assert loss_points >= 1 and val_points == 1
    _, maps = tab.map_curve.getData()
    assert 0.0 < maps[0] <= 1.0
    assert "mAP@all" in tab.report.toHtml() and "image → report" in tab.report.toPlainText()
    assert window.state.info.model["id"] == old_model  # not active until the user says so
    assert tab.activate_button.isEnabled()
    with qtbot.waitSignal(window.library_tab.encodeFinished, timeout=120_000):
        tab.activate_button.click()
    qtbot.waitUntil(lambda: window.state.info.model["id"] == done["model_id"], timeout=20_000)
    assert "16 bits" in window.model_label.text()


@pytest.mark.parametrize(("method", "switch"), [("mcph", "vpl"), ("tripah", "triview"), ("prompthash", "agsf")])
def test_each_method_offers_its_own_ablation_switches(qtbot, window, tmp_path: Path, method: str, switch: str) -> None:
    """The paper's ablation switches (Tables 3-4 of MCPH, IV of TriPAH, PromptHash's) reach the command line."""
    from medhash_app.core.training import method_switches

    tab = window.trainer_tab
    qtbot.waitUntil(lambda: len(tab._registry) > 1, timeout=60_000)  # the registry loads off the GUI thread
    tab.method.setCurrentIndex(tab.method.findData(method))
    assert set(tab.component_boxes) == set(method_switches()[method])
    assert switch in tab.component_boxes and tab.component_boxes[switch].isChecked()
    tab.component_boxes[switch].setChecked(False)
    window.state.info.library_dir = tmp_path
    args = tab.options().to_args()
    assert args[args.index("--method") + 1] == method
    assert f"{switch}=off" in args[args.index("--components") + 1].split(",")


def test_a_method_registered_later_appears_in_the_tab(qtbot, window) -> None:
    """The method list follows the trainer's registry, not only the four methods the tab knows by name."""
    tab = window.trainer_tab
    qtbot.waitUntil(lambda: len(tab._registry) > 1, timeout=60_000)
    registry = {**tab._registry, "newhash": {"contrastive": True, "quantization": True}}
    tab._on_registry(registry)
    index = tab.method.findData("newhash")
    assert index >= 0 and tab.method.itemText(index) == "newhash"
    assert tab.method.model().item(index).isEnabled()
    tab.method.setCurrentIndex(index)
    assert set(tab.component_boxes) == {"contrastive", "quantization"}
    tab._on_registry(registry)  # a second registry read adds no duplicate
    assert [tab.method.itemData(i) for i in range(tab.method.count())].count("newhash") == 1


def test_the_report_puts_a_collapsed_domain_warning_above_the_numbers() -> None:
    from medhash_app.ui.trainer_tab import format_report

    done = {"model_id": 3, "checkpoint": "/x", "metrics": {"i2t@64": {"map_all": 0.6}},
            "warnings": ["chest: 216 images share 1 distinct 64-bit code(s) <so> ..."]}
    page = format_report(done)
    assert page.index("Warning:") < page.index("<table")
    assert "216 images share 1 distinct" in page and "&lt;so&gt;" in page  # escaped, not markup
    assert "Warning:" not in format_report({**done, "warnings": []})


def test_a_failed_run_shows_the_whole_error(window) -> None:
    """The error bar shows the whole reason even when the terminal wrapped it over two lines."""
    tab = window.trainer_tab
    tab.log_view.appendPlainText("Loading…")
    tab.log_view.appendPlainText("error: library: only 12 cases have labels; training needs at least")
    tab.log_view.appendPlainText("20")
    tab._on_finished(2, False)
    assert "only 12 cases have labels; training needs at least 20" in tab.message.text()
    tab.on_event({"event": "error", "item": "library", "reason": "only 3 cases have labels; training needs at least 20"})
    tab.log_view.appendPlainText("20")
    tab._on_finished(2, False)
    assert tab.message.text().endswith("library: only 3 cases have labels; training needs at least 20")


def test_the_log_shows_the_command_with_train(window, tmp_path: Path, monkeypatch) -> None:
    tab = window.trainer_tab
    (tmp_path / "lib").mkdir()
    window.state.info.library_dir = tmp_path / "lib"
    monkeypatch.setattr(type(window.state), "is_open", property(lambda self: True))
    monkeypatch.setattr(tab.process, "start", lambda options, python=None: None)
    assert tab.start_training()
    monkeypatch.undo()  # the window closes with no library open
    first = tab.log_view.toPlainText().splitlines()[0]
    assert first.startswith("$ medhash train --library ")
