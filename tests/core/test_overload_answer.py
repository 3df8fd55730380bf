"""Past the request cap a real uvicorn answers Vigil's JSON 503, and says so once."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import httpx
import pytest
import uvicorn

from core.serving import OverloadWarnings, guarded_protocol
from tests.fake_llm import free_port

pytestmark = pytest.mark.slow  # a real server held at its cap for 1.5 s


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":  # keeps its task after the client has gone
        await asyncio.sleep(1.5)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _abandon_slow_request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # the request is being served when the client goes


def test_past_the_request_cap_the_answer_is_json_and_the_warning_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    error_log = logging.getLogger("uvicorn.error")
    for old in [f for f in error_log.filters if isinstance(f, OverloadWarnings)]:
        error_log.removeFilter(old)  # a fresh counter for this server
    port, limit = free_port(), 2
    config = uvicorn.Config(
        _app,
        host="127.0.0.1",
        port=port,
        http=guarded_protocol(limit=limit, head_timeout_s=5),
        limit_concurrency=limit,
        log_config=None,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        for _ in range(limit):
            _abandon_slow_request(port)
        with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
            answers = [httpx.get(f"http://127.0.0.1:{port}/fast", timeout=5) for _ in range(3)]
        assert {a.status_code for a in answers} == {503}
        assert answers[0].headers["content-type"] == "application/json"
        assert answers[0].headers["retry-after"] == "1"
        assert answers[0].json()["error"]["code"] == "overloaded"
        refused = [r for r in caplog.records if "request cap reached" in r.getMessage()]
        assert len(refused) == 1  # one line per interval, not one per request
        counter = next(f for f in error_log.filters if isinstance(f, OverloadWarnings))
        assert counter.total >= 3
        time.sleep(1.7)  # the abandoned requests end: served again
        assert httpx.get(f"http://127.0.0.1:{port}/fast", timeout=5).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
