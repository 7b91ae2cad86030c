"""Which archive to reach and how, without ever holding a password.

A target is a libpq service name (`radiology`: host, port, database, user and sslmode live in
~/.pg_service.conf or PGSERVICEFILE), a `postgresql://` URL, or a `key=value` connection string.
Passwords come only from libpq's own stores (~/.pgpass or PGPASSFILE, a service file) or from
certificate/GSSAPI authentication: a target that carries a password is refused, so it can never
reach the settings, a library, shell history or the process list. TLS is libpq's: `sslmode`,
`sslrootcert`, `sslcert`, `sslkey` in the target or the service file are passed through unchanged.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import conninfo

from medhash_app.core.errors import MedHashError

_SERVICE = re.compile(r"^[A-Za-z0-9_.-]+$")
APPLICATION = "medhash"


class ArchiveError(MedHashError):
    """The archive cannot be reached, is not an archive, or refused what was asked."""


def to_conninfo(target: str) -> str:
    """The libpq connection string for a URL, a key=value string or a bare service name."""
    target = (target or "").strip()
    if not target:
        raise ArchiveError("archive", "no archive given: a libpq service name or a postgresql:// URL")
    if target.startswith(("postgresql://", "postgres://")) or "=" in target:
        conn = target
    elif _SERVICE.match(target):
        conn = f"service={target}"
    else:
        raise ArchiveError(describe_target(target), "not a service name, a postgresql:// URL or a key=value string")
    try:
        params = conninfo.conninfo_to_dict(conn)
    except psycopg.ProgrammingError as exc:
        raise ArchiveError(describe_target(target), f"not a valid connection string ({_first_line(exc)})") from None
    if params.get("password"):
        raise ArchiveError(describe_target(target), "carries a password; put it in ~/.pgpass (or PGPASSFILE) or "
                           "use a libpq service file, so it is never stored or shown in clear")
    return conn


def describe_target(target: str) -> str:
    """The target for messages: without any password, user info or query string."""
    text = (target or "").strip()
    if text.startswith(("postgresql://", "postgres://")):
        scheme, _, rest = text.partition("://")
        rest = rest.split("?", 1)[0]
        host = rest.rsplit("@", 1)[-1]
        return f"{scheme}://{host}"
    if "=" in text:
        return " ".join(p for p in text.split() if not p.lower().startswith("password"))
    return text


def connect(target: str, *, autocommit: bool = False) -> psycopg.Connection:
    """An open connection (application_name=medhash); one clear ArchiveError when it fails."""
    conn = to_conninfo(target)
    try:
        return psycopg.connect(conn, autocommit=autocommit, application_name=APPLICATION, connect_timeout=15)
    except psycopg.OperationalError as exc:
        raise ArchiveError(describe_target(target), f"cannot connect ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
