"""`medhash serve`: a real server process on a private Unix socket answers `medhash search` exactly
as an in-process search would, only to this user, never on TCP, and goes away when idle."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medhash_app.core.serve.client import ask
from medhash_app.core.serve.folder import SOCKET_NAME, ServeFolderError, check_folder

NOBODY = 65534
# Runs one `medhash search`, then reports on stderr whether this process imported torch.
CLI_PROBE = """
import json, sys
from medhash_app.cli import main
sys.argv = ["medhash", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("PROBE " + json.dumps({"torch": "torch" in sys.modules, "code": code}), file=sys.stderr)
"""


def _folder() -> Path:
    """A short private folder (a socket path must stay under 108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="mhs-"))


def _env(folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MEDHASH_NO_SERVE"}
    # a server a fallback search starts on demand does not outlive the tests by long
    return {**env, "MEDHASH_SERVE_DIR": str(folder), "MEDHASH_SERVE_IDLE_TIMEOUT": "60", **extra}


@pytest.fixture()
def fresh_folder() -> Iterator[Path]:
    folder = _folder()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def pinned_code() -> Iterator[None]:
    """One source fingerprint for the test's servers and clients: others may edit this working tree
    while the tests run, which would (rightly) make a server stop. test_changed_sources_stop_the_server
    checks that with two different codes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDHASH_SERVE_CODE", "test-code")
        yield


def _start(folder: Path, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "medhash_app.core.serve", "--folder", str(folder), *args],
                            env=_env(folder), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = ask(folder, {"op": "ping"}, timeout=5) if (folder / SOCKET_NAME).exists() else None
        if answer and answer.get("ok"):
            return proc
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not answer within 60 s")


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    out, _ = proc.communicate(timeout=60)
    return out


def _cli(folder: Path, *args: str, **env: str) -> tuple[dict, dict]:
    """(the --json payload, {"torch": imported?, "code": exit code}) of one `medhash search` process."""
    done = subprocess.run([sys.executable, "-c", CLI_PROBE, "search", *args, "--json"], check=False, capture_output=True,
                          text=True, env=_env(folder, **env), timeout=600)
    probe = json.loads(done.stderr.rsplit("PROBE ", 1)[1])
    return json.loads(done.stdout), probe


def _same(served: dict, local: dict) -> None:
    """Equal except the timings, which no two runs share."""
    assert {**served, "timing_ms": None} == {**local, "timing_ms": None}


@pytest.fixture(scope="module")
def library(tiny_library: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy this module may change (the tiny library is shared with other tests)."""
    return Path(shutil.copytree(tiny_library, tmp_path_factory.mktemp("serve") / "library"))


@pytest.fixture(scope="module")
def server(library: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    folder = _folder()
    proc = _start(folder, "--library", str(library), "--idle-timeout", "600", "--device", "cpu")
    yield folder, proc
    _stop(proc)
    shutil.rmtree(folder, ignore_errors=True)


def test_search_through_the_socket_equals_the_in_process_search(server, library: Path, tiny_library: Path) -> None:
    folder, _ = server
    image = next((tiny_library.parent / "source").rglob("*.dcm"))
    for query in (["--text", "pleural effusion", "-k", "5"], ["--image", str(image), "-k", "5", "--target", "both"]):
        args = ["--library", str(library), *query, "--device", "cpu"]
        served, served_probe = _cli(folder, *args)
        local, local_probe = _cli(folder, *args, MEDHASH_NO_SERVE="1")
        assert served_probe == {"torch": False, "code": 0}  # the server answered; no torch here
        assert local_probe == {"torch": True, "code": 0}  # the same probe sees the in-process import
        assert len(served["hits"]) == 5
        _same(served, local)


def test_an_error_reads_the_same_through_the_socket(server, library: Path, tmp_path: Path) -> None:
    folder, _ = server
    args = ["--library", str(library), "--image", str(tmp_path / "missing.dcm"), "--device", "cpu"]
    served, served_probe = _cli(folder, *args)
    local, _ = _cli(folder, *args, MEDHASH_NO_SERVE="1")
    assert served_probe == {"torch": False, "code": 2}
    assert served == local and "missing.dcm" in served["item"]


def test_codes_changed_on_disk_are_picked_up(server, library: Path) -> None:
    folder, _ = server
    args = ["--library", str(library), "--text", "pleural effusion", "-k", "5", "--device", "cpu"]
    before, _ = _cli(folder, *args)
    top = before["hits"][0]["case_id"]
    with sqlite3.connect(library / "library.sqlite") as db:  # another process drops the top hit's codes
        assert db.execute("DELETE FROM codes WHERE case_id = ?", (top,)).rowcount > 0
    served, probe = _cli(folder, *args)
    local, _ = _cli(folder, *args, MEDHASH_NO_SERVE="1")
    assert probe["torch"] is False
    assert top not in [hit["case_id"] for hit in served["hits"]]
    _same(served, local)


def test_the_server_has_no_inet_socket(server) -> None:
    folder, proc = server
    pid = proc.pid
    sockets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    inodes = {link[len("socket:["):-1] for link in sockets if link.startswith("socket:[")}
    inet = set()
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if path.exists():
            inet |= {line.split()[9] for line in path.read_text().splitlines()[1:]}
    unix = {line.split()[6]: line.split()[-1] for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
            if len(line.split()) >= 8}
    assert inodes and not inodes & inet
    assert str(folder / SOCKET_NAME) in {unix.get(inode) for inode in inodes}
    assert (os.stat(folder / SOCKET_NAME).st_mode & 0o777, os.stat(folder).st_mode & 0o777) == (0o600, 0o700)


PEER_PROBE = """
import ctypes, json, os, socket, sys
os.setresgid({uid}, {uid}, 0)
os.setresuid({uid}, {uid}, 0)  # effective user nobody; the saved root lets fsuid go back to 0
if sys.argv[2] == "fsroot":
    ctypes.CDLL(None, use_errno=True).setfsuid(0)  # files as root, so the 0700 folder opens; peer is still nobody
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    conn.connect(sys.argv[1])
except PermissionError:
    print(json.dumps({{"connect": "PermissionError"}})); sys.exit()
conn.sendall(b'{{"op": "ping"}}\\n')
print(conn.makefile().readline())
"""


def test_another_user_is_refused(server) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run a client as another user (nobody)")
    folder, _ = server
    script = PEER_PROBE.format(uid=NOBODY)
    sock = str(folder / SOCKET_NAME)
    plain = subprocess.run([sys.executable, "-c", script, sock, "plain"], capture_output=True, text=True, timeout=60, check=False)
    assert plain.stdout, plain.stderr
    assert json.loads(plain.stdout) == {"connect": "PermissionError"}  # the 0700 folder stops it first
    peer = subprocess.run([sys.executable, "-c", script, sock, "fsroot"], capture_output=True, text=True, timeout=60, check=False)
    answer = json.loads(peer.stdout)
    assert answer["ok"] is False and f"user id {NOBODY}" in answer["error"]["reason"]  # SO_PEERCRED
    answer = ask(folder, {"op": "ping"})  # the server carries on for its own user (it says stale_code instead
    assert answer is not None and "error" not in answer  # of ok when someone edits the sources meanwhile)


def test_a_folder_open_to_others_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    done = subprocess.run([sys.executable, "-m", "medhash_app.cli", "serve", "--foreground"], check=False, capture_output=True,
                          text=True, env=_env(folder), timeout=120)
    assert done.returncode == 2
    assert "open to other users (mode 755)" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2  # the "serving on" line and the one-line reason
    with pytest.raises(ServeFolderError, match="open to other users"):
        ask(folder, {"op": "ping"})
    if os.getuid() == 0:
        os.chmod(folder, 0o700)
        os.chown(folder, NOBODY, NOBODY)
        with pytest.raises(ServeFolderError, match=f"belongs to user id {NOBODY}"):
            check_folder(folder, create=False)


def test_idle_timeout_exits_and_removes_the_socket(fresh_folder: Path) -> None:
    folder = fresh_folder
    proc = _start(folder, "--idle-timeout", "2")
    assert (folder / SOCKET_NAME).exists()
    assert proc.wait(timeout=60) == 0
    assert not (folder / SOCKET_NAME).exists()
    assert "idle for 2 s: exiting" in proc.stdout.read()


def test_a_stale_socket_is_replaced(fresh_folder: Path) -> None:
    folder = fresh_folder
    os.chmod(folder, 0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(folder / SOCKET_NAME))  # a server that died without removing its socket
    stale.close()
    os.chmod(folder / SOCKET_NAME, 0o600)
    assert ask(folder, {"op": "ping"}) is None  # nobody answers: the CLI searches in-process
    proc = _start(folder, "--idle-timeout", "60")
    assert ask(folder, {"op": "ping"})["pid"] == proc.pid
    assert ask(folder, {"op": "stop"})["ok"] is True
    assert proc.wait(timeout=60) == 0 and "replacing stale socket" in proc.stdout.read()
    assert not (folder / SOCKET_NAME).exists()


def test_a_search_with_no_server_starts_one_for_the_next(library: Path, fresh_folder: Path) -> None:
    folder = fresh_folder
    args = ["--library", str(library), "--text", "cardiomegaly", "-k", "3", "--device", "cpu"]
    first, probe = _cli(folder, *args)
    assert probe["torch"] is True  # searched in its own process
    deadline = time.monotonic() + 120
    answer = None
    while time.monotonic() < deadline and not (answer and answer.get("ok") and answer["libraries"]):
        time.sleep(0.5)
        answer = ask(folder, {"op": "ping"}, timeout=120)
    assert answer and answer["libraries"] == [str(library)]  # started detached, warmed this library
    second, probe = _cli(folder, *args)
    assert probe["torch"] is False
    _same(second, first)
    assert ask(folder, {"op": "stop"})["ok"] is True


def test_changed_sources_stop_the_server(fresh_folder: Path) -> None:
    folder = fresh_folder
    proc = _start(folder, "--idle-timeout", "60")
    os.environ["MEDHASH_SERVE_CODE"] = "edited"  # the client's sources differ from the server's
    try:
        assert ask(folder, {"op": "ping"}) == {"ok": False, "stale_code": True}
    finally:
        os.environ["MEDHASH_SERVE_CODE"] = "test-code"
    assert proc.wait(timeout=60) == 0 and "sources changed" in proc.stdout.read()
    assert not (folder / SOCKET_NAME).exists()
