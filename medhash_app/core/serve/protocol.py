"""The wire format: one JSON object per line each way, and the peer check on every connection.

A request names the code it was written by (`code`: a fingerprint of the installed sources), so a
server started before an upgrade or an edit does not answer with old code; it stops instead.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

MAX_LINE = 1 << 20  # a request is small; a response (k hits with reports) stays well under this
_PACKAGES = (Path(__file__).resolve().parents[1], Path(__file__).resolve().parents[3] / "trainer")


def code_fingerprint() -> str:
    """Count, newest mtime and total size of the sources the server runs (medhash_app.core, trainer);
    MEDHASH_SERVE_CODE replaces it (tests pin it while others edit the same working tree)."""
    if os.environ.get("MEDHASH_SERVE_CODE"):
        return os.environ["MEDHASH_SERVE_CODE"]
    count = newest = size = 0
    for root in _PACKAGES:
        for folder, _, files in os.walk(root):
            for name in files:
                if name.endswith(".py"):
                    info = os.stat(os.path.join(folder, name))
                    count, newest, size = count + 1, max(newest, info.st_mtime_ns), size + info.st_size
    return f"{count}-{newest}-{size}"


def peer_uid(conn: socket.socket) -> int:
    """The connecting process's user id, as the kernel recorded it at connect() (SO_PEERCRED)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message, default=str, ensure_ascii=False).encode() + b"\n")


def receive(conn: socket.socket) -> dict[str, Any] | None:
    """One line read and parsed; None when the peer closed first or sent something that is not JSON."""
    buffer = bytearray()
    while not buffer.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
        if len(buffer) > MAX_LINE * 16:
            return None
    try:
        message = json.loads(buffer)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
