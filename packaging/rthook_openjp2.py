"""PyInstaller runtime hook: glymur finds libopenjp2 with ctypes.util.find_library('openjp2'), which
searches the system only; point it at the copy bundled next to the other libraries when there is one
(reduced-resolution JPEG 2000 queries, docs/codecs.md). Without a bundled copy the system's is used."""

import ctypes.util
import os
import sys

_system_find_library = ctypes.util.find_library


def _find_library(name):
    if name == "openjp2":
        bundled = os.path.join(getattr(sys, "_MEIPASS", ""), "libopenjp2.so.7")
        if os.path.exists(bundled):
            return bundled
    return _system_find_library(name)


ctypes.util.find_library = _find_library
