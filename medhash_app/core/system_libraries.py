"""Can the desktop window open? The system libraries Qt's xcb platform plugin loads, checked
before Qt starts (no Qt import here).

When one of them is missing, Qt aborts the process (exit 134) naming libxcb-cursor0 whatever is
actually missing; checking each library first lets `medhash` say which Debian/Ubuntu packages
to install instead. The list is what PySide6's plugins/platforms/libqxcb.so and
lib/libQt6XcbQpa.so.6 / libQt6Gui.so.6 link against (`readelf -d ... | grep NEEDED`), less the C
and C++ runtimes every Python install already has.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from collections.abc import Callable, Mapping

# soname -> the Debian/Ubuntu package that ships it (same names on Debian 12 and Ubuntu 22.04+).
XCB_LIBRARIES: dict[str, str] = {
    "libxcb.so.1": "libxcb1",
    "libX11.so.6": "libx11-6",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libdbus-1.so.3": "libdbus-1-3",
}

Loader = Callable[[str], object]


def _load(soname: str) -> object:
    """dlopen the library the way Qt's plugin loader will (raises OSError when it cannot)."""
    return ctypes.CDLL(soname)


def uses_xcb(env: Mapping[str, str] | None = None, platform: str | None = None) -> bool:
    """Qt will try its xcb plugin first: Linux with QT_QPA_PLATFORM naming xcb first, or unset outside a
    Wayland session (in one, Qt 6 starts on its wayland plugin)."""
    env = os.environ if env is None else env
    if not (platform or sys.platform).startswith("linux"):
        return False
    first = env.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip()
    if first == "":
        return not (env.get("XDG_SESSION_TYPE") == "wayland" and env.get("WAYLAND_DISPLAY"))
    return first == "xcb"


def missing_libraries(load: Loader | None = None) -> list[str]:
    """The sonames of XCB_LIBRARIES that cannot be loaded, in the table's order."""
    load = load or _load
    missing = []
    for soname in XCB_LIBRARIES:
        try:
            load(soname)
        except OSError:
            missing.append(soname)
    return missing


def packages_for(sonames: list[str]) -> list[str]:
    """The distinct Debian/Ubuntu packages that ship `sonames`, in order."""
    return list(dict.fromkeys(XCB_LIBRARIES[s] for s in sonames if s in XCB_LIBRARIES))


def install_command(packages: list[str]) -> str:
    return "sudo apt-get install -y " + " ".join(packages)


def all_packages() -> list[str]:
    """Every package the window needs: the README's one-line system install."""
    return packages_for(list(XCB_LIBRARIES))


def window_problem(env: Mapping[str, str] | None = None, platform: str | None = None,
                   load: Loader | None = None) -> str | None:
    """One line saying why the window cannot open and how to fix it, or None when it can (or when
    Qt will not use xcb, e.g. QT_QPA_PLATFORM=offscreen)."""
    if not uses_xcb(env, platform):
        return None
    missing = missing_libraries(load)
    if not missing:
        return None
    packages = packages_for(missing)
    if shutil.which("apt-get") is None and not os.path.exists("/etc/debian_version"):
        return (f"the window cannot open: Qt's xcb platform needs {', '.join(missing)}, which this system "
                f"lacks; install them with your package manager (on Debian/Ubuntu: {install_command(packages)})")
    return (f"the window cannot open: Qt's xcb platform needs the system package(s) {' '.join(packages)} "
            f"(missing {', '.join(missing)}); install them with: {install_command(packages)}")
