"""Refused admin tokens are counted and logged once a minute per address; the access log."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from core.audit import MAX_ADDRESSES, AuthAudit
from core.counter_buffer import CounterBuffer
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM

SECRET_TRY = "guessed-token-Zq81x"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "core.audit"]


def test_one_line_per_address_per_minute_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "core.audit")
    clock = Clock()
    counters = CounterBuffer()
    audit = AuthAudit(counters, clock=clock)
    for _ in range(5):
        audit.refused("10.0.0.1", "wrong token", "POST", "/api/chats/a/messages")
        clock.now += 1
    audit.refused("10.0.0.2", "no token", "GET", "/api/chats")
    assert len(audit_lines(caplog)) == 2  # one per address
    assert counters.value("vigil_auth_failures") == 6

    clock.now += 30
    assert audit.sweep() == 0  # the minute is not over: nothing told yet
    clock.now += 30
    assert audit.sweep() == 1  # 10.0.0.1's 4 held-back refusals
    lines = audit_lines(caplog)
    assert "4 more time(s) for 10.0.0.1" in lines[-1]
    audit.refused("10.0.0.1", "wrong token", "POST", "/x")  # within a minute of that line
    assert len(audit_lines(caplog)) == 3
    clock.now += 61
    audit.refused("10.0.0.1", "wrong token", "POST", "/x")
    assert "and 1 more refusal(s) not logged" in audit_lines(caplog)[-1]


def test_many_addresses_stay_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "core.audit")
    audit = AuthAudit(CounterBuffer(), clock=Clock())
    for n in range(MAX_ADDRESSES + 500):
        audit.refused(f"10.1.{n // 256}.{n % 256}", "wrong token", "GET", "/x")
    assert audit.addresses == MAX_ADDRESSES + 1  # the rest share one entry
    assert audit.counters.value("vigil_auth_failures") == MAX_ADDRESSES + 500
    lines = audit_lines(caplog)
    assert len(lines) == MAX_ADDRESSES + 1 and "for other addresses" in lines[-1]


def test_a_live_server_counts_and_logs_refusals_without_the_token(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bad = {"Authorization": f"Bearer {SECRET_TRY}"}
    for _ in range(3):  # the body guard
        r = httpx.post(f"{live_server.url}/api/chats/a/messages", json={"text": "x"}, headers=bad)
        assert r.status_code == 403
    for _ in range(2):  # check_admin on a route without a body
        r = httpx.post(f"{live_server.url}/resources/cleanup", headers=bad)
        assert r.status_code == 403
    r = httpx.get(f"{live_server.url}/sessions/report", headers=bad)
    assert r.status_code == 403
    metrics = httpx.get(f"{live_server.url}/metrics").text
    assert "vigil_auth_failures_total 6.0" in metrics
    lines = audit_lines(caplog)
    assert len(lines) == 1 and "127.0.0.1" in lines[0] and "wrong token" in lines[0]
    assert SECRET_TRY not in caplog.text


@pytest.mark.parametrize("enabled", [True, False])
def test_access_log_on_and_off(
    tmp_path: Path,
    fake_llm: FakeLLM,
    live_server_factory: Callable[..., LiveServer],
    enabled: bool,
) -> None:
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, access_log=enabled)
    server = live_server_factory(settings)
    assert httpx.get(f"{server.url}/health/live?token=query-secret-77").status_code == 200
    assert server.chat("bob", "hi").status_code == 200
    assert httpx.get(f"{server.url}/nope").status_code == 404
    server.stop()
    path = settings.logs_dir / "access.log"
    if not enabled:
        assert not path.exists()
        return
    lines = path.read_text().splitlines()
    assert any("127.0.0.1 GET /health/live 200 " in line and " ms" in line for line in lines)
    assert any("POST /api/chats/bob/messages 200" in line for line in lines)
    assert any("GET /nope 404" in line for line in lines)
    text = path.read_text()
    assert "query-secret-77" not in text and "test-token" not in text
