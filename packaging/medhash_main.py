"""Entry point of the frozen MedHash bundle (PyInstaller runs this file as `__main__`).

A frozen app has no Python to hand `-m module` to, yet MedHash starts itself that way: the detached
search server (`sys.executable -m medhash_app.core.serve`, core/serve/client.py) and the training
process the Train tab runs (`sys.executable -m medhash_app.cli train ...`, ui/training_process.py).
So `medhash -m MODULE ARGS...` runs MODULE here as Python would. The desktop entry runs `medhash %f`:
a lone path to an existing file opens the window with that file as the query (`medhash --open FILE`).
Anything else is the `medhash` CLI.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import sys


def desktop_argv(argv: list[str]) -> list[str]:
    """`medhash /path/scan.dcm` (the desktop entry's `medhash %f`) -> `medhash --open /path/scan.dcm`."""
    if len(argv) == 2 and not argv[1].startswith("-") and os.sep in argv[1] and os.path.isfile(argv[1]):
        return [argv[0], "--open", argv[1]]
    return argv


def main() -> None:
    multiprocessing.freeze_support()  # DataLoader workers or spawn-based pools re-enter this executable
    if len(sys.argv) >= 3 and sys.argv[1] == "-m":
        module = sys.argv[2]
        sys.argv = [sys.argv[0], *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    sys.argv = desktop_argv(sys.argv)
    from medhash_app.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
