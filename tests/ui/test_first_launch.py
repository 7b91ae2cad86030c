"""First launch: the window offers the demo library; "New library…" makes the folder it is given."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog


def test_new_library_creates_the_folder_it_is_given(qtbot, window, tmp_path: Path, monkeypatch) -> None:
    """A folder picker cannot return a folder that does not exist yet; the dialog takes a new name."""
    target = tmp_path / "not" / "there" / "yet"
    seen = {}

    def fake_exec(dialog: QFileDialog) -> int:
        seen["mode"] = (dialog.fileMode(), dialog.acceptMode())
        return 1

    monkeypatch.setattr(QFileDialog, "exec", fake_exec)
    monkeypatch.setattr(QFileDialog, "selectedFiles", lambda self: [str(target)])
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: ""))  # the old picker
    with qtbot.waitSignal(window.state.changed, timeout=20_000):
        window.library_tab.choose_new_library()
    assert seen["mode"] == (QFileDialog.FileMode.AnyFile, QFileDialog.AcceptMode.AcceptSave)
    assert target.is_dir() and window.state.info.library_dir == target


def test_first_launch_offers_the_demo_library_from_its_hidden_folder(qtbot, window, tmp_path: Path,
                                                                      monkeypatch) -> None:
    from medhash_app.core.demo.location import default_demo_library
    from medhash_app.core.library import Library

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    folder = default_demo_library()
    assert folder.is_relative_to(tmp_path)
    tab = window.library_tab
    window.offer_first_run()
    assert window.tabs.currentWidget() is tab and tab.welcome_box.isVisible()
    assert tab.demo_button.text() == "Build demo library" and str(folder) in tab.welcome_label.text()
    Library.open(folder, create=True).close()  # as `medhash demo` leaves it
    window.offer_first_run()
    assert tab.demo_button.text() == "Open demo library"
    with qtbot.waitSignal(window.state.changed, timeout=60_000):
        tab.demo_button.click()
    assert window.state.info.library_dir == folder and not tab.welcome_box.isVisible()
    assert window.demo_action.text().replace("&", "") == "Open demo library"
