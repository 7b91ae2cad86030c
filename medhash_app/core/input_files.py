"""Opening the files a user points at: regular files only, of bounded size.

A folder or manifest can name anything: a FIFO (`open` waits for a writer that never comes), a
link to /dev/zero (reading never ends), a huge sparse file. Every read of user input goes through
`open_input` or `input_size`, so such an entry fails with a reason instead of hanging the import.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from medhash_app.core.errors import ImageTooLargeError, UnsupportedFileError

MAX_INPUT_BYTES = 2 * 1024**3
"""Largest input file read (2 GiB). The pixel limit (100 M pixels, imaging.loader) bounds a decoded
image to about 600 MB (3 samples x 2 bytes); 2 GiB leaves room for any encoding and header, while
refusing files that could only exhaust memory or time."""

MAX_TEXT_BYTES = 16 * 1024**2
"""Largest sidecar report read (16 MiB): a long report is tens of kilobytes."""

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device such as /dev/zero"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
# Non-blocking so that a FIFO swapped in after the check cannot block `open`.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def check_input(path: str | Path, info: os.stat_result, max_bytes: int = MAX_INPUT_BYTES) -> int:
    """The size of a regular file of at most `max_bytes` (symlinks already followed by the stat);
    UnsupportedFileError for anything else, ImageTooLargeError over the limit."""
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise UnsupportedFileError(path, "this is a folder, not an image file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "a special file")
        raise UnsupportedFileError(path, f"not a regular file but {kind}; only regular files are read")
    if info.st_size > max_bytes:
        raise ImageTooLargeError(path, f"the file is {info.st_size:,} bytes, over the limit of {max_bytes:,} "
                                       "bytes for one input file")
    return info.st_size


def input_size(path: str | Path, max_bytes: int = MAX_INPUT_BYTES) -> int:
    """Size in bytes of the regular file `path` (links followed). OSError (missing, no permission)
    passes through for the caller to word."""
    return check_input(path, os.stat(path), max_bytes)


def open_input(path: str | Path, max_bytes: int = MAX_INPUT_BYTES) -> BinaryIO:
    """Open `path` for binary reading if it is (or links to) a regular file of at most
    `max_bytes`. Checked before opening (opening a device can have side effects) and again on the
    open handle (the path may have been swapped in between)."""
    input_size(path, max_bytes)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        check_input(path, os.fstat(fd), max_bytes)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str | Path, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The whole content of a regular file of at most `max_bytes`."""
    with open_input(path, max_bytes) as handle:
        return handle.read(max_bytes + 1)[:max_bytes]
