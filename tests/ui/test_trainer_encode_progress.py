"""Trainer tab while the trained model encodes the library (issue 14): the time left is the encode's
own, never the training's last estimate left standing ("about 0 s left" through a 17-minute encode)."""

from __future__ import annotations


def test_the_time_left_follows_the_encode_not_the_finished_training(window) -> None:
    tab = window.trainer_tab
    tab.on_event({"event": "done", "epoch": 3, "best_val_map": 0.5, "checkpoint_dir": "best", "cancelled": False,
                  "eta_s": 0.0})
    assert tab.eta_label.text() == "about 0 s left"
    tab.on_event({"event": "encode", "model_id": 2})
    assert tab.eta_label.text() == ""
    tab.on_event({"event": "encode", "model_id": 2, "done": 0, "total": 3106, "eta_s": None})
    assert tab.eta_label.text() == "" and "0 of 3,106 cases" in tab.status_label.text()
    tab.on_event({"event": "encode", "model_id": 2, "done": 64, "total": 3106, "eta_s": 320.0})
    assert tab.eta_label.text() == "about 5 min left" and "64 of 3,106 cases" in tab.status_label.text()
