"""Screenshots of the real window (run under a display, e.g. xvfb-run with QT_QPA_PLATFORM=xcb).

    xvfb-run -s "-screen 0 1600x1000x24" python -m medhash_app.ui.window_screenshots first-launch OUT.png
    xvfb-run -s "-screen 0 1600x1000x24" python -m medhash_app.ui.window_screenshots browser OUT.png --library LIB
    xvfb-run -s "-screen 0 1600x1000x24" python -m medhash_app.ui.window_screenshots search OUT.png --library LIB \
        --query FILE

`first-launch` expects an empty profile (HOME=$(mktemp -d)); `browser` opens LIB and shows the
Library tab's case browser as a thumbnail grid (`browser-list`: as a list); `light-live` switches
from the dark to the light theme while the window runs; `search` opens LIB and searches with the image
FILE (e.g. a chest DICOM in a fundus library: the out-of-domain warning above the results), then
with the report TEXT when `--text` is given; `--view grid` shows the results as a grid; with `--archive
TARGET` (and `--text`) the typed report is searched in that shared archive (docs/archive.md); with
`--archive` and no `--library`, the image FILE is searched there with the archive's own model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PySide6.QtCore import QTimer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("shot", choices=["first-launch", "browser", "browser-list", "browser-case", "light-live",
                                         "search"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--library", type=Path)
    parser.add_argument("--query", type=Path, help="image file the `search` shot searches with")
    parser.add_argument("--text", help="`search`: then search with this typed report instead")
    parser.add_argument("--archive", help="`search`: search this archive (service name or URL) with the typed "
                        "--text instead of the library (whose active model must be published there); without "
                        "--library, the --query image with the archive's own published model")
    parser.add_argument("--view", choices=["list", "grid"], default="list", help="`search`: results as")
    parser.add_argument("--theme", default="dark")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="give up (no file) after this long")
    args = parser.parse_args()

    from medhash_app.ui.app import make_application
    from medhash_app.ui.settings import AppSettings
    from medhash_app.ui.themes import apply_theme

    app = make_application(sys.argv[:1])
    settings = AppSettings()
    apply_theme(app, args.theme)
    from medhash_app.ui.main_window import MainWindow

    window = MainWindow(settings, device="cpu")
    window.resize(1500, 920)
    window.show()

    def save() -> None:
        app.processEvents()
        window.grab().save(str(args.out))
        window.shutdown()
        app.quit()

    if args.shot == "first-launch":
        window.offer_first_run()
        QTimer.singleShot(1500, save)
    elif args.shot == "search":  # the query's results (thumbnails given time to arrive)
        tab = window.search_tab
        tab.set_view_mode(args.view)
        pending = [args.text] if args.text else []

        def finished(*_: object) -> None:
            if pending:  # the image is shown; now search with the typed report instead
                tab.query.report_edit.setPlainText(pending.pop())
                tab.query.text_button.click()
                return
            QTimer.singleShot(4000, save)

        tab.searchFinished.connect(finished)
        if args.archive and args.library is None:  # no library: the archive's own model encodes the image
            tab.archive_bar.opened.connect(lambda _info: tab.query.load_file(args.query))
            tab.open_archive(args.archive, None)
        elif args.archive:  # library open -> archive open -> the typed report searched in the archive
            def open_archive() -> None:
                if window.state.session is not None and tab.archive_bar.client is None and pending:
                    tab.open_archive(args.archive, None)

            def type_report(_info: object) -> None:
                if pending:
                    tab.query.report_edit.setPlainText(pending.pop())
                    tab.query.text_button.click()

            window.state.changed.connect(open_archive)
            tab.archive_bar.opened.connect(type_report)
        else:
            window.state.changed.connect(lambda: window.state.session is not None and tab.query.load_file(args.query))
        if args.library is not None:
            window.open_library(args.library)
    elif args.shot == "light-live":  # start in the dark theme, switch to light while running
        QTimer.singleShot(800, lambda: window.set_theme("light"))
        QTimer.singleShot(2000, save)
    else:
        browser = window.library_tab.browser
        window.tabs.setCurrentWidget(window.library_tab)
        window.library_tab.sections.setCurrentWidget(browser)
        browser.set_view_mode("list" if args.shot == "browser-list" else "grid")
        if args.shot == "browser-case":  # double-click's case view of the first case
            def save_case() -> None:
                app.processEvents()
                browser.case_dialog.grab().save(str(args.out))
                window.shutdown()
                app.quit()

            def open_first(_page) -> None:
                browser.open_case(browser.model.cases[0])
                QTimer.singleShot(4000, save_case)

            browser.pageShown.connect(open_first)
        else:
            browser.pageShown.connect(lambda _page: QTimer.singleShot(4000, save))
        window.open_library(args.library)
    QTimer.singleShot(int(args.timeout_s * 1000), app.quit)
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(main())
