"""The test PACS listens on loopback only: Orthanc 1.10 has no option for its address, so
tests/pacs_orthanc.py preloads tests/loopback_bind.c (a wildcard bind() becomes a loopback one) and
checks the listening sockets of the Orthanc process. These tests check the shim, the check, and a
real Orthanc seen from this machine's network address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pacs_orthanc import Orthanc, listening_addresses, loopback_shim, orthanc_problem

needs_shim = pytest.mark.skipif(not isinstance(loopback_shim(), Path), reason=str(loopback_shim()))


def _network_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_listening_addresses_sees_a_wildcard_listener() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert ("0.0.0.0", port) in listening_addresses(os.getpid())
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6) as sock6:
            sock6.bind(("::", 0))
            sock6.listen()
            assert ("::", sock6.getsockname()[1]) in listening_addresses(os.getpid())


@needs_shim
def test_the_shim_turns_wildcard_binds_into_loopback() -> None:
    script = ("import socket\n"
              "s = socket.socket(); s.bind(('0.0.0.0', 0)); print(s.getsockname()[0])\n"
              "t = socket.socket(socket.AF_INET6); t.bind(('::', 0)); print(t.getsockname()[0])\n"
              "u = socket.socket(); u.bind(('127.0.0.1', 0)); print(u.getsockname()[0])\n")
    env = {**os.environ, "LD_PRELOAD": str(loopback_shim())}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["127.0.0.1", "::1", "127.0.0.1"]


@pytest.mark.skipif(orthanc_problem() is not None, reason=str(orthanc_problem()))
def test_orthanc_listens_on_loopback_only(tmp_path: Path) -> None:
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        assert server.process is not None
        assert listening_addresses(server.process.pid) == {("127.0.0.1", server.http_port),
                                                           ("127.0.0.1", server.dicom_port)}
        address = _network_address()
        for port in (server.http_port, server.dicom_port) if address else ():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, port), timeout=5).close()
    finally:
        server.stop()
