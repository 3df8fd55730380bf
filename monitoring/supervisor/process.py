"""The supervisor's view of a child process: death with the parent, liveness, memory.

Linux plumbing (``prctl``, ``/proc``) and one HTTP request; the decisions
about what to do with what these report are in ``policy.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1
log = logging.getLogger(__name__)


def read_rss_mb(pid: int, proc: Path = Path("/proc")) -> float | None:
    """Resident memory of ``pid`` from ``/proc/<pid>/statm``; None when unknown."""
    try:
        fields = (proc / str(pid) / "statm").read_text().split()
        return round(int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576, 1)
    except (OSError, ValueError, IndexError):
        return None


_BAD_LIVE_URLS: set[str] = set()


def is_live(url: str, *, timeout: float) -> bool:
    """True when ``url`` answers 200; a URL that cannot be parsed is never live.

    One plain HTTP/1.1 GET over a socket, reading only the status line:
    ``http.client`` would bring TLS and email parsing into a process that
    only ever asks its own server on loopback.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError for an unbracketed IPv6 host (http://::1:8080)
    except ValueError as exc:
        if url not in _BAD_LIVE_URLS:  # polled every few seconds: say it once
            _BAD_LIVE_URLS.add(url)
            log.error("cannot check %s: %s (IPv6 hosts need [brackets])", url, exc)
        return False
    host = parts.hostname or "127.0.0.1"
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
    ).encode("ascii", "replace")
    try:
        with socket.create_connection((host, port or 80), timeout=timeout) as conn:
            conn.sendall(request)
            head = b""
            while b"\r\n" not in head and len(head) < 256:
                chunk = conn.recv(256)
                if not chunk:
                    break
                head += chunk
    except OSError:
        return False
    status = head.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1] == b"200"


def die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets SIGTERM if the supervisor dies (Linux).

    Without it, a supervisor killed with SIGKILL (OOM killer, kill -9) would
    leave a server holding the port and the next start would fail.
    """

    def arm() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return arm
