"""The CLI's side: ask a running server, or start one in the background. Standard library only,
so a search that a server answers never imports torch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from medhash_app.core.serve.folder import LOG_NAME, SOCKET_NAME, ServeFolderError, check_folder, check_socket
from medhash_app.core.serve.protocol import code_fingerprint, peer_uid, receive, send

CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 600.0  # a first search on a large library loads the model and every code


def ask(folder: Path, request: dict[str, Any], timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any] | None:
    """The server's answer, or None when no server answers (no socket, a stale one, a dropped
    connection). ServeFolderError when the folder, the socket or the server is not this user's."""
    if not check_folder(folder, create=False) or not check_socket(folder / SOCKET_NAME):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(CONNECT_TIMEOUT_S)
        try:
            conn.connect(str(folder / SOCKET_NAME))
        except OSError:  # refused (stale socket), timed out (a busy backlog) or gone meanwhile
            return None
        if peer_uid(conn) != os.getuid():
            raise ServeFolderError(folder / SOCKET_NAME, "the process behind the socket is another user's")
        conn.settimeout(timeout)
        try:
            send(conn, {**request, "code": code_fingerprint()})
            return receive(conn)
        except OSError:
            return None


def start_server(folder: Path, libraries: list[Path] = (), device: str = "auto",
                 idle_timeout: float | None = None) -> subprocess.Popen:
    """Start `python -m medhash_app.core.serve` detached (own session, no terminal); its output goes
    to serve.log in the folder. It warms up `libraries` and exits at once when a server already runs."""
    check_folder(folder, create=True)
    command = [sys.executable, "-m", "medhash_app.core.serve", "--folder", str(folder), "--device", device]
    command += [arg for library in libraries for arg in ("--library", str(library))]
    if idle_timeout is not None:
        command += ["--idle-timeout", str(idle_timeout)]
    fd = os.open(folder / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, start_new_session=True,
                                cwd="/")
    finally:
        os.close(fd)
