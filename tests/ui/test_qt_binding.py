"""Guard against a Qt binding that corrupts Python's reference counts.

PySide6 6.12.0 on Python 3.11 drops one reference to True on every signal emission and one to
None on every processEvents(); after a few hundred emissions the interpreter aborts with
"bool_dealloc: deallocating True". (Python 3.12+ makes True/None immortal, which hides it.)
"""

from __future__ import annotations

import sys

import pytest
from PySide6.QtCore import QObject, Signal

pytestmark = pytest.mark.skipif(sys.version_info >= (3, 12), reason="True/None are immortal on 3.12+")


class _Emitter(QObject):
    fired = Signal(object)


def test_signal_emission_keeps_the_refcount_of_true(qapp) -> None:
    emitter = _Emitter()
    seen: list[object] = []
    emitter.fired.connect(lambda value: seen.append(value))
    ballast = [True] * 10_000  # so a broken binding fails this assert instead of aborting Python
    before = sys.getrefcount(True)
    for _ in range(200):
        emitter.fired.emit(1)
    assert len(seen) == 200
    assert sys.getrefcount(True) >= before - 5, "this PySide6 build loses references to True on emit()"
    del ballast


def test_process_events_keeps_the_refcount_of_none(qapp) -> None:
    ballast = [None] * 10_000
    before = sys.getrefcount(None)
    for _ in range(200):
        qapp.processEvents()
    assert sys.getrefcount(None) >= before - 5, "this PySide6 build loses references to None"
    del ballast
