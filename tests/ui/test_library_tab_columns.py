"""The Library tab's tables show every column header whole (the first-launch screenshot showed the
models table's "mAP@all (longest code)" cut to "ıAP@all (longest code": the first columns took the room)."""

from __future__ import annotations

from PySide6.QtWidgets import QTableWidget


def test_every_library_table_header_fits_its_text(window) -> None:
    window.resize(1440, 860)
    window.tabs.setCurrentWidget(window.library_tab)
    tables = window.library_tab.findChildren(QTableWidget)
    assert tables
    for table in tables:
        header = table.horizontalHeader()
        for column in range(table.columnCount()):
            text = table.horizontalHeaderItem(column).text()
            needed = header.fontMetrics().horizontalAdvance(text) + 8
            assert header.sectionSize(column) >= needed, (table.accessibleName(), text)
