"""Exactly once: every Telegram message is stored before its turn runs and answered once —
after downtime (catch-up), across a restart in the middle of a turn, and across replayed
updates. Real uvicorn, real SQLite, FakeLLM over HTTP, FakeTelegram at the client boundary."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from core.telegram.bot import STALE_REPLY
from core.telegram.session import server_profile
from tests.conftest import LiveServer, make_settings
from tests.core.telegram.test_app import ADA, EVE, settle, tg_settings, wait_until
from tests.fake_llm import FakeLLM
from tests.fake_telegram import FakeTelegram


def ledger_rows(server: LiveServer) -> list[tuple[int, int, str]]:
    rows = server.runtime.db.read_now(
        "SELECT chat_id, message_id, status FROM telegram_inbound ORDER BY message_id"
    )
    return [(r["chat_id"], r["message_id"], r["status"]) for r in rows]


def start(factory: Any, settings: Any, fake: FakeTelegram) -> LiveServer:
    server: LiveServer = factory(settings, telegram=fake.factory)
    wait_until(lambda: server.runtime.telegram.state == "connected")
    return server


def deliver(server: LiveServer, fake: FakeTelegram, text: str, **kwargs: Any) -> int:
    kwargs.setdefault("sender", ADA)
    msg = server.call(lambda rt: fake.deliver(text, **kwargs))
    return int(msg.id)


def quick(tmp_path: Path, fake_llm: FakeLLM) -> Any:
    return tg_settings(
        tmp_path, fake_llm, telegram_call_timeout_s=0.5, telegram_probe_timeout_s=0.3
    )


@pytest.mark.slow
def test_messages_sent_while_disconnected_are_caught_up_and_answered_once(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram()
    server = start(live_server_factory, quick(tmp_path, fake_llm), fake)
    fake.server.go_down()
    wait_until(lambda: server.runtime.telegram.state == "disconnected")
    for text in ("one", "two", "three"):
        deliver(server, fake, text)
    assert fake.texts(42) == []  # nobody is listening: the updates wait at Telegram
    fake.server.come_back()
    wait_until(lambda: len(fake.texts(42)) == 3, timeout=20)
    server.call(settle)
    assert fake.texts(42) == ["echo: one", "echo: two", "echo: three"]
    assert [status for *_, status in ledger_rows(server)] == ["answered"] * 3
    assert server.client.get("/telegram/status").json()["reconnects"] == 1


@pytest.mark.slow
def test_a_turn_cut_short_by_a_restart_is_answered_once_and_replays_are_not(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    settings = quick(tmp_path, fake_llm)
    fake = FakeTelegram()
    first = start(live_server_factory, settings, fake)
    deliver(first, fake, "first question")
    first.call(settle)
    assert fake.texts(42) == ["echo: first question"]

    fake_llm.stall_after_chunks, fake_llm.stall_s = 0, 2.0  # the model thinks...
    second_id = deliver(first, fake, "second question")
    wait_until(lambda: len(fake_llm.requests) == 2)
    first.call(_crash_turns)  # ...and the process dies in the middle of the turn
    assert ledger_rows(first)[-1] == (42, second_id, "pending")
    first.stop()
    asyncio.run(fake.deliver("third, while stopped", sender=ADA))  # waits at Telegram

    fake_llm.stall_after_chunks = None
    fake.session.pts = 0  # the update state was never saved: Telegram replays everything
    second = start(live_server_factory, settings, fake)
    wait_until(lambda: len(fake.texts(42)) == 3)
    second.call(settle)
    # Each answered once, each answer to its own question (whatever ran first).
    assert sorted(fake.texts(42)) == [
        "echo: first question",
        "echo: second question",
        "echo: third, while stopped",
    ]
    assert [status for *_, status in ledger_rows(second)] == ["answered"] * 3
    status = second.client.get("/telegram/status").json()["chats"]
    assert status["replayed_updates"] == 2 and status["resumed_turns"] == 1
    history = second.call(lambda rt: rt.memory.history("tg:42", limit=10))
    assert sorted(t.role for t in history) == ["assistant"] * 3 + ["user"] * 3
    assert len(fake_llm.requests) == 4  # the replayed first question never reached the model


async def _crash_turns(runtime: Any) -> None:
    """What a crash does to a turn: it stops where it is (no reply, nothing settled)."""
    bot = runtime.telegram_bot
    for task in list(bot._tasks):
        task.cancel()
    await asyncio.gather(*bot._tasks, return_exceptions=True)


@pytest.mark.slow
def test_messages_older_than_the_catch_up_limit_are_stored_not_answered(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram()
    server = start(live_server_factory, quick(tmp_path, fake_llm), fake)
    fake.server.go_down()
    wait_until(lambda: server.runtime.telegram.state == "disconnected")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    deliver(server, fake, "from two hours ago", date=long_ago)
    deliver(server, fake, "also old", date=long_ago + dt.timedelta(minutes=1))
    deliver(server, fake, "old, from a stranger", date=long_ago, chat_id=66, sender=EVE)
    deliver(server, fake, "just now")
    fake.server.come_back()
    wait_until(lambda: len(fake.texts(42)) == 2, timeout=20)
    server.call(settle)
    notice = STALE_REPLY.format(age="1 h")
    assert fake.texts(42) == [notice, "echo: just now"]  # one notice for the chat
    assert [status for *_, status in ledger_rows(server)] == [
        "stale",
        "stale",
        "refused",
        "answered",
    ]
    assert len(fake_llm.requests) == 1
    kept = server.runtime.db.read_now("SELECT status, payload FROM telegram_inbound")
    assert {r["status"]: bool(r["payload"]) for r in kept} == {
        "stale": True,  # stored, not answered
        "answered": True,
        "refused": False,  # a stranger's text is not kept
    }


def test_the_real_client_catches_up_and_has_deadlines(tmp_path: Path) -> None:
    from core.telegram.client import make_client

    settings = make_settings(
        tmp_path, telegram_api_id=1, telegram_api_hash="h", telegram_call_timeout_s=30
    )

    async def build() -> None:
        client = make_client(settings, server_profile(settings))
        try:
            # Telethon's own names: the real object, not a stand-in.
            assert client._catch_up is True  # missed updates are fetched on connect
            assert client._timeout == 10  # per network request, under the call deadline
            assert client._auto_reconnect is True
            assert client._connection_retries == 3 and client._retry_delay == 2
            assert client.flood_sleep_threshold == 0
        finally:
            client.session.close()

    asyncio.run(build())


def test_an_update_delivered_twice_is_answered_once(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram()
    server = start(live_server_factory, quick(tmp_path, fake_llm), fake)
    deliver(server, fake, "only once please")
    server.call(settle)
    fake.session.pts -= 1  # Telegram sends the last update again (a getDifference overlap)
    deliver(server, fake, "and this one")
    server.call(settle)
    assert fake.texts(42) == ["echo: only once please", "echo: and this one"]
    assert server.client.get("/telegram/status").json()["chats"]["replayed_updates"] == 1


def test_a_ledger_that_cannot_be_written_does_not_swallow_the_message(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram()
    server = start(live_server_factory, quick(tmp_path, fake_llm), fake)
    server.call(lambda rt: rt.db.write("DROP TABLE telegram_inbound"))
    deliver(server, fake, "still answered?")
    server.call(settle)
    assert fake.texts(42) == ["echo: still answered?"]
