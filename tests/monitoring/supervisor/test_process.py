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
