"""The model server's error text never reaches a chatter or an open endpoint.

The fake model echoes the request's ``Authorization`` header (the API key,
here a canary) in every error body, as some servers do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.api import LocalReply
from core.app import build_runtime
from core.channel import IncomingMessage
from core.chat import MODEL_DOWN_REPLY
from core.database import Database
from core.llm import llm_from_settings
from tests.conftest import LiveServer, make_settings
from tests.fake_llm import FakeLLM, dead_url

CANARY = "sk-canary-7f3a9c1e5b"


class TelegramLike(LocalReply):
    """A channel named like the Telegram adapter: its users are chatters."""

    name = "telegram"


def failing_fake(fake_llm: FakeLLM, how: str) -> None:
    fake_llm.echo_auth = True
    if how == "http":
        fake_llm.fail_status, fake_llm.fail_times = 500, -1
    elif how == "auth":
        fake_llm.fail_status, fake_llm.fail_times = 401, -1
    else:
        fake_llm.stream_error = True


@pytest.mark.parametrize("how", ["http", "auth", "stream"])
async def test_chatter_gets_a_neutral_line_and_the_admin_the_detail(
    tmp_path: Path, fake_llm: FakeLLM, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    failing_fake(fake_llm, how)
    settings = make_settings(
        tmp_path,
        llm_base_url=fake_llm.url,
        llm_api_key=CANARY,
        llm_max_retries=0,
        telegram_admin_id=1001,
    )
    db = Database(settings.db_path)
    await db.open()
    llm = llm_from_settings(settings)
    chat = build_runtime(settings, db, llm).chat
    try:
        chatter, admin = TelegramLike(), TelegramLike()
        await chat.handle(IncomingMessage("tg:5", "hello", user_id="5"), chatter)
        await chat.handle(IncomingMessage("tg:1001", "hello", user_id="1001"), admin)
    finally:
        await llm.aclose()
        await db.close()
    assert chatter.messages == [f"⚠️ {MODEL_DOWN_REPLY}"]
    assert fake_llm.url.rsplit("/", 1)[0] in admin.messages[0]  # the detail, for the admin
    assert all(CANARY not in m for m in chatter.messages + admin.messages)
    assert CANARY not in llm.status.detail
    # The model server's text is kept for the operator, with the key masked.
    assert "scripted failure" in caplog.text and CANARY not in caplog.text


def test_open_endpoints_never_show_the_upstream_body(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    failing_fake(fake_llm, "http")
    fake_llm.models_status = 503
    settings = make_settings(
        tmp_path, llm_base_url=fake_llm.url, llm_api_key=CANARY, llm_max_retries=0
    )
    server = live_server_factory(settings)
    reply = server.chat("canary", "hello")
    assert reply.status_code == 200 and CANARY not in reply.text
    server.call(lambda rt: rt.llm.probe())
    for path in ("/health", "/metrics", "/telegram/status", "/restart/status"):
        body = server.client.get(path).text
        assert CANARY not in body, path
        assert "scripted failure" not in body, path
    health = server.client.get("/health").json()
    assert health["checks"]["llm"]["code"] == "llm_unavailable"


async def test_a_reset_connection_is_reported_as_such(tmp_path: Path, fake_llm: FakeLLM) -> None:
    fake_llm.reset_after_chunks = 1
    fake_llm.reply = "one two three four"
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, llm_max_retries=0)
    llm = llm_from_settings(settings)
    try:
        with pytest.raises(Exception) as caught:
            await llm.complete([{"role": "user", "content": "hi"}])
    finally:
        await llm.aclose()
    assert "reset" in str(caught.value), caught.value
    assert "stopped answering" not in str(caught.value)
    assert llm.status.code == "llm_unavailable"


async def test_unreachable_model_gives_the_chatter_the_neutral_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, llm_base_url=dead_url(), llm_max_retries=0)
    db = Database(settings.db_path)
    await db.open()
    llm = llm_from_settings(settings)
    chat = build_runtime(settings, db, llm).chat
    try:
        chatter = TelegramLike()
        result = await chat.handle(IncomingMessage("tg:7", "hi", user_id="7"), chatter)
    finally:
        await llm.aclose()
        await db.close()
    assert chatter.messages == [f"⚠️ {MODEL_DOWN_REPLY}"]
    assert result.error_code == "llm_unavailable"


def test_a_failing_model_raises_one_alert_and_resolves_it(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Callable[..., LiveServer]
) -> None:
    from tests.processes import wait_for

    fake_llm.models_status, fake_llm.echo_auth = 503, True
    settings = make_settings(
        tmp_path, llm_base_url=fake_llm.url, llm_api_key=CANARY, health_check_interval_s=0.05
    )
    server = live_server_factory(settings)
    server.call(lambda rt: rt.llm.probe())

    def alert() -> Any:
        return server.runtime.monitoring.active.get("llm_unreachable")

    raised = wait_for(alert, 10, "the llm_unreachable alert")
    assert raised.severity == "high" and CANARY not in raised.message
    assert "llm_unavailable" in raised.message
    status = server.client.get("/resources/status").text
    assert "llm_unreachable" in status and CANARY not in status
    fake_llm.models_status = 200
    server.call(lambda rt: rt.llm.probe())
    wait_for(lambda: alert() is None, 10, "the alert to resolve")
    total = server.runtime.monitoring.raised_total["llm_unreachable"]
    assert total == 1
