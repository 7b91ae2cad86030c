"""A real Orthanc PACS for the PACS tests: its own process, config, ports and storage folder.

Orthanc 1.10 (Debian 12) has no option for the address it binds ("HttpBindAddresses" came in a
later release, and its DICOM server has none), so it runs with tests/loopback_bind.c preloaded: a
bind() to 0.0.0.0 or :: binds 127.0.0.1 or ::1 instead. The shim is compiled here with the system C
compiler; without one the PACS tests skip (they never run Orthanc on all interfaces). start() then
reads the listening sockets of the Orthanc process and fails if any is not on loopback. As a second
line, only loopback peers get anything from it: the REST API refuses remote clients
("RemoteAccessAllowed": false) and DICOM peers other than the registered MedHash node at 127.0.0.1
are refused (no "DicomAlwaysAllow*", "DicomCheckModalityHost"). MedHash's own listener binds
127.0.0.1 only. `.ci/run` installs the Debian packages `orthanc`, `orthanc-dicomweb` and `gcc`.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ORTHANC_AET = "ORTHANC"
DICOMWEB_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")


def orthanc_problem() -> str | None:
    """Why a real Orthanc cannot be started here, or None."""
    if shutil.which("Orthanc") is None:
        return "the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does it)"
    if dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    shim = loopback_shim()
    return shim if isinstance(shim, str) else None


LOOPBACK_SHIM_SOURCE = Path(__file__).with_name("loopback_bind.c")


@functools.cache
def loopback_shim() -> Path | str:
    """The compiled tests/loopback_bind.c (a temporary file, removed at exit), or why it cannot be built."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return ("no C compiler to build tests/loopback_bind.c, which keeps Orthanc on 127.0.0.1 "
                "(apt-get install gcc libc6-dev; .ci/run does it)")
    folder = Path(tempfile.mkdtemp(prefix="medhash-loopback-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    target = folder / "loopback_bind.so"
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(target), str(LOOPBACK_SHIM_SOURCE), "-ldl"],
                           capture_output=True, text=True, check=False)
    if built.returncode != 0 or not target.is_file():
        return f"tests/loopback_bind.c does not compile ({compiler}): {built.stderr.strip()[-300:]}"
    return target


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that process `pid` holds, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        for row in path.read_text().splitlines()[1:] if path.exists() else ():
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                found.add(_proc_address(local))
    return found


def _proc_address(field: str) -> tuple[str, int]:
    """/proc/net/tcp{,6} writes an address as 32-bit words in host (little-endian) order, then :port in hex."""
    address, port = field.split(":")
    raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
    return str(ipaddress.ip_address(raw)), int(port, 16)


def dicomweb_plugin() -> Path | None:
    for folder in DICOMWEB_PLUGIN_DIRS:
        path = Path(folder, "libOrthancDicomWeb.so")
        if path.is_file():
            return path
    return None


# Orthanc gets SIGKILL when the test process dies (no orphan PACS after a killed run): util-linux's
# setpriv sets the parent-death signal, then runs Orthanc (preexec_fn is unsafe with threads).
_DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL") if shutil.which("setpriv") else ()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    """start() runs `Orthanc <config.json>` and waits until its REST API answers; kill() ends it at
    once (a server that disappears), stop() politely."""

    def __init__(self, folder: Path, modalities: dict[str, dict[str, Any]] | None = None) -> None:
        self.folder = folder
        self.http_port, self.dicom_port = free_port(), free_port()
        self.modalities = modalities or {}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict[str, Any]:
        return {
            "Name": "MedHash test PACS", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": ORTHANC_AET, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "HttpServerEnabled": True, "DicomServerEnabled": True,
            "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True,
            "DicomModalities": {name: [m["aet"], "127.0.0.1", m["port"]] for name, m in self.modalities.items()},
            "DicomScuTimeout": 10, "DicomAssociationCloseDelay": 0, "ConcurrentJobs": 1,
            "Plugins": [str(dicomweb_plugin())], "HttpTimeout": 10,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": "127.0.0.1",
                         "Ssl": False},
            "StorageCompression": False, "SaveJobs": False, "LimitJobs": 4,
        }

    def start(self, timeout_s: float = 60.0) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        shim = loopback_shim()
        if not isinstance(shim, Path):  # never run Orthanc on all interfaces
            raise RuntimeError(f"Orthanc is not started: {shim}")  # noqa: TRY004 - a reason, not a type error
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config()))
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([*_DIE_WITH_PARENT, "Orthanc", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT, cwd=self.folder,
                                        env={**os.environ, "LD_PRELOAD": str(shim)})
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start ({self.process.returncode}): {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    self.check_loopback_only()
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s:g} s: {self.log_tail()}")

    def check_loopback_only(self) -> None:
        """Stop Orthanc and raise if it listens on anything but loopback, or not on both of its ports."""
        assert self.process is not None
        listening = listening_addresses(self.process.pid)
        exposed = sorted(a for a in listening if not ipaddress.ip_address(a[0]).is_loopback)
        ports = {port for _, port in listening}
        if exposed or not {self.http_port, self.dicom_port} <= ports:
            self.kill()
            raise RuntimeError(f"Orthanc must listen on loopback only, on ports {self.http_port} and "
                               f"{self.dicom_port}; it listened on {sorted(listening)}")

    def log_tail(self, lines: int = 15) -> str:
        path = self.folder / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def upload(self, path: Path) -> dict[str, Any]:
        """POST one DICOM file; Orthanc's answer (ID, Status "Success" / "AlreadyStored")."""
        response = requests.post(f"{self.url}/instances", data=path.read_bytes(), timeout=60)
        response.raise_for_status()
        return response.json()

    def store_to(self, modality: str, instance_id: str) -> requests.Response:
        """Ask Orthanc to C-STORE one instance to a registered modality and wait for the answer."""
        return requests.post(f"{self.url}/modalities/{modality}/store",
                             json={"Resources": [instance_id], "Synchronous": True}, timeout=120)

    def echo(self, modality: str) -> requests.Response:
        return requests.post(f"{self.url}/modalities/{modality}/echo", json={}, timeout=30)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def manifest_failures(dicom_dir: Path) -> set[str]:
    """Relative paths of the real DICOMs whose pixel data must fail to decode (manifest.tsv)."""
    lines = (dicom_dir / "manifest.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    column = header.index("decode_default")
    return {row.split("\t")[0] for row in lines[1:] if row.split("\t")[column].startswith("FAIL")}


def upload_all(orthanc: Orthanc, dicom_dir: Path) -> dict[str, str]:
    """Upload every real DICOM Orthanc takes; {Orthanc instance id: relative path of the file it kept}
    (files sharing a SOP Instance UID are kept once, the first one; a file without meta is refused)."""
    kept: dict[str, str] = {}
    for path in sorted(dicom_dir.rglob("*.dcm")):
        try:
            answer = orthanc.upload(path)
        except requests.HTTPError:
            continue
        if answer.get("Status") == "Success":
            kept[answer["ID"]] = str(path.relative_to(dicom_dir))
    return kept
