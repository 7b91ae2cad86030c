"""A real Orthanc PACS for the PACS tests: its own process, config, ports and storage folder.

Orthanc 1.10 (Debian 12) has no option to choose the address it binds; it is configured so that
only loopback peers get anything from it: the REST API refuses remote clients
("RemoteAccessAllowed": false) and DICOM peers other than the registered MedHash node at
127.0.0.1 are refused (no "DicomAlwaysAllow*", "DicomCheckModalityHost"). MedHash's own listener
binds 127.0.0.1 only. `.ci/run` installs the Debian packages `orthanc` and `orthanc-dicomweb`.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
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
    return None


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
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config()))
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([*_DIE_WITH_PARENT, "Orthanc", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT, cwd=self.folder)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start ({self.process.returncode}): {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/system", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s:g} s: {self.log_tail()}")

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
