"""Anonymous bodies on every route that takes one: refused before they are read.

A real server process; its resident memory is read from ``/proc`` before and
after the attack.
"""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from core.app import create_app
from core.http import BODYLESS_METHODS
from tests.conftest import make_settings
from tests.fake_llm import FakeLLM
from tests.processes import vigil, vigil_env

pytestmark = pytest.mark.slow
BODY_MB = 16


def body_routes(tmp_path: Path) -> list[tuple[str, str]]:
    """(method, path) of every route that may read a body, path parameters filled in."""
    app = create_app(make_settings(tmp_path / "routes"))
    found = []
    for route in all_routes(app.routes):
        for method in sorted(route.methods - BODYLESS_METHODS):
            found.append((method, re.sub(r"\{[^}]+\}", "local:x", route.path)))
    return found


def all_routes(routes: list[Any]) -> list[APIRoute]:
    """Routes of the app and of every included router."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += all_routes(route.original_router.routes)
    return found


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def head(method: str, path: str, port: int, extra: str) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def status_of(sock: socket.socket) -> int:
    sock.settimeout(10)
    first = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(first.split()[1])


def test_anonymous_big_bodies_are_refused_unread(tmp_path: Path) -> None:
    routes = body_routes(tmp_path)
    assert ("POST", "/restart/force") in routes and len(routes) >= 4
    chunk = b"x" * 1048576
    with FakeLLM() as llm, vigil(tmp_path, vigil_env(tmp_path, llm.url), "serve") as server:
        pid = server.wait_live()["pid"]
        port = int(server.url.rsplit(":", 1)[1])
        before = rss_kb(pid)
        peak = before
        for method, path in routes:
            # A declared 100 MB body: answered before a byte of it is sent.
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(head(method, path, port, "Content-Length: 104857600\r\n"))
                assert status_of(sock) == 401, (method, path)
            # A chunked body of unknown size: the same.
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(head(method, path, port, "Transfer-Encoding: chunked\r\n"))
                assert status_of(sock) == 401, (method, path)
            # The whole body pushed anyway: the server must not keep it.
            with socket.create_connection(("127.0.0.1", port)) as sock:
                size = BODY_MB * len(chunk)
                sock.sendall(head(method, path, port, f"Content-Length: {size}\r\n"))
                with contextlib.suppress(OSError):  # closed on us after the 401
                    for _ in range(BODY_MB):
                        sock.sendall(chunk)
            peak = max(peak, rss_kb(pid))
        assert server.wait_live()["pid"] == pid
        grown_mb = (max(peak, rss_kb(pid)) - before) / 1024
        assert grown_mb < 5, f"RSS grew by {grown_mb:.1f} MB under anonymous bodies"
