"""The Telegram gateway; with client.py and auth.py the Telethon users of this package.

:class:`TelegramGateway` owns one Telethon client at a time: it pins the
server and registers its key before each connect, connects in the background
(the server never waits for Telegram), signs a bot in with its token, turns
Telethon events into our own :class:`~core.telegram.bot.TgMessage`, and makes
every raw call through :meth:`TelegramGateway.call`, which puts a deadline on
it and translates Telethon's errors into ours (``FloodWaitError`` ->
``RateLimited``). Telethon's automatic flood sleeping is off
(``flood_sleep_threshold=0``): the StreamingOptimizer decides how to wait.

Liveness is judged every second from what is cheap to see
(:mod:`core.telegram.liveness`); a ``get_me`` probe runs when the newest sign of
life is older than ``VIGIL_TELEGRAM_PROBE_INTERVAL_S`` or a call just failed.
A connection judged dead (disconnected, deaf, probe failed) is torn down and
replaced by a freshly built client, with backoff, without restarting the
process; ``on_connected`` runs after every successful connect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from telethon import errors, events, functions, types

from core.config import Settings
from core.errors import ChannelError, RateLimited
from core.telegram.client import (
    TRANSPORT_ERRORS,
    TelegramIncompatible,
    apply_server,
    download_thumb,
    incoming_message,
    is_receiving_updates,
    media_of,
    to_tl_entities,
    translate,
)
from core.telegram.format import Entity
from core.telegram.liveness import START_GRACE_S, STATES, TICK_S, Signals, judge, next_backoff
from core.telegram.media import UNAVAILABLE_REPLY, MediaUnavailable, too_large, what
from core.telegram.rules import TgMessage
from core.telegram.session import (
    ServerProfile,
    TelegramTimeout,
    TelegramUnauthorized,
    marker_path,
    write_marker,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
ClientFactory = Callable[[Settings, ServerProfile], Any]
MEDIA_REMEMBERED = 256  # Telethon media objects of recent messages, for their download
__all__ = ["STATES", "TelegramGateway"]


class TelegramGateway:
    """One Telethon client at a time, its connection state and every call it makes."""

    def __init__(
        self,
        settings: Settings,
        client: Any,
        *,
        profile: ServerProfile,
        on_message: Callable[[TgMessage], Awaitable[None]] | None = None,
        factory: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.client = client
        self.profile = profile
        self.on_message = on_message
        self.on_connected: Callable[[], Awaitable[None]] | None = None
        self.factory = factory  # builds a fresh client; None: the same one reconnects
        self.clock = clock
        self.state = "starting"
        self.state_since = clock()
        self.account: dict[str, Any] | None = None
        self.initialized = False
        self.connected_since: float | None = None
        self.last_update_at: float | None = None
        self.last_ok_call_at: float | None = None
        self.last_probe_at: float | None = None
        self.last_error: str | None = None
        self.reconnects = 0
        self.clients_built = 1
        self.timeouts = 0
        self.flood_waits = 0
        self.flood_wait_s = 0.0
        self.last_flood_at: float | None = None
        self.not_modified = 0
        self._suspect = False
        self._attempts = 0
        self._sent: deque[tuple[int, int]] = deque(maxlen=4096)
        self._media: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.downloads = 0
        self.downloaded_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._grace: asyncio.TimerHandle | None = None

    # --- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        self._attach(self.client)
        self._task = asyncio.ensure_future(self._run())
        self._grace = asyncio.get_running_loop().call_later(START_GRACE_S, self._end_grace)

    def _attach(self, client: Any) -> None:
        apply_server(client, self.profile)
        client.add_event_handler(self._on_new, events.NewMessage(incoming=True))
        client.add_event_handler(self._on_edit, events.MessageEdited(incoming=True))

    def _end_grace(self) -> None:
        if self.state == "starting":
            self._set_state("connecting")

    async def stop(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._disconnect(self.client)
        self._set_state("disconnected")

    async def _disconnect(self, client: Any) -> None:
        try:
            async with asyncio.timeout(self.settings.telegram_probe_timeout_s):
                await client.disconnect()
        except Exception:  # a dead client may fail (or hang) to disconnect: it is dropped anyway
            log.debug("disconnect failed", exc_info=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._supervise()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a loop boundary: supervision must never die silently
                log.exception("Telegram supervision failed; retrying in 5 s")
                self._fail("disconnected", f"supervision failed: {type(exc).__name__}")
                await asyncio.sleep(5.0)

    async def _supervise(self) -> None:
        backoff = 1.0
        while True:
            if self.state == "unauthorized":
                await asyncio.sleep(self.settings.telegram_probe_interval_s)
                continue
            if self.state != "connected":
                if await self._connect():
                    backoff = 1.0
                elif self.state != "unauthorized":
                    await asyncio.sleep(backoff)
                    backoff = next_backoff(backoff, state=self.state)
                continue
            await asyncio.sleep(min(TICK_S, self.settings.telegram_probe_interval_s))
            await self._check()

    async def _check(self) -> None:
        """One look at the connection; a real call only when the evidence is stale."""
        verdict = judge(
            Signals(
                now=self.clock(),
                is_connected=bool(self.client.is_connected()),
                is_receiving=is_receiving_updates(self.client),
                last_ok_call_at=self.last_ok_call_at,
                last_update_at=self.last_update_at,
                connected_since=self.connected_since,
                is_suspect=self._suspect,
            ),
            probe_interval_s=self.settings.telegram_probe_interval_s,
        )
        if verdict == "probe":
            await self._probe()
        elif verdict == "disconnected":
            self._fail("disconnected", "the connection was lost and Telethon gave up reconnecting")
        elif verdict == "deaf":
            self._fail("deaf", "Telethon's update task stopped: no messages would arrive")

    async def _renew_client(self) -> None:
        """Tear the old client down; a fresh one replaces it when a factory is given."""
        old = self.client
        await self._disconnect(old)
        if self.factory is not None:
            self.client = self.factory()
            self.clients_built += 1
            self._attach(self.client)
            log.info("Telegram: built a fresh client (%d so far)", self.clients_built)

    async def _connect(self) -> bool:
        if self._attempts:
            await self._renew_client()
        self._attempts += 1
        if self.state not in ("starting", "disconnected", "deaf", "incompatible"):
            self._set_state("connecting")
        try:
            await self.call(self.client.connect())
            authorized = await self.call(self.client.is_user_authorized())
        except TelegramIncompatible as exc:
            self._fail("incompatible", exc.message)
            return False
        except ChannelError as exc:
            if self.state != "unauthorized":
                self._fail("disconnected", f"connect failed: {exc.message}"[:300])
            return False
        if not marker_path(self.settings.session_path).exists():
            # Claimed at the first connect, before sign-in: a sign-in that fails
            # must not leave a session that a later start judges by a missing marker.
            write_marker(self.settings.session_path, self.profile)
        if not authorized and not await self._sign_in_bot():
            return False
        try:
            me = await self.call(self.client.get_me())
        except ChannelError as exc:
            if self.state != "unauthorized":
                self._fail("disconnected", exc.message)
            return False
        self._connected(me)
        if self.on_connected is not None:
            try:
                await self.on_connected()
            except Exception:  # a loop boundary: the connection itself is fine
                log.exception("Telegram: the after-connect hook failed")
        return True

    def _connected(self, me: Any) -> None:
        self.account = {
            "id": me.id,
            "username": getattr(me, "username", None),
            "is_bot": bool(getattr(me, "bot", False)),
        }
        if self.initialized:
            self.reconnects += 1
        self.initialized = True
        self.connected_since = self.clock()
        self.last_error = None  # recovered: an old error would only mislead
        self._suspect = False
        self._set_state("connected")
        log.info("Telegram connected as %s (%s)", self.account["username"], self.profile.label)

    async def _sign_in_bot(self) -> bool:
        token = self.settings.telegram_bot_token
        if token is None or not token.get_secret_value():
            self._fail(
                "unauthorized",
                "not logged in: run scripts/telegram_login.sh (or set VIGIL_TELEGRAM_BOT_TOKEN)",
            )
            return False
        try:
            await self.call(self.client.sign_in(bot_token=token.get_secret_value()))
        except RateLimited as exc:  # try again once the wait is over
            self._fail("disconnected", f"bot sign-in: {exc.message}")
            await asyncio.sleep(exc.retry_after)
            return False
        except ChannelError as exc:
            # Telegram refusing the token is final; a network failure is not.
            refused = "rpc" in exc.fields or isinstance(exc, TelegramUnauthorized)
            self._fail("unauthorized" if refused else "disconnected", f"bot sign-in: {exc.message}")
            return False
        return True

    async def _probe(self) -> None:
        self.last_probe_at = self.clock()
        self._suspect = False
        try:
            await self.call(self.client.get_me(), timeout=self.settings.telegram_probe_timeout_s)
        except RateLimited:
            pass  # a flood wait proves the connection works
        except ChannelError as exc:
            if self.state == "connected":
                self._fail("disconnected", f"probe failed: {exc.message}")

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("Telegram %s -> %s", self.state, state)
            self.state = state
            self.state_since = self.clock()
            if state != "connected":
                self.connected_since = None

    def _fail(self, state: str, detail: str) -> None:
        self.last_error = detail
        log.warning("Telegram: %s", detail)
        self._set_state(state)

    # --- every raw call --------------------------------------------------------
    async def call(self, request: Awaitable[T], *, timeout: float | None = None) -> T:
        """Await one Telethon call within its deadline; errors come out as ours.

        Telethon can leave a call waiting for good (one started during its
        reconnect window never completes once it gives up reconnecting), so
        every call is cancelled after ``timeout`` (default
        ``VIGIL_TELEGRAM_CALL_TIMEOUT_S``) and raises :class:`TelegramTimeout`.
        """
        limit = self.settings.telegram_call_timeout_s if timeout is None else timeout
        try:
            async with asyncio.timeout(limit) as deadline:
                result = await request
        except TimeoutError as exc:
            if not deadline.expired():
                raise self._translated(exc) from exc
            self.timeouts += 1
            self._suspect = True
            self.last_error = f"Telegram call timed out after {limit:g} s"
            log.warning("Telegram: %s", self.last_error)
            raise TelegramTimeout(self.last_error, timeout_s=limit) from None
        except errors.MessageNotModifiedError:
            self.not_modified += 1  # the channel prevents these; harmless if one slips
            return None  # type: ignore[return-value]
        except (*TRANSPORT_ERRORS, errors.RPCError) as exc:
            raise self._translated(exc) from exc
        self.last_ok_call_at = self.clock()
        return result

    def _translated(self, exc: BaseException) -> Exception:
        """Telethon's error as ours, with the figures kept."""
        error = translate(exc)
        if isinstance(error, RateLimited):
            self.flood_waits += 1
            self.flood_wait_s += error.retry_after
            self.last_flood_at = self.clock()
            log.info("Telegram flood wait of %.0f s", error.retry_after)
        elif isinstance(error, TelegramUnauthorized):
            self._fail("unauthorized", error.message)
        elif not isinstance(exc, errors.RPCError):
            self._suspect = True  # the transport failed: probe at the next tick
            self.last_error = error.message
        return error

    async def send_text(
        self, peer: int, text: str, entities: list[Entity], *, reply_to: int | None = None
    ) -> int:
        message = await self.call(
            self.client.send_message(
                peer,
                text,
                formatting_entities=to_tl_entities(entities),
                link_preview=False,
                reply_to=reply_to,
            )
        )
        self._sent.append((peer, message.id))
        return int(message.id)

    async def edit_text(
        self, peer: int, message_id: int, text: str, entities: list[Entity]
    ) -> None:
        await self.call(
            self.client.edit_message(
                peer,
                message_id,
                text,
                formatting_entities=to_tl_entities(entities),
                link_preview=False,
            )
        )

    async def typing(self, peer: int) -> None:
        async def _typing() -> None:
            entity = await self.client.get_input_entity(peer)
            await self.client(
                functions.messages.SetTypingRequest(entity, types.SendMessageTypingAction())
            )

        await self.call(_typing())

    async def download_media(self, chat_id: int, message_id: int, *, max_bytes: int) -> bytes:
        """The file of a message's photo, image, voice note or audio file.

        The media object comes from the update (kept for the newest messages)
        or, for a message answered after a restart, from Telegram again. A
        file declared larger than ``max_bytes`` is refused before a byte is
        fetched; the download is one call, bounded by
        ``VIGIL_TELEGRAM_CALL_TIMEOUT_S``.
        """
        media = self._media.pop((chat_id, message_id), None)
        if media is None:
            message = await self.call(self.client.get_messages(chat_id, ids=message_id))
            media = getattr(message, "media", None)
        described = media_of(media)
        if described is None or not described.is_readable:
            raise MediaUnavailable(UNAVAILABLE_REPLY.format(what="file"))
        if described.size > max_bytes:
            raise too_large(described, described.size, max_bytes)
        data = await self.call(
            self.client.download_media(media, file=bytes, thumb=download_thumb(media))
        )
        if not isinstance(data, bytes):
            raise MediaUnavailable(UNAVAILABLE_REPLY.format(what=what(described)))
        if len(data) > max_bytes:
            raise too_large(described, len(data), max_bytes)
        self.downloads += 1
        self.downloaded_bytes += len(data)
        return data

    def _remember_media(self, msg: TgMessage, media: Any) -> None:
        self._media[(msg.chat_id, msg.message_id)] = media
        while len(self._media) > MEDIA_REMEMBERED:
            self._media.popitem(last=False)

    # --- events ------------------------------------------------------------------
    async def _on_new(self, event: Any) -> None:
        await self._deliver(event, is_edit=False)

    async def _on_edit(self, event: Any) -> None:
        await self._deliver(event, is_edit=True)

    async def _deliver(self, event: Any, *, is_edit: bool) -> None:
        # Telethon swallows handler errors, so this is a loop boundary: log them.
        self.last_update_at = self.clock()
        try:
            msg = await incoming_message(
                event,
                is_edit=is_edit,
                my_username=(self.account or {}).get("username") or "",
                replies_to_me=self._replies_to_me,
                now=self.clock(),
            )
            if msg is not None and msg.media is not None and msg.media.is_readable:
                self._remember_media(msg, event.message.media)
            if msg is not None and self.on_message is not None:
                await self.on_message(msg)
        except Exception:
            log.exception("Telegram update in chat %s failed", getattr(event, "chat_id", "?"))

    async def _replies_to_me(self, event: Any) -> bool:
        reply_to = event.message.reply_to_msg_id
        if reply_to is None:
            return False
        if (int(event.chat_id), reply_to) in self._sent:
            return True
        me_id = (self.account or {}).get("id")
        reply = await self.call(event.message.get_reply_message())
        return reply is not None and me_id is not None and reply.sender_id == me_id

    # --- status ------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "state_since": self.state_since,
            "account": self.account,
            "initialized": self.initialized,
            "connected_since": self.connected_since,
            "last_update_at": self.last_update_at,
            "last_ok_call_at": self.last_ok_call_at,
            "last_probe_at": self.last_probe_at,
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "clients_built": self.clients_built,
            "timeouts": self.timeouts,
            "flood_waits": {
                "count": self.flood_waits,
                "seconds": round(self.flood_wait_s, 1),
                "last_at": self.last_flood_at,
            },
            "server": self.profile.as_dict(),
        }
