"""`python -m medhash_app.core.serve`: the detached server the CLI starts on demand (no typer, no Rich)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from medhash_app.core.errors import MedHashError
from medhash_app.core.serve.server import DEFAULT_IDLE_TIMEOUT_S, log, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m medhash_app.core.serve")
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S)
    parser.add_argument("--library", type=Path, action="append", default=[])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    try:
        return run(args.folder, args.idle_timeout, args.library, args.device)
    except MedHashError as exc:
        log(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
