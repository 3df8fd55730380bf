"""The gateway never waits on Telegram for good and notices a connection that delivers nothing.

Tested at the FakeTelegram boundary: calls that hang forever, a server that
goes down, a dropped connection and a dead update task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.telegram.bot import TgMessage
from core.telegram.gateway import TelegramGateway
from core.telegram.liveness import Signals, judge, next_backoff
from core.telegram.session import ServerProfile, TelegramTimeout
from tests.conftest import LiveServer, make_settings
from tests.core.telegram.test_app import tg_settings, wait_until
from tests.fake_llm import FakeLLM
from tests.fake_telegram import FakeTelegram


def gateway_settings(tmp_path: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "telegram_probe_interval_s": 0.05,
        "telegram_probe_timeout_s": 0.2,
        "telegram_call_timeout_s": 0.3,
    }
    values.update(overrides)
    return make_settings(tmp_path, **values)


async def reach(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Wait for ``predicate``; the limit only keeps a broken test from hanging."""
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_call_that_hangs_forever_times_out_as_a_failure(tmp_path: Path) -> None:
    fake = FakeTelegram()
    gateway = TelegramGateway(gateway_settings(tmp_path), fake, profile=ServerProfile())
    await gateway.start()
    await reach(lambda: gateway.state == "connected")
    fake.server.hang("send_message")
    with pytest.raises(TelegramTimeout, match=r"timed out after 0\.3 s"):
        await asyncio.wait_for(gateway.send_text(42, "hello", []), 10)
    assert gateway.status()["timeouts"] == 1
    assert gateway.status()["last_error"] == "Telegram call timed out after 0.3 s"
    await gateway.stop()


async def test_a_hanging_probe_never_hangs_supervision(tmp_path: Path) -> None:
    fake = FakeTelegram()
    gateway = TelegramGateway(gateway_settings(tmp_path), fake, profile=ServerProfile())
    await gateway.start()
    await reach(lambda: gateway.state == "connected")
    fake.server.hang("get_me")  # Telethon's reconnect window: the probe never returns
    await reach(lambda: gateway.state != "connected")
    assert gateway.status()["timeouts"] >= 1
    fake.server.unhang()
    await reach(lambda: gateway.state == "connected")
    await gateway.send_text(42, "back", [])
    assert fake.texts(42) == ["back"]
    await gateway.stop()


# --- liveness, judged from what is cheap to see ------------------------------------------
def signals(**overrides: Any) -> Signals:
    values: dict[str, Any] = {
        "now": 1000.0,
        "is_connected": True,
        "is_receiving": True,
        "last_ok_call_at": 990.0,
        "last_update_at": None,
        "connected_since": 900.0,
    }
    values.update(overrides)
    return Signals(**values)


@pytest.mark.parametrize(
    ("overrides", "verdict"),
    [
        ({}, "ok"),
        ({"is_connected": False}, "disconnected"),
        ({"is_receiving": False}, "deaf"),
        ({"is_suspect": True}, "probe"),  # a call just failed: probe now, not in a minute
        ({"last_ok_call_at": 930.0}, "probe"),  # no sign of life for a probe interval
        ({"last_ok_call_at": 930.0, "last_update_at": 995.0}, "ok"),  # an update is one
        ({"last_ok_call_at": None, "connected_since": None}, "probe"),
    ],
)
def test_liveness_is_judged_from_real_traffic(overrides: dict[str, Any], verdict: str) -> None:
    assert judge(signals(**overrides), probe_interval_s=60.0) == verdict


def test_backoff_doubles_to_a_cap_and_waits_long_for_another_protocol_layer() -> None:
    assert next_backoff(1.0, state="disconnected") == 2.0
    assert next_backoff(4.0, state="disconnected") == 8.0
    assert next_backoff(8.0, state="disconnected") == 8.0  # a server back is found in seconds
    assert next_backoff(400.0, state="incompatible") == 600.0


async def connected_gateway(
    tmp_path: Path, fake: FakeTelegram, **overrides: Any
) -> TelegramGateway:
    received: list[TgMessage] = []

    async def on_message(msg: TgMessage) -> None:
        received.append(msg)

    gateway = TelegramGateway(
        gateway_settings(tmp_path, **overrides),
        fake.factory(None, None),
        profile=ServerProfile(),
        on_message=on_message,
        factory=lambda: fake.factory(None, None),
    )
    gateway.received = received  # type: ignore[attr-defined]
    await gateway.start()
    await reach(lambda: gateway.state == "connected")
    return gateway


async def test_a_server_lost_in_the_reconnect_window_gets_a_fresh_client(tmp_path: Path) -> None:
    # The field failure: the server goes away, calls made meanwhile never return.
    fake = FakeTelegram()
    gateway = await connected_gateway(tmp_path, fake)
    fake.server.hang("get_me", "connect")
    await reach(lambda: gateway.state == "disconnected")
    assert gateway.status()["last_error"].startswith("probe failed: Telegram call timed out")
    await asyncio.sleep(0.5)  # reconnect attempts time out too, and back off
    assert gateway.state == "disconnected"
    fake.server.unhang()
    await reach(lambda: gateway.state == "connected", limit=15)
    status = gateway.status()
    assert status["last_error"] is None  # cleared on recovery
    assert status["reconnects"] == 1 and status["clients_built"] >= 2
    assert fake.current is gateway.client and fake.current is not fake
    assert fake.connected is False  # the old client was torn down
    await fake.deliver("still there?")
    assert [m.text for m in gateway.received] == ["still there?"]  # type: ignore[attr-defined]
    await gateway.send_text(42, "yes", [])
    assert fake.texts(42) == ["yes"]
    await gateway.stop()


async def test_a_dead_update_task_is_deaf_and_replaced(tmp_path: Path) -> None:
    fake = FakeTelegram()
    gateway = await connected_gateway(tmp_path, fake)
    fake.server.hang("connect")  # hold the rebuild so the verdict can be seen
    fake.kill_updates()
    await reach(lambda: gateway.state == "deaf")
    assert "update task stopped" in gateway.status()["last_error"]
    fake.server.unhang()
    await reach(lambda: gateway.state == "connected")
    await fake.deliver("hello again")
    assert [m.text for m in gateway.received] == ["hello again"]  # type: ignore[attr-defined]
    await gateway.stop()


@pytest.mark.slow
async def test_a_dropped_connection_is_noticed_without_waiting_for_the_probe(
    tmp_path: Path,
) -> None:
    fake = FakeTelegram()
    gateway = await connected_gateway(tmp_path, fake, telegram_probe_interval_s=3600.0)
    fake.server.go_down()
    await reach(lambda: gateway.state == "disconnected")
    assert gateway.last_probe_at is None  # the socket's state said it, no probe needed
    fake.server.come_back()
    await reach(lambda: gateway.state == "connected")
    await gateway.stop()


# --- /health tells what the chatter experiences ------------------------------------------
def health(server: LiveServer) -> dict[str, Any]:
    return dict(server.client.get("/health").json())


@pytest.mark.slow
def test_health_is_degraded_with_its_reason_while_deaf_or_disconnected(
    tmp_path: Path, fake_llm: FakeLLM, live_server_factory: Any
) -> None:
    fake = FakeTelegram()
    fake.server.hang("connect")  # the first connect is slow: a normal start, not a problem
    settings = tg_settings(
        tmp_path, fake_llm, telegram_call_timeout_s=0.5, telegram_probe_timeout_s=0.3
    )
    server = live_server_factory(settings, telegram=fake.factory)
    gateway = server.runtime.telegram
    assert gateway.state == "starting"
    assert health(server)["telegram"] == "starting"
    assert not [r for r in health(server)["reasons"] if r.startswith("telegram")]
    fake.server.unhang()
    wait_until(lambda: gateway.state == "connected")

    fake.server.hang("connect")  # hold each rebuild so the verdict can be read
    server.call(lambda rt: _kill_updates(fake))
    wait_until(lambda: health(server)["telegram"] == "deaf")
    report = health(server)
    assert report["status"] == "degraded" and "telegram_deaf" in report["reasons"]
    assert server.client.get("/telegram/status").json()["state"] == "deaf"

    fake.server.unhang()
    wait_until(lambda: gateway.state == "connected")
    assert not [r for r in health(server)["reasons"] if r.startswith("telegram")]
    fake.server.go_down()
    wait_until(lambda: health(server)["telegram"] == "disconnected")
    assert "telegram_disconnected" in health(server)["reasons"]
    fake.server.come_back()
    wait_until(lambda: gateway.state == "connected", timeout=15)
    status = server.client.get("/telegram/status").json()
    assert status["reconnects"] == 2 and status["last_error"] is None
    for field in ("state_since", "last_update_at", "last_ok_call_at", "last_probe_at"):
        assert field in status


async def _kill_updates(fake: FakeTelegram) -> None:
    fake.current.kill_updates()


async def test_another_protocol_layer_is_incompatible_not_unreachable(tmp_path: Path) -> None:
    from telethon import __version__ as telethon_version
    from telethon import errors
    from telethon.tl.alltlobjects import LAYER

    fake = FakeTelegram()
    fake.fail("connect", errors.TypeNotFoundError(0x1CB5C415, b""))
    gateway = TelegramGateway(gateway_settings(tmp_path), fake, profile=ServerProfile())
    await gateway.start()
    await reach(lambda: gateway.state == "incompatible")
    error = gateway.status()["last_error"]
    assert f"Telethon {telethon_version} (API layer {LAYER})" in error
    assert "unreachable" not in error
    await gateway.stop()


@pytest.mark.slow
async def test_the_real_client_against_a_server_that_never_answers(tmp_path: Path) -> None:
    """Real Telethon, a loopback TCP server that accepts and then says nothing: the
    deadline cancels the connect, fresh clients are built, nothing hangs."""
    from core.telegram.client import make_client
    from core.telegram.session import server_profile

    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = make_settings(
        tmp_path,
        telegram_api_id=1,
        telegram_api_hash="h",
        telegram_server=f"2@127.0.0.1:{port}",
        telegram_call_timeout_s=1.0,
        telegram_probe_timeout_s=0.5,
    )
    profile = server_profile(settings)
    gateway = TelegramGateway(
        settings,
        make_client(settings, profile),
        profile=profile,
        factory=lambda: make_client(settings, profile),
    )
    await gateway.start()
    await reach(lambda: gateway.clients_built >= 2, limit=20)
    assert gateway.state == "disconnected"
    assert gateway.status()["last_error"] == "connect failed: Telegram call timed out after 1 s"
    assert accepted  # the client did reach the server
    await asyncio.wait_for(gateway.stop(), 10)
    server.close()
    for writer in accepted:
        writer.close()
