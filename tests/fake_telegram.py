"""FakeTelegram: exactly the Telethon client calls Vigil makes, nothing more.

Telegram's servers cannot be reached from tests, so the gateway is tested at
its narrow boundary. The fake behaves like Telegram where it matters to us:
it strips surrounding whitespace, refuses empty messages
(``MessageEmptyError``), messages over 4096 UTF-16 units
(``MessageTooLongError``) and edits that change nothing
(``MessageNotModifiedError``) — and raises the *real* ``telethon.errors``
when a test scripts them with :meth:`FakeTelegram.fail`.

Calls implemented (and recorded in ``calls``): ``connect``, ``disconnect``,
``is_connected``, ``is_user_authorized``, ``sign_in`` (bot token, phone code,
password), ``send_code_request``, ``log_out``, ``get_me``, ``send_message``,
``edit_message``, ``get_input_entity``, ``__call__`` (``SetTypingRequest``),
``get_messages`` (by id), ``download_media`` (``file=bytes``),
``add_event_handler``, and ``session.set_dc``. Updates are delivered with
:meth:`FakeTelegram.deliver`.

Media is real Telethon: :meth:`FakeTelegram.photo`, :meth:`FakeTelegram.document`
and :meth:`FakeTelegram.voice` build ``MessageMediaPhoto`` /
``MessageMediaDocument`` objects offline (``Photo`` with ``PhotoSize``,
``Document`` with ``DocumentAttributeAudio`` ...) and keep their bytes on the
server for ``download_media``; a message delivered with ``media=`` is a real
``telethon.tl.types.Message``.

Telegram's side lives in a :class:`FakeServer` that several clients can share:
the gateway may throw a client away and build a fresh one (``fake.factory``
hands out the first client, then fresh ones on the same server and session).
The server keeps an update log; a client whose update task is alive gets new
updates at once, the others get what they missed on connect when built with
``catch_up=True`` (as Telethon does from the session's saved update state).
The connection can be broken the ways a real one breaks: the server goes
down (:meth:`FakeServer.go_down`), a call hangs forever (:meth:`FakeServer.hang`,
as Telethon does when called during its reconnect window), the connection
drops (:meth:`FakeTelegram.drop`) or the update task dies
(:meth:`FakeTelegram.kill_updates`); updates can be replayed
(``session.pts = 0``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from telethon import errors, events, functions, types
from telethon.crypto import rsa as telethon_rsa

LIMIT = 4096


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class FakeUser:
    id: int
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    bot: bool = False


@dataclass
class FakeMessage:
    """What Telethon's Message offers the gateway (and what the fake stores)."""

    id: int
    chat_id: int
    message: str
    sender_id: int | None
    entities: list[Any] = field(default_factory=list)
    mentioned: bool = False
    reply_to_msg_id: int | None = None
    media: Any = None
    date: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    edits: int = 0
    _fake: Any = None

    async def get_reply_message(self) -> FakeMessage | None:
        if self.reply_to_msg_id is None:
            return None
        return self._fake.messages.get((self.chat_id, self.reply_to_msg_id))


@dataclass
class FakeEvent:
    message: FakeMessage
    chat_id: int
    is_private: bool
    is_group: bool
    is_channel: bool
    sender_id: int | None
    sender: FakeUser | None

    async def get_sender(self) -> FakeUser | None:
        return self.sender


class FakeSession:
    """The part of Telethon's session the gateway touches (plus the saved update state)."""

    def __init__(self) -> None:
        self.dc_id = 2
        self.server_address = "149.154.167.51"
        self.port = 443
        self.auth_key: Any = None
        self.set_dc_calls: list[tuple[int, str, int]] = []
        self.pts = 0  # updates up to here were seen (Telethon saves this on disconnect)

    def set_dc(self, dc_id: int, server_address: str, port: int) -> None:
        self.set_dc_calls.append((dc_id, server_address, port))
        self.dc_id, self.server_address, self.port = dc_id, server_address, port


@dataclass
class _Update:
    event: FakeEvent
    is_edit: bool


class FakeServer:
    """Telegram's side: messages, the update log, and the ways it can fail."""

    def __init__(self, *, me: FakeUser, bot_token: str | None, authorized: bool) -> None:
        self.me = me
        self.bot_token = bot_token
        self.authorized = authorized
        self.messages: dict[tuple[int, int], FakeMessage] = {}
        self.sent: dict[int, list[FakeMessage]] = defaultdict(list)
        self.typing: list[int] = []
        self.updates: list[_Update] = []
        self.clients: list[FakeTelegram] = []
        self.ids = itertools.count(1000)
        self.is_down = False
        self.files: dict[tuple[int, str], bytes] = {}  # (photo/document id, thumb) -> bytes
        self.downloads: list[tuple[int, int]] = []  # (media id, bytes) served
        self.media_ids = itertools.count(5000)
        self.hanging: set[str] = set()
        self.hung_calls = 0

    def go_down(self) -> None:
        """The server stops answering: connections drop, connects fail."""
        self.is_down = True
        for client in self.clients:
            client.drop()

    def come_back(self) -> None:
        self.is_down = False

    def hang(self, *methods: str) -> None:
        """Calls of these methods never return (until :meth:`unhang`)."""
        self.hanging.update(methods)

    def unhang(self) -> None:
        self.hanging.clear()

    async def publish(self, update: _Update) -> None:
        self.updates.append(update)
        for client in list(self.clients):
            if client.is_receiving():
                await client.dispatch_pending()


class FakeTelegram:
    """A scripted stand-in for ``telethon.TelegramClient``."""

    def __init__(
        self,
        *,
        me: FakeUser | None = None,
        authorized: bool = True,
        bot_token: str | None = None,
        phone_code: str = "12345",
        password: str | None = None,
        server: FakeServer | None = None,
        session: FakeSession | None = None,
        catch_up: bool = True,
    ) -> None:
        self.server = server or FakeServer(
            me=me or FakeUser(id=777, username="VigilBot", first_name="Vigil", bot=True),
            bot_token=bot_token,
            authorized=authorized,
        )
        self.server.clients.append(self)
        self.phone_code = phone_code
        self.password = password
        self.catch_up = catch_up
        self.session = session or FakeSession()
        self.connected = False
        self.connect_error: BaseException | None = None
        self.calls: list[tuple[str, Any]] = []
        self.handlers: list[tuple[Any, Any]] = []
        self.key_fingerprints_at_connect: list[set[int]] = []
        self.dc_at_connect: list[tuple[int, str, int]] = []
        self.not_modified_raised = 0
        self.fresh_clients: list[FakeTelegram] = []
        self._updates_handle: asyncio.Task[None] | None = None
        self._failures: dict[str, list[BaseException]] = defaultdict(list)
        self._sent_code = False
        self._dispatching = False
        self._handed_out = False

    # Telegram's state, shared by every client of the server.
    @property
    def me(self) -> FakeUser:
        return self.server.me

    @property
    def bot_token(self) -> str | None:
        return self.server.bot_token

    @property
    def authorized(self) -> bool:
        return self.server.authorized

    @authorized.setter
    def authorized(self, value: bool) -> None:
        self.server.authorized = value

    @property
    def downloads(self) -> list[tuple[int, int]]:
        return self.server.downloads

    @property
    def messages(self) -> dict[tuple[int, int], Any]:
        return self.server.messages

    @property
    def sent(self) -> dict[int, list[FakeMessage]]:
        return self.server.sent

    @property
    def typing(self) -> list[int]:
        return self.server.typing

    # --- scripting -----------------------------------------------------------
    def fail(self, method: str, *exceptions: BaseException) -> None:
        """The next calls of ``method`` raise these exceptions, in order."""
        self._failures[method].extend(exceptions)

    async def _enter(self, method: str, args: Any = None) -> None:
        self.calls.append((method, args))
        if method in self.server.hanging:
            self.server.hung_calls += 1
            await asyncio.Future()  # never resolved: only a deadline gets the caller out
        if self._failures.get(method):
            raise self._failures[method].pop(0)

    def factory(self, settings: Any, profile: Any) -> FakeTelegram:
        """A client factory: this client first, then fresh ones on the same server."""
        if not self._handed_out:
            self._handed_out = True
            return self
        fresh = FakeTelegram(server=self.server, session=self.session, catch_up=self.catch_up)
        fresh.phone_code, fresh.password = self.phone_code, self.password
        self.fresh_clients.append(fresh)
        return fresh

    @property
    def current(self) -> FakeTelegram:
        """The newest client built by :meth:`factory` (this one if none)."""
        return self.fresh_clients[-1] if self.fresh_clients else self

    def drop(self) -> None:
        """The connection drops (Telethon's ``is_connected()`` turns False)."""
        self.connected = False
        self._stop_updates()

    def kill_updates(self) -> None:
        """Telethon's update task dies (the connection itself stays up)."""
        self._stop_updates()

    def _stop_updates(self) -> None:
        if self._updates_handle is not None and not self._updates_handle.done():
            self._updates_handle.cancel()

    def is_receiving(self) -> bool:
        return (
            self.connected and self._updates_handle is not None and not self._updates_handle.done()
        )

    # --- connection and account ----------------------------------------------
    async def connect(self) -> None:
        self.key_fingerprints_at_connect.append(set(telethon_rsa._server_keys))
        s = self.session
        self.dc_at_connect.append((s.dc_id, s.server_address, s.port))
        await self._enter("connect")
        if self.connect_error is not None:
            raise self.connect_error
        if self.server.is_down:
            raise ConnectionError("Connection to Telegram failed 3 time(s)")
        self.connected = True
        if s.auth_key is None:
            s.auth_key = object()  # a key exchange happened
        if not self.catch_up:
            s.pts = len(self.server.updates)  # without catch-up, the past is skipped
        self._updates_handle = asyncio.ensure_future(self._update_loop())

    async def _update_loop(self) -> None:
        await asyncio.sleep(0)
        await self.dispatch_pending()
        await asyncio.Future()  # runs until cancelled (dropped or killed)

    async def dispatch_pending(self) -> None:
        """Hand the handlers every update past the session's saved state."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self.is_receiving() and self.session.pts < len(self.server.updates):
                update = self.server.updates[self.session.pts]
                self.session.pts += 1
                wanted = events.MessageEdited if update.is_edit else events.NewMessage
                for callback, builder in list(self.handlers):
                    if type(builder) is wanted:
                        await callback(update.event)
        finally:
            self._dispatching = False

    async def disconnect(self) -> None:
        self.calls.append(("disconnect", None))
        self.drop()

    def is_connected(self) -> bool:
        return self.connected

    def _require_connection(self) -> None:
        if not self.connected or self.server.is_down:
            raise ConnectionError("Cannot send requests while disconnected")

    async def is_user_authorized(self) -> bool:
        await self._enter("is_user_authorized")
        return self.authorized

    async def send_code_request(self, phone: str) -> Any:
        await self._enter("send_code_request", phone)
        self._sent_code = True
        return type("SentCode", (), {"phone_code_hash": "hash"})()

    async def sign_in(
        self,
        phone: str | None = None,
        code: str | None = None,
        *,
        password: str | None = None,
        bot_token: str | None = None,
        phone_code_hash: str | None = None,
    ) -> FakeUser:
        await self._enter("sign_in", {"phone": phone, "bot": bot_token is not None})
        if bot_token is not None:
            if bot_token != self.bot_token:
                raise errors.AccessTokenInvalidError(request=None)
        elif password is not None:
            if password != self.password:
                raise errors.PasswordHashInvalidError(request=None)
        else:
            if code != self.phone_code:
                raise errors.PhoneCodeInvalidError(request=None)
            if self.password is not None:
                raise errors.SessionPasswordNeededError(request=None)
        self.authorized = True
        return self.me

    async def log_out(self) -> bool:
        await self._enter("log_out")
        self.authorized = False
        return True

    async def get_me(self) -> FakeUser:
        await self._enter("get_me")
        self._require_connection()
        if not self.authorized:
            raise errors.AuthKeyUnregisteredError(request=None)
        return self.me

    # --- messages ---------------------------------------------------------------
    def _check(self, text: str) -> str:
        self._require_connection()
        stripped = text.strip()
        if not stripped:
            raise errors.MessageEmptyError(request=None)
        if utf16_len(stripped) > LIMIT:
            raise errors.MessageTooLongError(request=None)
        return stripped

    async def send_message(
        self,
        entity: int,
        message: str,
        *,
        formatting_entities: list[Any] | None = None,
        link_preview: bool = True,
        reply_to: int | None = None,
    ) -> FakeMessage:
        await self._enter("send_message", (entity, message))
        text = self._check(message)
        sent = FakeMessage(
            next(self.server.ids),
            entity,
            text,
            self.me.id,
            list(formatting_entities or []),
            reply_to_msg_id=reply_to,
            _fake=self,
        )
        self.messages[(entity, sent.id)] = sent
        self.sent[entity].append(sent)
        return sent

    async def edit_message(
        self,
        entity: int,
        message: int,
        text: str,
        *,
        formatting_entities: list[Any] | None = None,
        link_preview: bool = True,
    ) -> FakeMessage:
        await self._enter("edit_message", (entity, message, text))
        stripped = self._check(text)
        stored = self.messages.get((entity, message))
        if stored is None:
            raise errors.MessageIdInvalidError(request=None)
        new_entities = list(formatting_entities or [])
        if stored.message == stripped and _same(stored.entities, new_entities):
            self.not_modified_raised += 1
            raise errors.MessageNotModifiedError(request=None)
        stored.message, stored.entities = stripped, new_entities
        stored.edits += 1
        return stored

    async def get_input_entity(self, peer: int) -> int:
        return peer

    async def __call__(self, request: Any) -> Any:
        name = type(request).__name__
        await self._enter(name)
        self._require_connection()
        if isinstance(request, functions.messages.SetTypingRequest):
            self.typing.append(request.peer)
            return True
        raise NotImplementedError(f"FakeTelegram does not implement {name}")

    async def get_messages(self, entity: int, *, ids: int) -> Any:
        await self._enter("get_messages", (entity, ids))
        self._require_connection()
        return self.messages.get((entity, ids))

    async def download_media(self, message: Any, file: Any = None, *, thumb: Any = None) -> Any:
        """Like Telethon: a Message or its media; ``file=bytes`` returns the bytes."""
        media = (
            getattr(message, "media", message) if isinstance(message, types.Message) else message
        )
        await self._enter("download_media", media)
        self._require_connection()
        assert file is bytes, "Vigil downloads into memory"
        item = getattr(media, "photo", None) or getattr(media, "document", None)
        if item is None:
            return None
        data = self.server.files.get((item.id, thumb or ""))
        if data is None:
            raise errors.FileReferenceExpiredError(request=None)
        self.server.downloads.append((item.id, len(data)))
        return data

    # --- media, built offline as real Telethon objects -------------------------
    def photo(
        self, data: bytes, *, width: int = 800, height: int = 600, declared: int | None = None
    ) -> types.MessageMediaPhoto:
        """A photo as Telegram sends it: a small preview size and the full one ("y")."""
        photo_id = next(self.server.media_ids)
        sizes = [
            types.PhotoStrippedSize(type="i", bytes=b"\x01\x28\x1e"),
            types.PhotoSize(type="m", w=320, h=240, size=len(data) // 8 + 1),
            types.PhotoSize(
                type="y", w=width, h=height, size=len(data) if declared is None else declared
            ),
        ]
        self.server.files[(photo_id, "y")] = data
        self.server.files[(photo_id, "m")] = data[: len(data) // 8 + 1]
        photo = types.Photo(
            id=photo_id,
            access_hash=photo_id * 7,
            file_reference=b"ref",
            date=dt.datetime.now(dt.UTC),
            sizes=sizes,
            dc_id=2,
        )
        return types.MessageMediaPhoto(photo=photo)

    def document(
        self,
        data: bytes,
        *,
        mime: str,
        attributes: list[Any] | None = None,
        declared: int | None = None,
    ) -> types.MessageMediaDocument:
        """A file sent as a document (an image file, an audio file, a sticker, ...)."""
        doc_id = next(self.server.media_ids)
        self.server.files[(doc_id, "")] = data
        document = types.Document(
            id=doc_id,
            access_hash=doc_id * 7,
            file_reference=b"ref",
            date=dt.datetime.now(dt.UTC),
            mime_type=mime,
            size=len(data) if declared is None else declared,
            dc_id=2,
            attributes=list(attributes or []),
        )
        return types.MessageMediaDocument(document=document)

    def voice(
        self, data: bytes, *, duration: int = 3, declared: int | None = None
    ) -> types.MessageMediaDocument:
        """A voice note (OGG/Opus with ``DocumentAttributeAudio(voice=True)``)."""
        attribute = types.DocumentAttributeAudio(duration=duration, voice=True)
        media = self.document(data, mime="audio/ogg", attributes=[attribute], declared=declared)
        media.voice = True
        return media

    def add_event_handler(self, callback: Any, builder: Any) -> None:
        self.handlers.append((callback, builder))

    # --- updates ---------------------------------------------------------------
    async def deliver(
        self,
        text: str,
        *,
        chat_id: int = 42,
        sender: FakeUser | None = None,
        group: bool = False,
        mentioned: bool = False,
        reply_to: int | None = None,
        media: Any = None,
        edit_of: int | None = None,
        date: dt.datetime | None = None,
        grouped_id: int | None = None,
    ) -> Any:
        """A chatter sends a message (or an edit of ``edit_of``).

        It reaches the handlers at once if a client is receiving; otherwise it
        waits in the server's update log for a catch-up.
        """
        sender = sender or FakeUser(id=chat_id if chat_id > 0 else 42, username="ada")
        message_id = edit_of if edit_of is not None else next(self.server.ids)
        msg: Any
        if media is not None:  # a real Telethon message carrying real Telethon media
            msg = types.Message(
                id=message_id,
                peer_id=types.PeerUser(chat_id) if chat_id > 0 else types.PeerChat(-chat_id),
                date=date or dt.datetime.now(dt.UTC),
                message=text,
                from_id=types.PeerUser(sender.id),
                mentioned=mentioned,
                media=media,
                reply_to=types.MessageReplyHeader(reply_to_msg_id=reply_to) if reply_to else None,
                grouped_id=grouped_id,
            )
        else:
            msg = FakeMessage(
                message_id,
                chat_id,
                text,
                sender.id,
                mentioned=mentioned,
                reply_to_msg_id=reply_to,
                _fake=self,
            )
            if date is not None:
                msg.date = date
        self.messages[(chat_id, message_id)] = msg
        event = FakeEvent(msg, chat_id, not group, group, False, sender.id, sender)
        await self.server.publish(_Update(event, edit_of is not None))
        return msg

    def texts(self, chat_id: int) -> list[str]:
        return [m.message for m in self.sent[chat_id]]

    async def idle(self, turns: int = 50) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)


def _same(a: list[Any], b: list[Any]) -> bool:
    return [e.to_dict() for e in a] == [e.to_dict() for e in b]
