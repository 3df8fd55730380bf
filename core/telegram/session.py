"""The Telegram session's owner and server: lock, server profile, key file.

Telethon-free. ``data/telegram.session`` belongs to one process: the server
holds :class:`SessionLock` (``data/telegram.session.lock``, an ``flock`` with
the holder's pid) for its lifetime; login and logout refuse while it is
held. :func:`server_profile` turns ``VIGIL_TELEGRAM_SERVER`` /
``VIGIL_TELEGRAM_SERVER_KEY`` / ``VIGIL_TELEGRAM_TEST_MODE`` into a
:class:`ServerProfile` (or one ``ConfigError`` line), and a small marker
file next to the session remembers which server the session was made for,
so switching servers asks for a logout instead of failing obscurely.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import ConfigError, Settings
from core.errors import ChannelError
from core.files import write_private

# Telegram's own test environment, DC 2 (Telethon's docs; port 80 also works).
TEST_SERVER = "2@149.154.167.40:443"
_SERVER_RE = re.compile(r"^(\d{1,3})@([^:@\s]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$")


class TelegramUnauthorized(ChannelError):
    """The session is not (or no longer) logged in."""

    code = "telegram_unauthorized"
    status = 503


class TelegramTimeout(ChannelError):
    """A Telegram call passed its deadline (it was cancelled; the connection is suspect)."""

    code = "telegram_timeout"
    status = 504


class SessionBusy(ChannelError):
    """Another process holds the Telegram session."""

    code = "telegram_session_busy"
    status = 409


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """Where the client connects: Telegram's production DCs, or one pinned DC."""

    dc_id: int | None = None
    host: str | None = None
    port: int | None = None
    key_pem: bytes | None = None
    key_path: str | None = None
    test_mode: bool = False

    @property
    def is_custom(self) -> bool:
        return self.host is not None

    @property
    def label(self) -> str:
        return f"{self.dc_id}@{self.host}:{self.port}" if self.is_custom else "production"

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.label,
            "dc": self.dc_id,
            "host": self.host,
            "port": self.port,
            "custom_key": self.key_pem is not None,
            "test_mode": self.test_mode,
        }


def parse_server(value: str, variable: str = "VIGIL_TELEGRAM_SERVER") -> tuple[int, str, int]:
    match = _SERVER_RE.match(value.strip())
    if not match or not 0 < int(match.group(3)) < 65536 or int(match.group(1)) < 1:
        raise ConfigError(
            f"{variable}: must be DC_ID@HOST:PORT such as 2@149.154.167.40:443 (got {value!r})"
        )
    return int(match.group(1)), match.group(2).strip("[]"), int(match.group(3))


def load_server_key(path: Path) -> bytes:
    """The PEM of an RSA public key in PKCS#1 form (what Telethon registers)."""
    import rsa  # Telethon's own dependency; imported here so config stays light

    name = "VIGIL_TELEGRAM_SERVER_KEY"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        if b"BEGIN RSA PUBLIC KEY" in data:
            key = rsa.PublicKey.load_pkcs1(data)
        else:
            key = rsa.PublicKey.load_pkcs1_openssl_pem(data)
    except Exception:  # rsa raises assorted ValueError/pyasn1 errors for bad input
        raise ConfigError(
            f"{name}: {path} is not a PEM RSA public key "
            "(expected -----BEGIN RSA PUBLIC KEY----- or -----BEGIN PUBLIC KEY-----)"
        ) from None
    return bytes(key.save_pkcs1())


def server_profile(settings: Settings) -> ServerProfile:
    """Validated server settings; raises ConfigError naming the variable."""
    key_pem = None
    key_path = None
    if settings.telegram_server_key is not None:
        key_pem = load_server_key(settings.telegram_server_key)
        key_path = str(settings.telegram_server_key)
    if settings.telegram_server:
        dc_id, host, port = parse_server(settings.telegram_server)
    elif settings.telegram_test_mode:
        dc_id, host, port = parse_server(TEST_SERVER)
    else:
        return ServerProfile(key_pem=key_pem, key_path=key_path)
    return ServerProfile(dc_id, host, port, key_pem, key_path, settings.telegram_test_mode)


# --- which server a session belongs to -------------------------------------------
def marker_path(session_path: Path) -> Path:
    return session_path.with_name(session_path.name + ".server")


def write_marker(session_path: Path, profile: ServerProfile) -> None:
    path = marker_path(session_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps({"server": profile.label, "test_mode": profile.test_mode}))


def session_server(session_path: Path) -> str | None:
    """The server label the session was made for (None: no session or no marker)."""
    if not session_path.exists() or session_path.stat().st_size == 0:
        return None
    try:
        data = json.loads(marker_path(session_path).read_text(encoding="utf-8"))
        return str(data["server"])
    except (OSError, ValueError, KeyError, TypeError):
        return "production"  # sessions made before the marker existed used production


def stored_address(session_path: Path) -> tuple[str, int] | None:
    """The server address Telethon stored in the session file (None: none, or unreadable)."""
    try:
        uri = f"file:{session_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as conn:
            row = conn.execute("SELECT server_address, port FROM sessions LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    return None if row is None or not row[0] else (str(row[0]), int(row[1]))


def check_session_server(session_path: Path, profile: ServerProfile) -> None:
    """Refuse a session made for another server, with what to do about it.

    A session without its marker (one whose first sign-in failed before the
    marker was written at connect) is judged by the address stored in it.
    """
    recorded = session_server(session_path)
    if (
        recorded is not None
        and recorded != profile.label
        and not marker_path(session_path).exists()
        and profile.is_custom
        and stored_address(session_path) == (profile.host, profile.port)
    ):
        write_marker(session_path, profile)  # it was made for this server after all
        recorded = profile.label
    if recorded is not None and recorded != profile.label:
        raise ConfigError(
            f"{session_path} was created for Telegram server {recorded}, but the configured "
            f"server is {profile.label} (VIGIL_TELEGRAM_SERVER / VIGIL_TELEGRAM_TEST_MODE). "
            "Log out first with scripts/telegram_logout.sh, or restore the old setting."
        )


def delete_session_files(session_path: Path) -> list[Path]:
    removed = []
    for path in (
        session_path,
        session_path.with_name(session_path.name + "-journal"),
        marker_path(session_path),
    ):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def prepare_session_file(session_path: Path) -> None:
    """Create the session file 0600 before SQLite does (and tighten an old one)."""
    session_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(session_path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(session_path, 0o600)


# --- one process owns the session ---------------------------------------------
class SessionLock:
    """An exclusive ``flock`` on ``<session>.lock``; the file holds the owner's pid."""

    def __init__(self, session_path: Path) -> None:
        self.path = session_path.with_name(session_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self, holder: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise SessionBusy(
                f"the Telegram session is in use by {owner}; stop the server first "
                "(scripts/stop.sh)",
                lock=str(self.path),
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder} (pid {os.getpid()})".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SessionLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
