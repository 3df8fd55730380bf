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

from core.telegram import TelegramGateway
from core.telegram_session import ServerProfile, TelegramTimeout
from tests.conftest import make_settings
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
