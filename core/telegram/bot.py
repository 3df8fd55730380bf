"""What Vigil does with a Telegram message: gating, allow-list, pastes, replies.

Telethon-free: the gateway hands over :class:`TgMessage` values. Private
chats are always addressed; in groups only a mention, a reply to one of our
messages or a command (``/x`` or ``/x@us``) is. Strangers get one polite
refusal per chat and never reach the model. A long paste that Telegram split
into several messages is joined: a long message waits ``debounce`` seconds
for its continuation, a short one goes at once. A message (or joined paste)
over ``VIGIL_MAX_MESSAGE_CHARS`` gets a polite reply naming both sizes and
never reaches the model; the paste buffer stops keeping text past that limit,
so memory stays bounded however long the paste. Busy and draining turns get
a polite reply with the wait. Decisions are pure functions; the bot only
carries them out and runs each turn as its own task.

With an :class:`~core.telegram.ledger.InboundLedger` every message is stored
before anything is done with it and settled with its outcome: a replayed
update is not answered again, a turn cut short is answered at the next start,
and a message older than ``catch_up_max_age_s`` (it waited while Vigil was
down) is stored, not answered — the chat gets one short notice instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from core.channel import Channel, IncomingMessage, telegram_user
from core.chat import ChatService, parse_command
from core.errors import Busy, Draining, MediaError, StorageError, UserLimitError, VigilError
from core.lifecycle import STOP_REASONS
from core.maintenance_mode import MaintenanceError, fmt_utc
from core.telegram.channel import REPLY_TO, chat_key
from core.telegram.media import (
    OTHER_MEDIA_REPLY,
    MediaLimits,
    MediaSource,
    fetch,
    refuse_early,
)
from core.telegram.rules import (
    DEFAULT_MAX_CHARS,
    LONG_PART,
    STALE_REPLY,
    PasteBuffer,
    RecentKeys,
    TgMessage,
    is_addressed,
    is_allowed,
    is_stale,
    normalize_allowed,
    stale_notice,
    strip_mention,
)

if TYPE_CHECKING:
    from core.telegram.ledger import InboundLedger, RefusalMemory

log = logging.getLogger(__name__)
__all__ = [  # the pure parts live in core.telegram.rules; importable from here too
    "DEFAULT_MAX_CHARS",
    "LONG_PART",
    "STALE_REPLY",
    "PasteBuffer",
    "RecentKeys",
    "TelegramBot",
    "TgMessage",
    "is_addressed",
    "is_allowed",
    "normalize_allowed",
    "strip_mention",
]

REFUSAL = (
    "Sorry, I only answer people on my allow-list. If you should be on it, ask the "
    "owner to add your user id {user_id}."
)
MEDIA_REPLY = OTHER_MEDIA_REPLY  # stickers, videos, files that are not images or audio
BUSY_REPLY = "⏳ I'm busy right now; please try again in {seconds} s."
# Said while the server drains; the message stays pending in the ledger and is
# answered after the next start (or gets the stale notice if that is too late).
DRAINING_REPLY = "🔄 I'm restarting; I'll answer this as soon as I'm back."
STOPPING_REPLY = "🔌 I'm going offline for now; I'll answer this when I'm back online."
# Said once per message (the ledger settles it answered): the chatter writes again later.
MAINTENANCE_REPLY = "🛠 I'm down for maintenance {until}; please write to me again then."
FAILED_REPLY = "⚠️ Something went wrong on my side; the operator can find it in the logs."
# The disk is full or read-only: nothing of the message was kept.
STORAGE_REPLY = (
    "⚠️ I couldn't store your message: my server's storage is full or not writable. "
    "The operator has been told; please send it again later."
)
TOO_LONG_REPLY = "That message is {length} characters; the limit is {limit}."
REFUSALS_REMEMBERED = 10_000  # (chat, stranger) pairs; the oldest is forgotten first


# --- the bot ------------------------------------------------------------------------
class TelegramBot:
    """Routes TgMessages to ChatService through the Telegram channel."""

    def __init__(
        self,
        chat: ChatService,
        channel: Channel,
        *,
        allowed_users: list[str],
        admin_id: int | None,
        debounce_s: float,
        max_message_chars: int = DEFAULT_MAX_CHARS,
        account: Any = None,
        ledger: InboundLedger | None = None,
        refusals: RefusalMemory | None = None,
        catch_up_max_age_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        media_source: MediaSource | None = None,
        media_limits: MediaLimits | None = None,
    ) -> None:
        self.chat = chat
        self.media_source = media_source  # the gateway: downloads a message's file
        self.media_limits = media_limits or MediaLimits()
        self.channel = channel
        self.allowed = normalize_allowed(allowed_users)
        self.admin_id = admin_id
        self.max_message_chars = max_message_chars
        self.paste = PasteBuffer(debounce_s=debounce_s, max_chars=max_message_chars)
        self.account = account  # anything with .account -> {"username": ...}
        self.ledger = ledger
        self.catch_up_max_age_s = catch_up_max_age_s
        self.clock = clock
        # Strangers already told once; bounded, as anyone can message a bot.
        self.refusals = refusals
        self.refused = RecentKeys(REFUSALS_REMEMBERED)  # used when nothing is persisted
        self.ignored = 0
        self.replayed = 0  # updates seen before (Telethon's catch-up replays), not answered
        self.stale = 0
        self.resumed = 0
        self.media_turns = 0  # photos and voice notes handed to the chat service
        self.media_refused = 0  # refused with a polite reply (too large, not an image, ...)
        self._stale_told: dict[int, float] = {}
        self._admitted = RecentKeys(REFUSALS_REMEMBERED)  # (chat, id) stored by this process
        self._resumed_once = False
        self._resuming: set[tuple[int, int]] = set()  # resumed media messages, until fetched
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def my_username(self) -> str | None:
        info = getattr(self.account, "account", None) or {}
        return info.get("username")

    @property
    def refused_count(self) -> int:
        return self.refusals.size if self.refusals is not None else len(self.refused)

    async def on_message(self, msg: TgMessage) -> None:
        if msg.is_edit:
            if not self.paste.replace_edited(msg):
                log.debug("chat %s: edit of message %s ignored", msg.chat_id, msg.message_id)
            return
        if self.ledger is not None:
            try:
                is_new = await self.ledger.admit(msg)  # committed before anything is done
            except Exception:  # storage failing: still answer (or fail politely) this once
                log.exception("chat %s: message %s could not be stored in the ledger", *_key(msg))
                is_new = True
            if not is_new:
                self.replayed += 1
                log.info("chat %s: message %s seen before; not answered again", *_key(msg))
                return
            self._admitted.add(_key(msg))
        await self._route(msg)

    async def on_connected(self) -> None:
        """After each connect: prune the ledger; after the first, answer what is pending."""
        if self.ledger is None:
            return
        await self.ledger.prune()
        if self._resumed_once:
            return
        self._resumed_once = True
        for msg in await self.ledger.pending():
            if _key(msg) in self._admitted:
                continue  # arrived live in this run: already on its way
            if await self.ledger.is_answered_in_history(msg):
                await self.ledger.settle(msg, "answered")  # only the settling was lost
                continue
            self.resumed += 1
            if msg.media is not None:
                self._resuming.add(_key(msg))
            log.info("chat %s: answering message %s left pending by the last run", *_key(msg))
            await self._route(msg)

    async def _route(self, msg: TgMessage) -> None:
        continues_paste = self.paste.is_holding(msg.chat_id, msg.sender_id)
        if not continues_paste and not is_addressed(msg, self.my_username):
            self.ignored += 1
            await self._settle(msg, "ignored")
            return
        if not is_allowed(msg, self.allowed, self.admin_id):
            await self._refuse(msg)
            await self._settle(msg, "refused")
            return
        if is_stale(msg, self.clock(), self.catch_up_max_age_s):
            await self._tell_stale(msg)
            await self._settle(msg, "stale")
            return
        if msg.has_media and (msg.media is None or not msg.media.is_readable):
            await self._say(msg.chat_id, MEDIA_REPLY)
            await self._settle(msg, "answered")
            return
        if msg.media is not None:
            self._spawn(msg)  # a photo or voice note: its own turn, never joined to a paste
            return
        if not strip_mention(msg.text, self.my_username):
            await self._settle(msg, "ignored")
            return
        if parse_command(msg.text)[0] is not None:
            self._spawn(msg)  # commands skip the paste buffer: /cancel must be instant
            return
        loop = asyncio.get_running_loop()
        for ready in self.paste.add(msg, loop.time()):
            self._spawn(ready)
        if self.paste._pending:
            loop.call_later(self.paste.debounce_s, self._flush_pastes)

    def _flush_pastes(self) -> None:
        for ready in self.paste.due(asyncio.get_running_loop().time()):
            self._spawn(ready)

    async def _settle(self, msg: TgMessage, status: str) -> None:
        if self.ledger is None:
            return
        try:
            await self.ledger.settle(msg, status)
        except Exception:  # the outcome happened; at worst it is settled at the next start
            log.exception("chat %s: could not settle message %s", *_key(msg))

    async def _tell_stale(self, msg: TgMessage) -> None:
        """One notice per chat (again only after the catch-up limit has passed)."""
        self.stale += 1
        log.info("chat %s: message %s is too old to answer (sent while offline)", *_key(msg))
        now = self.clock()
        if now - self._stale_told.get(msg.chat_id, -math.inf) <= self.catch_up_max_age_s:
            return
        self._stale_told[msg.chat_id] = now
        await self._say(msg.chat_id, stale_notice(self.catch_up_max_age_s))

    async def _refuse(self, msg: TgMessage) -> None:
        log.info("chat %s: refused user %s (not on the allow-list)", msg.chat_id, msg.sender_id)
        if self.refusals is not None:
            is_new = await self.refusals.add(msg.chat_id, msg.sender_id)
        else:
            is_new = self.refused.add((msg.chat_id, msg.sender_id))
        if is_new:
            await self._say(msg.chat_id, REFUSAL.format(user_id=msg.sender_id))

    def _spawn(self, msg: TgMessage) -> None:
        task = asyncio.ensure_future(self._turn(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _turn(self, msg: TgMessage) -> None:
        if msg.is_group:  # this task's context: the answer replies to the question
            REPLY_TO.set((msg.chat_id, msg.message_id))
        # Cancelled turns (a forced stop) never settle: they stay pending.
        if await self._answer(msg):
            await self._settle(msg, "answered")

    async def _answer(self, msg: TgMessage) -> bool:
        """Run the turn; False when it is left for after the restart."""
        text = strip_mention(msg.text, self.my_username)
        length = max(len(text), msg.full_length)
        if length > self.max_message_chars:
            log.info("chat %s: message of %d characters refused as too long", msg.chat_id, length)
            limit = self.max_message_chars
            await self._say(msg.chat_id, TOO_LONG_REPLY.format(length=length, limit=limit))
            return True
        incoming = IncomingMessage(
            chat_id=chat_key(msg.chat_id),
            text=text,
            user_id=telegram_user(msg.sender_id, self.admin_id),
            username=msg.username,
            display_name=msg.display_name or msg.username,
            is_group=msg.is_group,
            external_id=str(msg.message_id),
            received_at=msg.date,
        )
        try:
            incoming, admitted = await self._with_media(msg, incoming)
            await self.chat.handle(incoming, self.channel, admitted=admitted)
        except MaintenanceError as exc:
            end = exc.fields.get("until")
            until = "for a short while" if end is None else "until " + fmt_utc(float(end))
            log.info("chat %s: message %s refused: maintenance mode", *_key(msg))
            await self._say(msg.chat_id, MAINTENANCE_REPLY.format(until=until))
        except Draining as exc:
            stopping = exc.fields.get("reason") in STOP_REASONS
            await self._say(msg.chat_id, STOPPING_REPLY if stopping else DRAINING_REPLY)
            return self.ledger is None  # without a ledger nothing would answer it later
        except MediaError as exc:  # nothing was stored: the chatter may send it again
            self.media_refused += 1
            log.info("chat %s: message %s refused: %s", *_key(msg), exc.code)
            await self._say(msg.chat_id, exc.message)
        except UserLimitError as exc:  # budget used up, too many messages: says when
            log.info("chat %s: message %s refused: %s", *_key(msg), exc.code)
            await self._say(msg.chat_id, exc.message)
        except Busy as exc:
            await self._say(msg.chat_id, BUSY_REPLY.format(seconds=max(1, round(exc.retry_after))))
        except StorageError as exc:
            log.warning("chat %s: turn failed: %s %s", msg.chat_id, exc.code, exc.message)
            await self._say(msg.chat_id, STORAGE_REPLY)
        except VigilError as exc:
            log.warning("chat %s: turn failed: %s %s", msg.chat_id, exc.code, exc.message)
            await self._say(msg.chat_id, FAILED_REPLY)
        except Exception:  # a loop boundary: one broken turn must not stop the bot
            log.exception("chat %s: turn failed", msg.chat_id)
            await self._say(msg.chat_id, FAILED_REPLY)
        return True

    async def _with_media(
        self, msg: TgMessage, incoming: IncomingMessage
    ) -> tuple[IncomingMessage, bool]:
        """The message with its photo or audio clip; True: the user was admitted already.

        Raises a MediaError (said to the chatter) or the user's limit, before
        anything is downloaded when the limits allow it.
        """
        if msg.media is None:
            return incoming, False
        if msg.media.is_image and parse_command(incoming.text)[0] is not None:
            return incoming, False  # a photo captioned /help runs /help (a voice note's: text)
        if _key(msg) in self._resuming:
            self._resuming.discard(_key(msg))
            if await self.chat.memory.find_external(incoming.chat_id, str(msg.message_id)):
                return incoming, False  # stored before the restart, with its image: not refetched
        refuse_early(msg.media, self.media_limits)
        if msg.media.is_image:  # a chat whose model cannot see: told before the download
            await self.chat.check_vision(incoming.chat_id)
        await self.chat.admit_user(incoming, self.channel)  # rate limit, budget: no download
        images, audio = await fetch(
            self.media_source, msg.chat_id, msg.message_id, msg.media, self.media_limits
        )
        self.media_turns += 1
        return replace(incoming, images=images, audio=audio), True

    async def _say(self, peer: int, text: str) -> None:
        try:
            await self.channel.send(chat_key(peer), text)
        except Exception as exc:  # nothing more we can tell this chatter
            log.warning("chat %s: could not reply: %s", peer, exc)

    async def stop(self, timeout: float = 10.0) -> None:
        """Let turns in flight finish (bounded), then cancel the rest (they stay pending)."""
        for held in self.paste.due(math.inf):  # a paste still being joined is answered too
            self._spawn(held)
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _key(msg: TgMessage) -> tuple[int, int]:
    return (msg.chat_id, msg.message_id)
