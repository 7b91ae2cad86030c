"""The resident process: one MedHashSession per (library, device), answering searches over a Unix
socket until it has been idle for `idle_timeout` seconds.

One request at a time (searches share the encoder and the code caches anyway). A flock on
serve.lock makes it the folder's only server: a socket file found while holding the lock is stale
(its server died) and is replaced. Every connection's peer uid (SO_PEERCRED) must be this user's.
Codes changed on disk by another process are re-read by the session (SearchService.warm checks the
library's data_version), so a running server answers as a fresh process would.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from medhash_app.core.errors import MedHashError
from medhash_app.core.serve.folder import LOCK_NAME, SOCKET_NAME, ServeFolderError, check_folder, check_socket
from medhash_app.core.serve.protocol import code_fingerprint, peer_uid, receive, send

DEFAULT_IDLE_TIMEOUT_S = 900.0
REQUEST_TIMEOUT_S = 30.0  # a client that connects and says nothing does not hold the server


class AlreadyServing(MedHashError):
    """Another server holds the folder's lock."""


class SearchServer:
    """Bound and listening on construction; `serve_forever` answers until idle or stopped."""

    def __init__(self, folder: Path, idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S, device: str = "auto") -> None:
        check_folder(folder, create=True)
        self.folder, self.idle_timeout, self.device = folder, idle_timeout, device
        self.path = folder / SOCKET_NAME
        self._lock = _take_lock(folder / LOCK_NAME)
        self.code = code_fingerprint()
        self.sessions: dict[tuple[str, str], Any] = {}
        self._stop = False
        if check_socket(self.path):  # we hold the lock, so whoever made it is gone
            log(f"replacing stale socket {self.path}")
            self.path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mask = os.umask(0o177)  # the socket is 0600 from the moment it exists
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(mask)
        self._inode = os.stat(self.path).st_ino
        self.sock.listen(16)

    def warm(self, library: Path, device: str | None = None) -> None:
        """Open the library and load its model and codes now, so the first search is fast."""
        try:
            count = self._session(str(library), device or self.device).warm_up()
            log(f"warmed {library}: {count} codes")
        except MedHashError as exc:
            log(f"cannot warm {library}: {exc}")
        except Exception:  # noqa: BLE001 - a search will load what it needs (and report a real problem)
            log(f"cannot warm {library}:\n" + traceback.format_exc())

    def serve_forever(self) -> None:
        last = time.monotonic()
        while not self._stop:
            left = self.idle_timeout - (time.monotonic() - last)
            if left <= 0:
                log(f"idle for {self.idle_timeout:g} s: exiting")
                break
            self.sock.settimeout(left)
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                self._handle(conn)
            last = time.monotonic()

    def stop(self, *_: object) -> None:
        """SIGTERM/SIGINT: leave at once; `run` removes the socket on the way out."""
        raise SystemExit(0)

    def close(self) -> None:
        """Remove the socket (only if it is still ours), close the libraries, release the lock."""
        self.sock.close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()
        self._lock.close()

    # -- one connection -------------------------------------------------------------------------
    def _handle(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        try:
            conn.settimeout(REQUEST_TIMEOUT_S)
            request = receive(conn)  # read first even when refusing: unread data would reset the reply
            conn.settimeout(None)
            if uid != os.getuid():
                log(f"refused a connection from user id {uid}")
                send(conn, _error("serve", f"refused: user id {uid} is not the server's user ({os.getuid()})"))
            elif request is not None:
                send(conn, self._answer(request))
        except OSError as exc:  # the client went away or stalled; the server carries on
            log(f"connection dropped: {exc}")

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if request.get("code") != self.code:  # the sources changed since this server started
            log("the sources changed since this server started: stopping")
            self._stop = True
            return {"ok": False, "stale_code": True}
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "uid": os.getuid(), "socket": str(self.path),
                    "libraries": sorted({library for library, _ in self.sessions})}
        if op == "stop":
            self._stop = True
            return {"ok": True, "pid": os.getpid()}
        if op == "search":
            return self._search(request)
        return _error("op", f"unknown operation {op!r}")

    def _search(self, request: dict[str, Any]) -> dict[str, Any]:
        from medhash_app.core.search import SearchFilters, SearchQuery

        here = os.getcwd()
        try:
            fields = dict(request["query"])
            image, filters = fields.pop("image_path", None), fields.pop("filters", None) or {}
            query = SearchQuery(**fields, image_path=None if image is None else Path(image),
                                filters=SearchFilters(**filters))
            os.chdir(request.get("cwd") or "/")  # a relative query path reads (and is named) as in the CLI
            session = self._session(str(request["library"]), str(request.get("device") or self.device))
            return {"ok": True, "result": session.search(query, request.get("model")).to_dict()}
        except MedHashError as exc:
            return _error(exc.item, exc.reason, type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - logged; the client then searches in its own process
            log("search failed:\n" + traceback.format_exc())
            return {"ok": False, "internal": f"{type(exc).__name__}: {exc}"}
        finally:
            os.chdir(here)

    def _session(self, library: str, device: str) -> Any:
        from medhash_app.core.session import MedHashSession

        key = (library, device)
        if key not in self.sessions:
            self.sessions[key] = MedHashSession(library, device=device)
        return self.sessions[key]


def _error(item: str | None, reason: str, kind: str = "MedHashError") -> dict[str, Any]:
    return {"ok": False, "error": {"type": kind, "item": item, "reason": reason}}


def _take_lock(path: Path, wait_s: float = 2.0):
    """The folder's lock, waited for briefly (a server that is just stopping releases it)."""
    handle = open(path, "a+")  # noqa: SIM115 - held for the server's life
    os.chmod(path, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise AlreadyServing(path.parent, "a search server already runs for this folder") from None
            time.sleep(0.1)
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def log(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} medhash serve[{os.getpid()}]: {line}", file=sys.stderr, flush=True)


def run(folder: Path, idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S, libraries: list[Path] = (),
        device: str = "auto") -> int:
    """Serve until idle or SIGTERM/SIGINT; 0 also when another server already runs (nothing to do)."""
    try:
        server = SearchServer(folder, idle_timeout, device)
    except AlreadyServing as exc:
        log(str(exc))
        return 0
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    log(f"listening on {server.path} (idle timeout {idle_timeout:g} s)")
    try:
        for library in libraries:
            server.warm(library)
        server.serve_forever()
    finally:
        server.close()
    return 0


__all__ = ["DEFAULT_IDLE_TIMEOUT_S", "AlreadyServing", "SearchServer", "ServeFolderError", "run"]
