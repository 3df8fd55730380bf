"""One Channel contract, run against both adapters: the local channel (LocalReply)
and the Telegram channel (TelegramChannel -> TelegramGateway -> FakeTelegram)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from telethon import TelegramClient, errors, events, types

from core.api import LocalReply
from core.channel import Channel
from core.streaming import EditScheduler, StreamingOptimizer
from core.telegram.bot import TgMessage
from core.telegram.channel import TelegramChannel
from core.telegram.client import incoming_message
from core.telegram.gateway import TelegramGateway
from core.telegram.session import ServerProfile
from tests.conftest import make_settings
from tests.fake_telegram import FakeTelegram


@dataclass
class Adapter:
    channel: Channel
    chat_id: str
    visible: Callable[[str], str]  # message id -> the text a chatter sees
    interval_s: float  # the pacing this adapter promises for chat_id
    fake: FakeTelegram | None = None


@pytest.fixture(params=["local", "telegram"])
async def adapter(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Adapter]:
    if request.param == "local":
        reply = LocalReply()
        # A plain JSON reply is shown whole at the end: no edits to pace.
        yield Adapter(reply, "local:contract", lambda mid: reply.messages[int(mid)], float("inf"))
        return
    fake = FakeTelegram()
    gateway = TelegramGateway(make_settings(tmp_path), fake, profile=ServerProfile())
    await gateway.start()
    while gateway.state != "connected":
        await asyncio.sleep(0.01)
    channel = TelegramChannel(gateway, scheduler=EditScheduler(edits_per_s=1000))
    visible = lambda mid: fake.messages[(42, int(mid))].message  # noqa: E731
    # tg:42 is a private chat: the configured private interval (1.5 s default).
    yield Adapter(channel, "tg:42", visible, 1.5, fake)
    await gateway.stop()


def words(n: int) -> str:
    rnd = random.Random(n)
    return " ".join(
        rnd.choice(["alpha", "beta", "gamma.", "delta\n\n", "epsilon"]) for _ in range(n)
    )


def squash(text: str) -> str:
    return " ".join(text.split())


async def test_it_is_a_channel_with_sane_limits(adapter: Adapter) -> None:
    assert isinstance(adapter.channel, Channel)
    assert adapter.channel.max_message_chars >= 4096
    assert adapter.channel.edit_interval(adapter.chat_id) == adapter.interval_s
    await adapter.channel.typing(adapter.chat_id)


async def test_send_returns_distinct_ids_and_edit_replaces_the_text(adapter: Adapter) -> None:
    first = await adapter.channel.send(adapter.chat_id, "one")
    second = await adapter.channel.send(adapter.chat_id, "two")
    assert first != second
    await adapter.channel.edit(adapter.chat_id, first, "one, edited")
    assert adapter.visible(first) == "one, edited"
    assert adapter.visible(second) == "two"


async def test_a_streamed_long_answer_arrives_whole_and_within_limits(adapter: Adapter) -> None:
    answer = words(2500)
    opt = StreamingOptimizer(adapter.channel, adapter.chat_id)
    await opt.start()
    for token in answer.split(" "):
        await opt.push(token + " ")
    ids = await opt.finish(answer)
    seen = [adapter.visible(i) for i in ids]
    assert squash("".join(s + " " for s in seen)) == squash(answer)
    assert all(len(s) <= adapter.channel.max_message_chars for s in seen)
    if adapter.fake is not None:
        assert adapter.fake.not_modified_raised == 0
        assert len(ids) >= 4


async def test_whitespace_only_growth_never_makes_an_empty_edit(adapter: Adapter) -> None:
    opt = StreamingOptimizer(adapter.channel, adapter.chat_id, min_growth_chars=1)
    await opt.start()
    for token in ["Hello", " ", "\n", "  ", "\n\n", " world", "   "]:
        await opt.push(token)
    ids = await opt.finish()
    assert squash(adapter.visible(ids[0])) == "Hello world"
    if adapter.fake is not None:
        assert adapter.fake.not_modified_raised == 0


async def test_telegram_rate_limits_surface_as_our_error(tmp_path: Path) -> None:
    from core.errors import RateLimited

    fake = FakeTelegram()
    gateway = TelegramGateway(make_settings(tmp_path), fake, profile=ServerProfile())
    await gateway.start()
    while gateway.state != "connected":
        await asyncio.sleep(0.01)
    channel = TelegramChannel(gateway, scheduler=EditScheduler())
    fake.fail("send_message", errors.FloodWaitError(request=None, capture=12))
    with pytest.raises(RateLimited) as caught:
        await channel.send("tg:42", "hi")
    assert caught.value.retry_after == 12
    assert isinstance(caught.value.__cause__, errors.FloodWaitError)
    fake.fail("edit_message", errors.MessageTooLongError(request=None))
    mid = await channel.send("tg:42", "**short**")
    await channel.edit("tg:42", mid, "**longer**")  # falls back to plain text
    assert fake.messages[(42, int(mid))].message == "**longer**"
    await gateway.stop()


# --- the gateway reads real Telethon events (built offline, never connected) -----------
def real_event(message: types.Message, *entities: object) -> events.NewMessage.Event:
    event = events.NewMessage.Event(message)
    event._entities = {e.id: e for e in entities}  # type: ignore[attr-defined]
    event._set_client(TelegramClient(None, 1, "x"))
    return event


async def test_the_gateway_reads_real_telethon_events(tmp_path: Path) -> None:
    gateway = TelegramGateway(make_settings(tmp_path), FakeTelegram(), profile=ServerProfile())
    gateway.account = {"id": 777, "username": "VigilBot", "is_bot": True}
    now = dt.datetime.now(dt.UTC)

    async def extract(event: Any, *, is_edit: bool) -> TgMessage | None:
        return await incoming_message(
            event,
            is_edit=is_edit,
            my_username="VigilBot",
            replies_to_me=gateway._replies_to_me,
            now=now.timestamp(),
        )

    ada = types.User(id=42, first_name="Ada", last_name="L", username="ada", access_hash=1)
    robot = types.User(id=50, first_name="R", username="robot", bot=True, access_hash=2)
    group = types.Channel(
        id=123, title="G", photo=types.ChatPhotoEmpty(), date=now, megagroup=True, access_hash=3
    )
    news = types.Channel(
        id=124, title="N", photo=types.ChatPhotoEmpty(), date=now, broadcast=True, access_hash=4
    )

    def message(peer: object, text: str, **kw: object) -> types.Message:
        return types.Message(id=9, peer_id=peer, date=now, message=text, **kw)

    private = await extract(
        real_event(message(types.PeerUser(42), "hi", from_id=types.PeerUser(42)), ada),
        is_edit=False,
    )
    assert private == TgMessage(
        chat_id=42,
        message_id=9,
        text="hi",
        sender_id=42,
        username="ada",
        display_name="Ada L",
        is_private=True,
        date=now.timestamp(),
    )
    in_group = await extract(
        real_event(
            message(types.PeerChannel(123), "@vigilbot hello", from_id=types.PeerUser(42)),
            ada,
            group,
        ),
        is_edit=False,
    )
    assert in_group is not None
    assert (in_group.chat_id, in_group.is_group, in_group.mentions_me) == (
        -1000000000123,
        True,
        True,
    )
    photo = await extract(
        real_event(
            message(
                types.PeerUser(42), "", from_id=types.PeerUser(42), media=types.MessageMediaPhoto()
            ),
            ada,
        ),
        is_edit=False,
    )
    assert photo is not None and photo.has_media
    from_bot = real_event(message(types.PeerUser(50), "loop?", from_id=types.PeerUser(50)), robot)
    assert await extract(from_bot, is_edit=False) is None
    post = real_event(message(types.PeerChannel(124), "news", post=True), news)
    assert await extract(post, is_edit=False) is None
