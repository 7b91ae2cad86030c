"""The DICOM Storage SCP ("send to MedHash"): C-ECHO and C-STORE of any storage SOP class in any
transfer syntax, from the calling AE titles it is told to accept, on 127.0.0.1 unless told otherwise.

A C-STORE is answered only after the instance is a case (core/pacs/received.py): success when it
was added or was already there, failure 0xC000 "cannot understand" with the ingest's reason in the
Error Comment when it cannot be decoded, 0xA700 "out of resources" when the library cannot be
written. pynetdicom runs each association on its own thread; instances are stored one at a time.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medhash_app.core.errors import LibraryError, MedHashError
from medhash_app.core.ingest.decode import Decoder
from medhash_app.core.library import Library
from medhash_app.core.pacs.errors import PacsError
from medhash_app.core.pacs.received import Received, ReceivedStore

LOOPBACK = "127.0.0.1"
STATUS_SUCCESS, STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700
_ERROR_COMMENT_MAX = 64  # VR LO


@dataclass(frozen=True)
class ListenerConfig:
    """`accept_aets` empty: any calling AE title is accepted (still only from `host`'s network)."""

    library: Path
    aet: str = "MEDHASH"
    port: int = 11112
    host: str = LOOPBACK
    accept_aets: tuple[str, ...] = ()
    workers: int = 2  # decode worker processes; 1 decodes inline (a crashing decoder then stops the listener)
    tls_cert: Path | None = None  # DICOM TLS: this node's certificate chain (PEM) ...
    tls_key: Path | None = None  # ... and its private key
    tls_ca: Path | None = None  # when given, callers must show a certificate signed by this CA


def server_tls(config: ListenerConfig) -> ssl.SSLContext | None:
    """The TLS context of the listener (None: plain DICOM); PacsError naming the bad file. Client
    certificates are checked against `tls_ca` only, never the system's public CAs."""
    if config.tls_cert is None and config.tls_key is None and config.tls_ca is None:
        return None
    if config.tls_cert is None:
        raise PacsError("--tls-cert", "TLS needs this node's certificate (--tls-cert) and key (--tls-key)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise PacsError(config.tls_cert, f"this certificate and key cannot be used for TLS "
                                         f"({getattr(exc, 'strerror', None) or exc})") from exc
    if config.tls_ca is not None:
        try:
            context.load_verify_locations(cafile=config.tls_ca)
        except (ssl.SSLError, OSError) as exc:
            raise PacsError(config.tls_ca, f"this CA file cannot be read "
                                           f"({getattr(exc, 'strerror', None) or exc})") from exc
        context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: only holders of a certificate from this CA
    return context


@dataclass(frozen=True)
class ReceiveEvent:
    """One C-STORE's outcome, for the CLI's lines and the window's status (no UIDs, no names)."""

    calling_aet: str
    received: Received


@dataclass
class ListenerStatus:
    running: bool = False
    address: str = ""
    aet: str = ""
    added: int = 0
    duplicates: int = 0
    failed: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"running": self.running, "address": self.address, "aet": self.aet, "added": self.added,
                "duplicates": self.duplicates, "failed": self.failed, "last_error": self.last_error}


def status_dataset(code: int, comment: str | None = None) -> Dataset:
    """A C-STORE response status with an optional Error Comment (cut to the 64 characters LO allows, ASCII)."""
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment if len(comment) <= _ERROR_COMMENT_MAX else comment[:_ERROR_COMMENT_MAX - 3] + "..."
    return status


class StorageListener:
    """start() binds and serves in background threads; stop() closes the port and the library."""

    def __init__(self, config: ListenerConfig, on_event: Callable[[ReceiveEvent], None] | None = None) -> None:
        self.config = config
        self.on_event = on_event
        self.status = ListenerStatus(aet=config.aet, address=f"{config.host}:{config.port}")
        self._server = None
        self._library: Library | None = None
        self._decoder: Decoder | None = None
        self._store: ReceivedStore | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Open (or create) the library, then listen; PacsError when the address cannot be used."""
        _check_aet(self.config.aet, "--aet")
        for title in self.config.accept_aets:
            _check_aet(title, "--accept-aet")
        tls = server_tls(self.config)
        self._library = Library.open(self.config.library, create=True)
        self._decoder = Decoder(self.config.workers)
        self._store = ReceivedStore(self._library, self._decoder)
        try:
            self._server = self._make_ae().start_server(
                (self.config.host, self.config.port), block=False, ssl_context=tls,
                evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            self._close()
            raise PacsError(self.status.address, f"cannot listen there ({exc.strerror or exc}); choose another "
                                                 "port (--port) or stop the program that uses it") from exc
        self.status.address = "{}:{}".format(*self._server.server_address[:2])
        self.status.running = True

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.config.aet)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True  # a peer must address this node by its AE title
        if self.config.accept_aets:
            ae.require_calling_aet = list(self.config.accept_aets)
        return ae

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._close()
        self.status.running = False

    def _close(self) -> None:
        if self._decoder is not None:
            self._decoder.__exit__(None, None, None)
            self._decoder = None
        if self._library is not None:
            self._library.close()
            self._library = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_store(self, event: Any) -> Dataset:  # a pynetdicom Event
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception:  # noqa: BLE001 - the peer's bytes could not be put in a file: that instance fails
            return self._record(calling, Received("failed", None, "the received data set could not be encoded "
                                                                 "as a DICOM file"), STATUS_CANNOT_UNDERSTAND)
        try:
            outcome = self._store.store(data, {"via": "dicom-store", "calling_aet": calling})
        except LibraryError as exc:
            return self._record(calling, Received("failed", None, exc.reason), STATUS_OUT_OF_RESOURCES)
        except MedHashError as exc:
            return self._record(calling, Received("failed", None, exc.reason), STATUS_CANNOT_UNDERSTAND)
        return self._record(calling, outcome, STATUS_SUCCESS if outcome.ok else STATUS_CANNOT_UNDERSTAND)

    def _record(self, calling: str, outcome: Received, code: int) -> Dataset:
        with self._lock:
            if outcome.status == "added":
                self.status.added += 1
            elif outcome.status == "duplicate":
                self.status.duplicates += 1
            else:
                self.status.failed += 1
                self.status.last_error = outcome.reason
        if self.on_event is not None:
            self.on_event(ReceiveEvent(calling, outcome))
        return status_dataset(code, outcome.reason if code != STATUS_SUCCESS else None)


def _check_aet(title: str, option: str) -> None:
    """AE titles are 1-16 characters of printable ASCII without backslash (PS3.5 AE)."""
    text = title.strip()
    if not text or len(text) > 16 or not text.isascii() or "\\" in text or not text.isprintable():
        raise PacsError(option, f"an AE title is 1 to 16 printable ASCII characters, not {title!r}")
