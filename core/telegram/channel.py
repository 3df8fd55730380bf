"""The Telegram ``Channel``: formatting, plain-text fallback, no empty edits.

Telethon-free: it talks to the gateway through the small :class:`TelegramApi`
protocol (``core/telegram/gateway.py`` implements it and translates Telethon's errors
into ours). Text is rendered from Markdown to Telegram entities; when
Telegram rejects the entities the same message is sent as plain text from
then on. Telegram strips surrounding whitespace and refuses an edit that
changes nothing (MESSAGE_NOT_MODIFIED), so the channel compares what
Telegram would store and skips such edits before they are made.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextvars import ContextVar
from typing import Protocol

from core.errors import ChannelError
from core.streaming import EditScheduler, utf16_len
from core.telegram.format import Entity, render

log = logging.getLogger(__name__)

TELEGRAM_LIMIT = 4096  # UTF-16 code units per message
CHAT_PREFIX = "tg:"
_REMEMBERED = 4096  # last rendered text per message, for the no-empty-edit check
# (chat, message) a turn answers, set by the bot for the turn's task (groups
# only): every message of the answer in that chat is sent as a reply to it;
# anything else sent from the same task (an alert to the admin) is not.
REPLY_TO: ContextVar[tuple[int, int] | None] = ContextVar("telegram_reply_to", default=None)


class EntitiesRejected(ChannelError):
    """Telegram refused the formatting entities (the text itself is fine)."""

    code = "telegram_entities_rejected"


class MessageTooLong(ChannelError):
    code = "telegram_message_too_long"


class TelegramApi(Protocol):
    """The gateway calls the channel needs; errors are already ours."""

    async def send_text(
        self, peer: int, text: str, entities: list[Entity], *, reply_to: int | None = None
    ) -> int: ...

    async def edit_text(
        self, peer: int, message_id: int, text: str, entities: list[Entity]
    ) -> None: ...

    async def typing(self, peer: int) -> None: ...


def chat_key(peer: int) -> str:
    return f"{CHAT_PREFIX}{peer}"


def peer_of(chat_id: str) -> int:
    if not chat_id.startswith(CHAT_PREFIX):
        raise ChannelError(f"not a Telegram chat id: {chat_id!r}")
    return int(chat_id[len(CHAT_PREFIX) :])


def _plain(text: str) -> tuple[str, list[Entity]]:
    return text.strip(), []


def _truncate(text: str) -> str:
    while utf16_len(text) > TELEGRAM_LIMIT - 1:
        text = text[: len(text) - max(1, (utf16_len(text) - TELEGRAM_LIMIT) // 2 + 1)]
    return text + "…"


class TelegramChannel:
    """Replies into Telegram chats (``tg:<chat id>``); one per gateway."""

    name = "telegram"
    max_message_chars = TELEGRAM_LIMIT

    def __init__(
        self,
        api: TelegramApi,
        *,
        scheduler: EditScheduler,
        private_interval_s: float = 1.5,
        group_interval_s: float = 3.0,
        formatting: bool = True,
    ) -> None:
        self.api = api
        self.scheduler = scheduler
        self.private_interval_s = private_interval_s
        self.group_interval_s = group_interval_s
        self.formatting = formatting
        self._shown: OrderedDict[tuple[int, int], tuple[str, list[Entity]]] = OrderedDict()
        self._plain_only: set[tuple[int, int]] = set()
        self.skipped_identical = 0
        self.plain_fallbacks = 0

    @staticmethod
    def measure(text: str) -> int:
        return utf16_len(text)

    def edit_interval(self, chat_id: str) -> float:
        # Telegram's marked ids: users are positive, groups and channels negative.
        return self.group_interval_s if peer_of(chat_id) < 0 else self.private_interval_s

    def _render(self, text: str, *, plain: bool) -> tuple[str, list[Entity]]:
        shown, entities = _plain(text) if plain or not self.formatting else render(text)
        if not shown:  # formatting ate everything (e.g. an empty code fence)
            shown, entities = _plain(text)
        if utf16_len(shown) > TELEGRAM_LIMIT:
            shown, entities = _truncate(shown), []
            log.warning("a message over %d UTF-16 units was truncated", TELEGRAM_LIMIT)
        return shown or "…", entities

    async def send(self, chat_id: str, text: str) -> str:
        peer = peer_of(chat_id)
        shown, entities = self._render(text, plain=False)
        plain = False
        target = REPLY_TO.get()
        reply_to = target[1] if target is not None and target[0] == peer else None
        try:
            message_id = await self.api.send_text(peer, shown, entities, reply_to=reply_to)
        except (EntitiesRejected, MessageTooLong) as exc:
            log.info("chat %s: %s; sending as plain text", chat_id, exc.code)
            self.plain_fallbacks += 1
            plain = True
            shown, entities = self._render(text, plain=True)
            message_id = await self.api.send_text(peer, shown, entities, reply_to=reply_to)
        key = (peer, message_id)
        if plain:
            self._plain_only.add(key)
        self._remember(key, shown, entities)
        return str(message_id)

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        peer = peer_of(chat_id)
        key = (peer, int(message_id))
        shown, entities = self._render(text, plain=key in self._plain_only)
        if self._shown.get(key) == (shown, entities):
            self.skipped_identical += 1
            return
        try:
            await self.api.edit_text(peer, key[1], shown, entities)
        except (EntitiesRejected, MessageTooLong) as exc:
            log.info("chat %s: %s; editing as plain text", chat_id, exc.code)
            self.plain_fallbacks += 1
            self._plain_only.add(key)
            shown, entities = self._render(text, plain=True)
            if self._shown.get(key) == (shown, entities):
                return
            await self.api.edit_text(peer, key[1], shown, entities)
        self._remember(key, shown, entities)

    async def typing(self, chat_id: str) -> None:
        await self.api.typing(peer_of(chat_id))

    def _remember(self, key: tuple[int, int], shown: str, entities: list[Entity]) -> None:
        self._shown[key] = (shown, entities)
        self._shown.move_to_end(key)
        while len(self._shown) > _REMEMBERED:
            old, _ = self._shown.popitem(last=False)
            self._plain_only.discard(old)
