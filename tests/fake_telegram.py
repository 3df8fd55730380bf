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
``add_event_handler``, and ``session.set_dc``. Updates are delivered with
:meth:`FakeTelegram.deliver`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from telethon import errors, events, functions
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
    """The part of Telethon's session the gateway touches."""

    def __init__(self) -> None:
        self.dc_id = 2
        self.server_address = "149.154.167.51"
        self.port = 443
        self.auth_key: Any = None
        self.set_dc_calls: list[tuple[int, str, int]] = []

    def set_dc(self, dc_id: int, server_address: str, port: int) -> None:
        self.set_dc_calls.append((dc_id, server_address, port))
        self.dc_id, self.server_address, self.port = dc_id, server_address, port


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
    ) -> None:
        self.me = me or FakeUser(id=777, username="VigilBot", first_name="Vigil", bot=True)
        self.authorized = authorized
        self.bot_token = bot_token
        self.phone_code = phone_code
        self.password = password
        self.session = FakeSession()
        self.connected = False
        self.connect_error: BaseException | None = None
        self.calls: list[tuple[str, Any]] = []
        self.handlers: list[tuple[Any, Any]] = []
        self.messages: dict[tuple[int, int], FakeMessage] = {}
        self.sent: dict[int, list[FakeMessage]] = defaultdict(list)
        self.typing: list[int] = []
        self.key_fingerprints_at_connect: list[set[int]] = []
        self.dc_at_connect: list[tuple[int, str, int]] = []
        self.not_modified_raised = 0
        self._failures: dict[str, list[BaseException]] = defaultdict(list)
        self._ids = itertools.count(1000)
        self._sent_code = False

    # --- scripting -----------------------------------------------------------
    def fail(self, method: str, *exceptions: BaseException) -> None:
        """The next calls of ``method`` raise these exceptions, in order."""
        self._failures[method].extend(exceptions)

    def _maybe_fail(self, method: str, args: Any = None) -> None:
        self.calls.append((method, args))
        if self._failures.get(method):
            raise self._failures[method].pop(0)

    # --- connection and account ----------------------------------------------
    async def connect(self) -> None:
        self.key_fingerprints_at_connect.append(set(telethon_rsa._server_keys))
        s = self.session
        self.dc_at_connect.append((s.dc_id, s.server_address, s.port))
        self._maybe_fail("connect")
        if self.connect_error is not None:
            raise self.connect_error
        self.connected = True
        if s.auth_key is None:
            s.auth_key = object()  # a key exchange happened

    async def disconnect(self) -> None:
        self.calls.append(("disconnect", None))
        self.connected = False

    def is_connected(self) -> bool:
        return self.connected

    async def is_user_authorized(self) -> bool:
        self._maybe_fail("is_user_authorized")
        return self.authorized

    async def send_code_request(self, phone: str) -> Any:
        self._maybe_fail("send_code_request", phone)
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
        self._maybe_fail("sign_in", {"phone": phone, "bot": bot_token is not None})
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
        self._maybe_fail("log_out")
        self.authorized = False
        return True

    async def get_me(self) -> FakeUser:
        self._maybe_fail("get_me")
        if not self.connected:
            raise ConnectionError("Cannot send requests while disconnected")
        if not self.authorized:
            raise errors.AuthKeyUnregisteredError(request=None)
        return self.me

    # --- messages ---------------------------------------------------------------
    def _check(self, text: str) -> str:
        if not self.connected:
            raise ConnectionError("Cannot send requests while disconnected")
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
    ) -> FakeMessage:
        self._maybe_fail("send_message", (entity, message))
        text = self._check(message)
        sent = FakeMessage(
            next(self._ids), entity, text, self.me.id, list(formatting_entities or []), _fake=self
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
        self._maybe_fail("edit_message", (entity, message, text))
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
        self._maybe_fail(name)
        if isinstance(request, functions.messages.SetTypingRequest):
            self.typing.append(request.peer)
            return True
        raise NotImplementedError(f"FakeTelegram does not implement {name}")

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
    ) -> FakeMessage:
        """Deliver a new message (or an edit of ``edit_of``) to the handlers."""
        sender = sender or FakeUser(id=chat_id if chat_id > 0 else 42, username="ada")
        message_id = edit_of if edit_of is not None else next(self._ids)
        msg = FakeMessage(
            message_id,
            chat_id,
            text,
            sender.id,
            mentioned=mentioned,
            reply_to_msg_id=reply_to,
            media=media,
            _fake=self,
        )
        self.messages[(chat_id, message_id)] = msg
        wanted = events.MessageEdited if edit_of is not None else events.NewMessage
        event = FakeEvent(msg, chat_id, not group, group, False, sender.id, sender)
        for callback, builder in list(self.handlers):
            if type(builder) is wanted:
                await callback(event)
        return msg

    def texts(self, chat_id: int) -> list[str]:
        return [m.message for m in self.sent[chat_id]]

    async def idle(self, turns: int = 50) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)


def _same(a: list[Any], b: list[Any]) -> bool:
    return [e.to_dict() for e in a] == [e.to_dict() for e in b]
