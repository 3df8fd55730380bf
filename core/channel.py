"""The ``Channel`` protocol and the small frozen types that cross it.

The chat pipeline knows only this protocol, never Telethon or HTTP: the
Telegram gateway and the local HTTP channel are two adapters of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from core.media import AudioClip, PreparedImage, StoredImage

ADMIN_USER = "admin"
TELEGRAM_USER_PREFIX = "tg:"
API_USER_PREFIX = "api:"


def telegram_user(sender_id: int | None, admin_id: int | None) -> str | None:
    """A Telegram sender's user id: ``admin`` for the admin, else ``tg:<id>``."""
    if sender_id is None:
        return None
    if admin_id is not None and sender_id == admin_id:
        return ADMIN_USER
    return f"{TELEGRAM_USER_PREFIX}{sender_id}"


def api_user(user: str | None) -> str:
    """A local-API message's user id: ``api:<user>``, or ``admin`` without a user."""
    return ADMIN_USER if user is None else f"{API_USER_PREFIX}{user}"


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One message from a chatter, already stripped of transport types."""

    chat_id: str  # namespaced: "local:demo", "tg:12345"
    text: str
    # Who the turn is for (usage and budgets count it against this identity):
    # "tg:<Telegram sender id>", "api:<the local API's user field>", or ADMIN_USER
    # for the operator (the Telegram admin; a local-API message without "user").
    user_id: str | None = None
    username: str | None = None
    display_name: str | None = None
    is_group: bool = False
    external_id: str | None = None
    received_at: float = 0.0
    # Checked and re-encoded already (core.media.prepare_image); stored with the message.
    images: tuple[PreparedImage, ...] = ()
    # A voice note or audio file: transcribed, and the transcript is the message's text.
    audio: AudioClip | None = None


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored message of a chat."""

    id: int
    chat_id: str
    role: str  # "user" | "assistant" | "system"
    content: str
    tokens: int
    created_at: float
    author: str | None = None
    external_id: str | None = None
    images: tuple[StoredImage, ...] = ()


@dataclass(frozen=True, slots=True)
class TurnResult:
    """What ChatService.handle did with one incoming message."""

    chat_id: str
    reply: str
    user_message_id: int | None = None
    reply_message_id: int | None = None
    command: str | None = None
    error_code: str | None = None
    cancelled: bool = False
    sent_ids: tuple[str, ...] = field(default_factory=tuple)
    model: str | None = None  # the model profile that answered (None: no model call)
    transcript: str | None = None  # a voice note's text, as shown to the chatter ("🎤 ...")


@runtime_checkable
class Channel(Protocol):
    """Where replies go. Message ids are opaque strings owned by the channel."""

    name: str
    max_message_chars: int

    def edit_interval(self, chat_id: str) -> float:
        """Minimum seconds between two edits of a streamed reply in this chat."""
        ...

    async def send(self, chat_id: str, text: str) -> str:
        """Send a new message; returns its id."""
        ...

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        """Replace the text of a message sent earlier."""
        ...

    async def typing(self, chat_id: str) -> None:
        """Show that a reply is being prepared (may be a no-op)."""
        ...
