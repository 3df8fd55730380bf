"""The supervisor's process plumbing: the liveness probe."""

from __future__ import annotations

import http.server
import logging
import socket
import threading

import pytest

from monitoring.supervisor.process import is_live


class _V6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_is_live_with_ipv6_urls(caplog: pytest.LogCaptureFixture) -> None:
    server = _V6Server(("::1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        assert is_live(f"http://[::1]:{port}/health/live", timeout=5) is True
        unbracketed = f"http://::1:{port}/health/live"
        with caplog.at_level(logging.ERROR, logger="monitoring.supervisor.process"):
            assert is_live(unbracketed, timeout=5) is False
            assert is_live(unbracketed, timeout=5) is False
    finally:
        server.shutdown()
        server.server_close()
    assert len([r for r in caplog.records if "::1" in r.getMessage()]) == 1


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_is_live_only_for_a_200() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert is_live(f"{base}/ok", timeout=5) is True
        assert is_live(f"{base}/busy", timeout=5) is False
    finally:
        server.shutdown()
        server.server_close()
    assert is_live(f"{base}/ok", timeout=5) is False  # nothing listens any more


@pytest.mark.parametrize("answer", [b"", b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 2000 OK\r\n"])
def test_is_live_is_false_for_a_silent_or_foreign_peer(answer: bytes) -> None:
    """A peer that accepts and says nothing (a hung loop's backlog) or something else."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def reply() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1024)
            if answer:
                conn.sendall(answer)
            else:
                conn.recv(1024)  # until the prober gives up and closes

    threading.Thread(target=reply, daemon=True).start()
    try:
        assert is_live(f"http://127.0.0.1:{port}/health/live", timeout=0.5) is False
    finally:
        listener.close()
