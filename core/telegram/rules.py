"""Pure decisions about Telegram messages: who is addressed, who is allowed, pastes.

Telethon-free and side-effect free (the caller passes ``now``):
:class:`TgMessage` is what the gateway hands over; private chats are always
addressed, in groups only a mention, a reply to one of our messages or a
command (``/x`` or ``/x@us``); a long paste that Telegram split into several
messages is joined by :class:`PasteBuffer`; :class:`RecentKeys` is a bounded
memory; a message older than the catch-up limit is stale.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, replace

LONG_PART = 3000  # a message this long may be a piece of a split paste
STALE_REPLY = (
    "I was offline when you wrote to me more than {age} ago, so I have not answered "
    "what you sent then. If you still need an answer, please send it again."
)
DEFAULT_MAX_CHARS = 16000  # Settings.max_message_chars' default
# What the gateway can tell apart; only the first four are read (``other``:
# a sticker, a video, a file that is not an image or audio).
MEDIA_KINDS = ("photo", "image", "voice", "audio", "other")
READABLE_MEDIA = frozenset({"photo", "image", "voice", "audio"})


@dataclass(frozen=True, slots=True)
class TgMedia:
    """What a message carries besides its text, as Telegram declared it.

    Plain values only (the inbound ledger stores it as JSON): the file itself
    is fetched by ``(chat, message id)`` when the turn runs, so a message
    answered after a restart is downloaded again.
    """

    kind: str  # one of MEDIA_KINDS
    size: int = 0  # bytes as declared by Telegram (0: unknown)
    mime: str = ""
    file_name: str = ""
    duration_s: float | None = None  # voice and audio
    width: int | None = None  # photos and images, when known
    height: int | None = None
    group_id: int | None = None  # an album: several messages sent together

    @property
    def is_readable(self) -> bool:
        return self.kind in READABLE_MEDIA

    @property
    def is_image(self) -> bool:
        return self.kind in ("photo", "image")


@dataclass(frozen=True, slots=True)
class TgMessage:
    """One incoming Telegram message, already stripped of Telethon types."""

    chat_id: int
    message_id: int
    text: str
    sender_id: int | None
    username: str | None = None
    display_name: str | None = None
    is_private: bool = True
    is_group: bool = False
    mentions_me: bool = False
    replies_to_me: bool = False
    has_media: bool = False  # any media (a link preview is not media)
    media: TgMedia | None = None  # set with has_media (None in rows stored before media)
    is_edit: bool = False
    date: float = 0.0
    # Set when the paste buffer cut the text: the length of the whole paste.
    full_length: int = 0
    # The other pieces of a paste joined into this message (their Telegram ids).
    part_ids: tuple[int, ...] = ()

    @property
    def length(self) -> int:
        """Characters the chatter sent (more than ``text`` holds if it was cut)."""
        return max(len(self.text), self.full_length)


def normalize_allowed(entries: list[str]) -> frozenset[str]:
    return frozenset(e.strip().lstrip("@").lower() for e in entries if e.strip().lstrip("@"))


def is_allowed(msg: TgMessage, allowed: frozenset[str], admin_id: int | None) -> bool:
    """Admin always; else the allow-list by id or username (empty: admin only)."""
    if admin_id is not None and msg.sender_id == admin_id:
        return True
    if msg.sender_id is not None and str(msg.sender_id) in allowed:
        return True
    return bool(msg.username) and str(msg.username).lower() in allowed


def is_addressed(msg: TgMessage, my_username: str | None) -> bool:
    """Private chats always; groups on a mention, a reply to us, or our command."""
    if not msg.is_group:
        return True
    if msg.mentions_me or msg.replies_to_me:
        return True
    head = msg.text.strip().split(maxsplit=1)[0] if msg.text.strip() else ""
    if not head.startswith("/") or len(head) < 2:
        return False
    _, _, target = head.partition("@")
    return not target or (my_username or "").lower() == target.lower()


def strip_mention(text: str, my_username: str | None) -> str:
    """The text without our @mention, leaving no double space where it was."""
    if not my_username:
        return text.strip()
    name = rf"@{re.escape(my_username)}\b"
    text = re.sub(rf"(?im)^[ \t]*{name}[ \t]*", "", text)  # at a line start: and the gap after
    text = re.sub(rf"(?i)[ \t]*{name}", "", text)  # elsewhere: and the gap before
    return text.strip()


@dataclass
class _Pending:
    msg: TgMessage
    deadline: float


class PasteBuffer:
    """Joins the pieces of a long paste; pure (the caller passes ``now``).

    Text past ``max_chars`` is not kept: the paste is over the limit anyway
    and will be refused, so only its length is counted from there on.
    """

    def __init__(
        self, *, debounce_s: float, long_chars: int = LONG_PART, max_chars: int = DEFAULT_MAX_CHARS
    ) -> None:
        self.debounce_s = debounce_s
        self.long_chars = long_chars
        self.max_chars = max_chars
        self._pending: dict[tuple[int, int | None], _Pending] = {}
        self.joined = 0

    def add(self, msg: TgMessage, now: float) -> list[TgMessage]:
        """Messages ready to answer now (the new one may be held back)."""
        key = (msg.chat_id, msg.sender_id)
        is_piece = len(msg.text) >= self.long_chars  # a short part ends the paste
        held = self._pending.pop(key, None)
        if held is not None:
            self.joined += 1
            msg = _join(held.msg, msg, self.max_chars)
        if is_piece and self.debounce_s > 0:
            self._pending[key] = _Pending(msg, now + self.debounce_s)
            return []
        return [msg]

    def due(self, now: float) -> list[TgMessage]:
        ready = [k for k, p in self._pending.items() if p.deadline <= now]
        return [self._pending.pop(k).msg for k in ready]

    def is_holding(self, chat_id: int, sender_id: int | None) -> bool:
        """A piece of this sender's paste waits (its continuation needs no mention)."""
        return (chat_id, sender_id) in self._pending

    def replace_edited(self, msg: TgMessage) -> bool:
        """An edit of a message still held back replaces its text (True if it was held)."""
        held = self._pending.get((msg.chat_id, msg.sender_id))
        if held is None or held.msg.message_id != msg.message_id:
            return False
        held.msg = replace(held.msg, text=msg.text)
        return True


def _join(held: TgMessage, piece: TgMessage, max_chars: int) -> TgMessage:
    text, parts = piece.text, (*held.part_ids, piece.message_id)
    length = held.length + 1 + len(text)
    if length <= max_chars:
        return replace(held, text=held.text + "\n" + text, part_ids=parts)
    # Past the limit the paste is refused anyway: keep its length, not its text.
    kept = held.text if held.full_length else (held.text + "\n" + text)[:max_chars]
    return replace(held, text=kept, full_length=length, part_ids=parts)


def is_stale(msg: TgMessage, now: float, max_age_s: float) -> bool:
    """Sent longer ago than the catch-up limit (it waited while Vigil was down)."""
    return msg.date > 0 and now - msg.date > max_age_s


def stale_notice(max_age_s: float) -> str:
    age = f"{max_age_s / 3600:g} h" if max_age_s >= 3600 else f"{max_age_s / 60:g} min"
    return STALE_REPLY.format(age=age)


class RecentKeys:
    """A set remembering at most ``limit`` keys, forgetting the least recently seen."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """Remember ``key``; True if it was new."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)
