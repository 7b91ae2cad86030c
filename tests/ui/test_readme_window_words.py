"""README's words about the window are the window's own: the first-launch demo offer and the
Library tab's case browser (README names the button and the sub-tab a new user looks for)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_names_the_demo_offer_and_the_case_browser_as_the_window_shows_them(
        qtbot, window, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    text = " ".join(README.read_text(encoding="utf-8").split())
    window.offer_first_run()
    tab = window.library_tab
    assert f'"{tab.demo_button.text()}" on the Library tab' in text  # "Build demo library"
    assert "~/.local/share/MedHash/demo-library" in text
    titles = [tab.sections.tabText(i) for i in range(tab.sections.count())]
    assert "Browse cases" in titles
    assert re.search(r'Library tab.s "Browse cases" is the case browser', text)
