"""ChatService: one turn at a time per chat, a global LLM limit, commands, admission."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.admission import AdjustableLimiter, Admission
from core.api import LocalReply
from core.app import build_runtime
from core.channel import IncomingMessage
from core.chat import ChatService, parse_command
from core.database import Database
from core.errors import Busy, Draining
from core.llm import LLMClient
from tests.conftest import make_settings
from tests.fake_llm import FakeLLM


@pytest.fixture
async def service(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[ChatService]:
    settings = make_settings(tmp_path, llm_base_url=fake_llm.url, llm_concurrency=2)
    db = Database(settings.db_path)
    await db.open()
    llm = LLMClient(base_url=fake_llm.url, model="fake", timeout_s=5)
    runtime = build_runtime(settings, db, llm)
    yield runtime.chat
    await runtime.chat.drain_background()
    await llm.aclose()
    await db.close()


def msg(chat: str, text: str) -> IncomingMessage:
    return IncomingMessage(chat_id=chat, text=text)


async def test_second_message_in_a_chat_waits_its_turn(
    service: ChatService, fake_llm: FakeLLM
) -> None:
    fake_llm.token_delay_s = 0.05
    first = asyncio.ensure_future(service.handle(msg("local:q", "first"), LocalReply()))
    await asyncio.sleep(0.02)
    second = asyncio.ensure_future(service.handle(msg("local:q", "second"), LocalReply()))
    await asyncio.sleep(0.02)
    assert service.pending("local:q") == 2
    results = await asyncio.gather(first, second)
    assert [r.reply for r in results] == ["echo: first", "echo: second"]
    history = await service.memory.history("local:q", limit=10)
    assert [t.content for t in reversed(history)] == [
        "first",
        "echo: first",
        "second",
        "echo: second",
    ]


async def test_global_llm_limit_holds_across_chats(service: ChatService, fake_llm: FakeLLM) -> None:
    fake_llm.token_delay_s = 0.05
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, service.limiter.active)
            await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(
        *(service.handle(msg(f"local:c{i}", "hi"), LocalReply()) for i in range(6))
    )
    watcher.cancel()
    assert peak == 2
    assert service.stats.turns == 6


async def test_queue_limit_refuses_politely(service: ChatService, fake_llm: FakeLLM) -> None:
    service.queue_limit = 1
    fake_llm.token_delay_s = 0.05
    running = asyncio.ensure_future(service.handle(msg("local:full", "one"), LocalReply()))
    await asyncio.sleep(0.02)
    with pytest.raises(Busy, match="too many messages waiting"):
        await service.handle(msg("local:full", "two"), LocalReply())
    await running


async def test_draining_and_throttling_refuse_new_turns_but_not_commands(
    service: ChatService,
) -> None:
    service.admission.throttle(retry_after=7, reason="cpu")
    with pytest.raises(Busy) as busy:
        await service.handle(msg("local:t", "hello"), LocalReply())
    assert busy.value.retry_after == 7
    service.admission.unthrottle()
    service.admission.start_draining(reason="forced")
    with pytest.raises(Draining):
        await service.handle(msg("local:t", "hello"), LocalReply())
    status = await service.handle(msg("local:t", "/help"), LocalReply())
    assert status.command == "help"


async def test_commands(service: ChatService) -> None:
    await service.handle(msg("local:cmd", "remember me"), LocalReply())
    reply = LocalReply()
    result = await service.handle(msg("local:cmd", "/reset"), reply)
    assert result.command == "reset"
    assert "forgotten" in reply.text
    assert (await service.memory.window("local:cmd")).turns == []
    assert "/reset" in (await service.handle(msg("local:cmd", "/help"), LocalReply())).reply
    assert (
        "Nothing folded" in (await service.handle(msg("local:cmd", "/summary"), LocalReply())).reply
    )
    assert (await service.handle(msg("local:cmd", "/status"), LocalReply())).reply
    unknown = await service.handle(msg("local:cmd", "/frobnicate"), LocalReply())
    assert "Unknown command /frobnicate" in unknown.reply
    assert len(await service.memory.history("local:cmd")) == 2  # commands are not stored


def test_parse_command() -> None:
    assert parse_command("/reset@VigilBot now") == ("reset", "now")
    assert parse_command("/HELP") == ("help", "")
    assert parse_command("hello /reset") == (None, "hello /reset")
    assert parse_command("/") == (None, "/")
    assert parse_command("/path/to/file is broken") == (None, "/path/to/file is broken")


async def test_adjustable_limiter_lowers_and_raises() -> None:
    limiter = AdjustableLimiter(3)
    await limiter.set_limit(1)
    order: list[str] = []

    async def job(name: str) -> None:
        async with limiter.slot():
            order.append(f"+{name}")
            await asyncio.sleep(0.01)
            order.append(f"-{name}")

    await asyncio.gather(job("a"), job("b"))
    assert order in (["+a", "-a", "+b", "-b"], ["+b", "-b", "+a", "-a"])


async def test_admission_wait_idle() -> None:
    admission = Admission()
    assert await admission.wait_idle(0.01) is True
    with admission.turn():
        assert await admission.wait_idle(0.01) is False
    assert await admission.wait_idle(0.01) is True
