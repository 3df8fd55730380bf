"""The ``Channel`` protocol and the small frozen types that cross it.

The chat pipeline knows only this protocol, never Telethon or HTTP: the
Telegram gateway and the local HTTP channel are two adapters of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """One message from a chatter, already stripped of transport types."""

    chat_id: str  # namespaced: "local:demo", "tg:12345"
    text: str
    user_id: str | None = None
    username: str | None = None
    display_name: str | None = None
    is_group: bool = False
    external_id: str | None = None
    received_at: float = 0.0


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
