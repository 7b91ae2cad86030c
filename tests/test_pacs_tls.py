"""DICOM TLS on the listener: with --tls-cert/--tls-key a TLS caller gets C-ECHO, a plain caller
does not get an association; with --tls-ca a caller without a certificate from that CA is refused.
Certificates are made here by the openssl command (the test skips without it)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medhash_app.core.errors import MedHashError
from medhash_app.core.pacs.listener import ListenerConfig, StorageListener
from tests.pacs_orthanc import free_port

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")

AET = "MEDHASH_TLS"


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture()
def certs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {name: _self_signed(tmp_path, name) for name in ("localhost", "modality", "stranger")}


def _listener(tmp_path: Path, certs, mutual: bool) -> StorageListener:
    cert, key = certs["localhost"]
    return StorageListener(ListenerConfig(library=tmp_path / "lib", aet=AET, port=free_port(), workers=1,
                                          tls_cert=cert, tls_key=key,
                                          tls_ca=certs["modality"][0] if mutual else None))


def _echo(port: int, tls: ssl.SSLContext | None) -> bool:
    ae = AE(ae_title="SCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title=AET, tls_args=(tls, "localhost") if tls else None)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def _client(certs, who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certs["localhost"][0])
    if who:
        context.load_cert_chain(*certs[who])
    return context


def test_tls_listener_answers_tls_callers_only(tmp_path: Path, certs) -> None:
    with _listener(tmp_path, certs, mutual=False) as listener:
        port = listener.config.port
        assert _echo(port, _client(certs, None))
        assert not _echo(port, None)


def test_mutual_tls_refuses_callers_without_the_ca_certificate(tmp_path: Path, certs) -> None:
    with _listener(tmp_path, certs, mutual=True) as listener:
        port = listener.config.port
        assert _echo(port, _client(certs, "modality"))
        assert not _echo(port, _client(certs, "stranger"))
        assert not _echo(port, _client(certs, None))


def test_unusable_certificate_is_one_clear_error(tmp_path: Path, certs) -> None:
    bad = tmp_path / "bad.crt"
    bad.write_text("not a certificate")
    config = ListenerConfig(library=tmp_path / "lib", aet=AET, port=free_port(), workers=1, tls_cert=bad,
                            tls_key=certs["localhost"][1])
    with pytest.raises(MedHashError, match="cannot be used for TLS") as caught:
        StorageListener(config).start()
    assert caught.value.item == str(bad)
