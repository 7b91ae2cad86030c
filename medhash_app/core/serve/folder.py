"""Where the server's socket lives and the checks that keep it private to the user.

The socket sits in a 0700 folder owned by the user ($XDG_RUNTIME_DIR/medhash, or <user cache>/serve
when there is no runtime folder; MEDHASH_SERVE_DIR overrides both). A folder or socket that another
user owns, or that group/other may enter, is refused: a socket there could be someone else's.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from medhash_app.core.errors import MedHashError

SOCKET_NAME = "serve.sock"
LOCK_NAME = "serve.lock"
LOG_NAME = "serve.log"
DIR_ENV = "MEDHASH_SERVE_DIR"
MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL


class ServeFolderError(MedHashError):
    """The server's folder or socket is not private to this user."""


def supported() -> bool:
    """Unix sockets with the kernel's peer credentials (Linux); elsewhere the CLI searches in-process."""
    import socket

    return hasattr(socket, "AF_UNIX") and hasattr(socket, "SO_PEERCRED")


def serve_folder() -> Path:
    """The folder for the socket (not created here)."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "medhash"
    import platformdirs  # pure Python, no heavy imports

    return Path(platformdirs.user_cache_dir("medhash")) / "serve"


def check_folder(folder: Path, *, create: bool) -> bool:
    """True when `folder` exists (made 0700 when `create`) and is private to this user; False when
    it is missing and not created. ServeFolderError when it belongs to another user or is open to others."""
    if create and not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        raise ServeFolderError(folder, "is not a folder (a link or a file); remove it so the server can make its own")
    _check_owner_mode(folder, info, "folder", "chmod 700")
    if len(str(folder / SOCKET_NAME).encode()) > MAX_SOCKET_PATH:
        raise ServeFolderError(folder, f"is too long a path for a Unix socket (over {MAX_SOCKET_PATH} bytes); "
                                       f"set {DIR_ENV} to a shorter folder")
    return True


def check_socket(path: Path) -> bool:
    """True when `path` is a socket private to this user, False when missing; ServeFolderError otherwise."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        raise ServeFolderError(path, "is not a socket; remove it")
    _check_owner_mode(path, info, "socket", "remove it")
    return True


def _check_owner_mode(path: Path, info: os.stat_result, what: str, fix: str) -> None:
    if info.st_uid != os.getuid():
        raise ServeFolderError(path, f"the server's {what} belongs to user id {info.st_uid}, not you "
                                     f"({os.getuid()}); refusing to use it")
    if info.st_mode & 0o077:
        raise ServeFolderError(path, f"the server's {what} is open to other users (mode "
                                     f"{stat.S_IMODE(info.st_mode):o}); {fix}")
