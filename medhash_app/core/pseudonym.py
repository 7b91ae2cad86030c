"""Keyed pseudonyms for what identifies a patient or a study: patient keys and DICOM UIDs.

Why a key that is not in the library: a salted hash whose salt sits in the same library.sqlite can
be reversed by trying candidate IDs (100,000 MRNs took 0.32 s). An HMAC-SHA256 under a secret key
cannot: without the key, every candidate is as likely as any other. The key is a random 256-bit
value in a file of the user's config folder (mode 0600), made on first use; it never goes into a
library, an export or a log. `MEDHASH_KEY_FILE` points at another file (a department's shared key).

Rules (docs/architecture.md, "What the library stores about patients"):
- patient key = HMAC(key, "patient" | library salt | sha256(salt + PatientID)[:16])[:32 hex]. The
  inner salted hash is the schema-1 key, so a schema-1 library is re-keyed in place (migration 1 -> 2)
  and keeps grouping old and new imports of a patient. The library salt keeps keys of two libraries
  on one workstation apart.
- UID pseudonym = HMAC(key, "uid" | library salt | UID)[:32 hex] (Study and SOP Instance UIDs).
- A library moved to a workstation with another key stays searchable, but new imports are keyed
  differently: the same patient gets another key there, so grouping new cases with old ones by
  patient (splits, "same patient") and matching captions by SOP Instance UID need the original key
  file (copy it, or set MEDHASH_KEY_FILE). The library stores the key's fingerprint to notice this.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from medhash_app.core.errors import MedHashError

KEY_ENV = "MEDHASH_KEY_FILE"
KEY_FILE_NAME = "pseudonym.key"
KEY_BYTES = 32
PSEUDONYM_HEX = 32
LEGACY_KEY_HEX = 16
_KEY_LINE = re.compile(r"^[0-9a-f]{64}$")
_HEADER = "# MedHash pseudonym key: keep it private; copy it only to workstations that share libraries.\n"


def default_key_file() -> Path:
    """The per-user key file: <user config dir>/MedHash/pseudonym.key."""
    from platformdirs import user_config_path

    return user_config_path("MedHash", "MedHash") / KEY_FILE_NAME


def key_file() -> Path:
    """$MEDHASH_KEY_FILE when set (a department's key), else the per-user file."""
    override = os.environ.get(KEY_ENV, "").strip()
    return Path(override).expanduser() if override else default_key_file()


def create_key_file(path: Path) -> bytes:
    """Write a new random key to `path` (mode 0600, folder 0700), never replacing an existing one:
    when another process made it first, its key is returned."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(KEY_BYTES)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(_HEADER + key.hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)  # atomic and never replaces: two first uses agree on one key
        except FileExistsError:
            return read_key_file(path)
        except OSError:  # a file system without hard links
            if path.exists():
                return read_key_file(path)
            os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return key


def read_key_file(path: Path) -> bytes:
    """The key in `path`; MedHashError naming the file when it is unreadable or not a key file."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "it is not a text file"
        raise MedHashError(path, f"the pseudonym key file cannot be read ({reason})") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) != 1 or not _KEY_LINE.match(lines[0]):
        raise MedHashError(path, "this is not a MedHash pseudonym key file (expected one line of 64 "
                                 "hexadecimal digits)")
    return bytes.fromhex(lines[0])


def load_key(path: Path | None = None) -> bytes:
    """The workstation's key, made on first use. A file named by MEDHASH_KEY_FILE must exist: a
    missing department key (an unmounted share) must not silently become a new one."""
    chosen = path or key_file()
    if chosen.exists():
        return read_key_file(chosen)
    if path is None and os.environ.get(KEY_ENV, "").strip():
        raise MedHashError(chosen, f"the pseudonym key file named by {KEY_ENV} does not exist; fix the "
                                   f"path, or unset {KEY_ENV} to use this user's own key")
    return create_key_file(chosen)


def legacy_patient_key(patient_id: object, salt: bytes) -> str | None:
    """Schema-1 key: sha256(salt + PatientID)[:16]. Only ever an input to the keyed pseudonym."""
    text = str(patient_id or "").strip()
    if not text:
        return None
    return hashlib.sha256(bytes(salt) + text.encode("utf-8")).hexdigest()[:LEGACY_KEY_HEX]


@dataclass(frozen=True)
class Pseudonymizer:
    """HMAC-SHA256 pseudonyms under the workstation key, separated per library by its salt.
    Picklable (decode workers get one)."""

    key: bytes
    salt: bytes

    def _mac(self, purpose: str, value: str) -> str:
        message = purpose.encode() + b"\0" + bytes(self.salt) + b"\0" + value.encode("utf-8")
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def patient(self, patient_id: object) -> str | None:
        legacy = legacy_patient_key(patient_id, self.salt)
        return self.rekey_patient(legacy) if legacy else None

    def rekey_patient(self, legacy_key: str) -> str:
        """The keyed patient key of a schema-1 (salted SHA-256) key."""
        return self._mac("patient", legacy_key)[:PSEUDONYM_HEX]

    def uid(self, uid: object) -> str | None:
        text = str(uid or "").strip()
        return self._mac("uid", text)[:PSEUDONYM_HEX] if text else None

    def export_id(self, kind: str, value: str, export_salt: bytes, length: int = 16) -> str:
        """A key for one export only (`export_salt` is random per export): not joinable with the
        library, with other exports, or with the original files' content hashes."""
        return hmac.new(self.key, f"export-{kind}".encode() + b"\0" + export_salt + b"\0" + value.encode(),
                        hashlib.sha256).hexdigest()[:length]

    def fingerprint(self) -> str:
        """Identifies the key for this library without revealing it (stored in the library)."""
        return self._mac("fingerprint", "")[:16]


def is_pseudonym(value: object) -> bool:
    """True for a value this module made (32 lower-case hex digits)."""
    return isinstance(value, str) and len(value) == PSEUDONYM_HEX and all(c in "0123456789abcdef" for c in value)
